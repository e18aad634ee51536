"""Which node ids a principal may register: ``[auth] node_id_patterns``.

Rule: a principal with an entry in the mapping may register only node ids that match one of its
patterns (``fnmatch`` globs, case-sensitive: ``*``, ``?``, ``[seq]``); a principal without an
entry may register any id. A node id that one principal registered belongs to it while the
store keeps the node's record (``node_register`` refuses any other principal); that rule does
not depend on this mapping.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from fnmatch import fnmatchcase

__all__ = ["node_id_allowed", "refusal"]


def node_id_allowed(
    patterns: Mapping[str, Sequence[str]], principal: str, node_id: str
) -> bool:
    """Whether ``principal`` may register ``node_id`` under ``patterns``."""
    allowed = patterns.get(principal)
    if allowed is None:
        return True
    return any(fnmatchcase(node_id, pattern) for pattern in allowed)


def refusal(
    patterns: Mapping[str, Sequence[str]], principal: str, node_id: str, *, chosen: bool
) -> str:
    """The ``E_IDENTITY`` message for a node id the mapping does not allow (``chosen``: the
    daemon generated it for a ``register`` with ``node_id: null``)."""
    listed = ", ".join(repr(p) for p in patterns.get(principal, ())) or "none"
    if chosen:
        return (f"principal {principal} may register only node ids matching {listed}, and the "
                f"id chosen for it ({node_id}) does not; send a node_id")
    return (f"principal {principal} may not register node {node_id} (its node ids must "
            f"match {listed})")
