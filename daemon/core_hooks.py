"""The core's own answers to the decision hooks, asked last (``trylast``) so any plugin can decide
first; a plugin returning ``None`` falls through to these. The built-in commands of ``schedd``
come through ``schedd_add_cli_commands`` too, added first (``tryfirst``) so that they lead
``schedd --help`` and exist before any plugin's command.

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

import argparse
import hashlib
import hmac
from typing import Any

from schedd.config import AuthSection
from schedd.hookspecs import hookimpl

__all__ = ["ANONYMOUS", "CoreHooks", "token_principal"]

ANONYMOUS = "anonymous"
_ROLES = ("node", "client")


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


def _principal(digest: bytes) -> str:
    return "token:" + digest.hex()[:8]


def token_principal(token: str) -> str:
    """The principal name of a token: ``token:`` and the first 8 hex digits of its SHA-256."""
    return _principal(_digest(token))


class CoreHooks:
    """Built-in hook implementations (decisions, commands), registered by the plugin manager as
    ``core``."""

    def __init__(self, auth: AuthSection) -> None:
        self._digests: dict[str, tuple[bytes, ...]] = {
            role: tuple(_digest(token) for token in auth.tokens_for(role)) for role in _ROLES
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
        presented = _digest(token)
        matched = False
        for digest in accepted:
            matched |= hmac.compare_digest(presented, digest)
        return _principal(presented) if matched else None

    @hookimpl(tryfirst=True)
    def schedd_add_cli_commands(self, subparsers: argparse._SubParsersAction[Any]) -> None:
        # Imported here: the daemon loads this class without needing the command line.
        from schedd.cli.commands import add_builtin_commands

        add_builtin_commands(subparsers)

    def __repr__(self) -> str:
        counts = {role: len(digests) for role, digests in self._digests.items()}
        return f"<CoreHooks tokens={counts}>"
