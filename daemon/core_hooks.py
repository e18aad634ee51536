"""The core's own answers to the decision hooks, asked last (``trylast``) so any plugin can decide
first; a plugin returning ``None`` falls through to these.

Authentication rule: each role (``node``, ``client``) has its own token list in ``[auth]`` (with
the token files already merged in by :func:`schedd.config.load_config`). With no tokens for a role,
every peer of that role is admitted as ``"anonymous"``. Otherwise the presented token must equal
one of them; the principal is ``"token:<first 8 hex digits of sha256(token)>"``, which names the
token in logs without revealing it. Comparison is constant-time: both sides are hashed to
SHA-256 digests of equal length and every configured digest is compared with
:func:`hmac.compare_digest`, with no early exit, so timing reveals neither the token nor which
entry matched.
"""

from __future__ import annotations

import hmac

from schedd.config import AuthSection
from schedd.markers import hookimpl
from schedd.principals import ANONYMOUS, principal_of_digest, token_digest, token_principal

__all__ = ["ANONYMOUS", "CoreHooks", "token_principal"]

_ROLES = ("node", "client")


class CoreHooks:
    """Built-in hook implementations (decisions, commands), registered by the plugin manager as
    ``core``."""

    def __init__(self, auth: AuthSection) -> None:
        self._digests: dict[str, tuple[bytes, ...]] = {
            role: tuple(token_digest(token) for token in auth.tokens_for(role)) for role in _ROLES
        }

    @hookimpl(trylast=True)
    def schedd_node_pools(self, declared_pools: list[str]) -> list[str]:
        return list(declared_pools)

    @hookimpl(trylast=True)
    def schedd_job_pools(self, declared_pools: list[str]) -> list[str]:
        return list(declared_pools)

    @hookimpl(trylast=True)
    def schedd_authenticate(self, role: str, token: str | None) -> str | None:
        if role not in self._digests:
            return None
        accepted = self._digests[role]
        if not accepted:
            return ANONYMOUS
        if token is None:
            return None
        presented = token_digest(token)
        matched = False
        for digest in accepted:
            matched |= hmac.compare_digest(presented, digest)
        return principal_of_digest(presented) if matched else None

    def __repr__(self) -> str:
        counts = {role: len(digests) for role, digests in self._digests.items()}
        return f"<CoreHooks tokens={counts}>"
