"""The core's own answers to the decision hooks, asked last (``trylast``) so any plugin can decide
first; a plugin returning ``None`` falls through to these.

Authentication rule: each role (``node``, ``client``) has its own token list in ``[auth]`` (with
the token files already merged in by :func:`schedd.config.load_config`). With no tokens for a role,
every peer of that role is admitted as ``"anonymous"``. Otherwise the presented token must equal
one of them; the principal is ``"token:<first 8 hex digits of sha256(token)>"``, which names the
token in logs without revealing it. Comparison is constant-time: both sides are hashed to
SHA-256 digests of equal length and every configured digest is compared with
:func:`hmac.compare_digest`, with no early exit, so timing reveals neither the token nor which
entry matched. A client presenting an ``[auth] admin_tokens`` token is authenticated as that
token's principal whatever the client tokens are (with none configured, too), and its connection
may run operator actions (:meth:`CoreHooks.is_admin`).
"""

from __future__ import annotations

from schedd.config import AuthSection
from schedd.markers import hookimpl
from schedd.principals import ANONYMOUS, TokenSet, token_principal

__all__ = ["ANONYMOUS", "CoreHooks", "token_principal"]

_ROLES = ("node", "client")


class CoreHooks:
    """Built-in hook implementations (decisions, commands), registered by the plugin manager as
    ``core``."""

    def __init__(self, auth: AuthSection) -> None:
        self._tokens: dict[str, TokenSet] = {role: TokenSet(auth.tokens_for(role))
                                             for role in _ROLES}
        self._admins = TokenSet(auth.admin_tokens)

    def is_admin(self, role: str, token: str | None) -> bool:
        """Whether a ``hello`` of ``role`` with ``token`` is an operator's (an admin token)."""
        return role == "client" and self._admins.matches(token)

    @hookimpl(trylast=True)
    def schedd_node_pools(self, declared_pools: list[str]) -> list[str]:
        return list(declared_pools)

    @hookimpl(trylast=True)
    def schedd_job_pools(self, declared_pools: list[str]) -> list[str]:
        return list(declared_pools)

    @hookimpl(trylast=True)
    def schedd_authenticate(self, role: str, token: str | None) -> str | None:
        if role not in self._tokens:
            return None
        if token is not None and self.is_admin(role, token):
            return token_principal(token)
        accepted = self._tokens[role]
        if not accepted:
            return ANONYMOUS
        if token is None or not accepted.matches(token):
            return None
        return token_principal(token)

    def __repr__(self) -> str:
        counts = {role: len(tokens) for role, tokens in self._tokens.items()}
        counts["admin"] = len(self._admins)
        return f"<CoreHooks tokens={counts}>"
