"""How a token is named: its principal.

Rules of this module: a token never appears in a log or a reply; its principal does. The
principal of a token is ``"token:<first 8 hex digits of sha256(token)>"``; a role with no tokens
admits every peer as :data:`ANONYMOUS`. It imports nothing of schedd, so the configuration (which
checks ``[auth.node_id_patterns]`` against the tokens' principals) and authentication share it.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable

__all__ = ["ANONYMOUS", "TokenSet", "principal_of_digest", "token_digest", "token_principal"]

ANONYMOUS = "anonymous"


def token_digest(token: str) -> bytes:
    """The SHA-256 digest of a token, as authentication compares them."""
    return hashlib.sha256(token.encode("utf-8")).digest()


def principal_of_digest(digest: bytes) -> str:
    """The principal of the token whose digest this is."""
    return "token:" + digest.hex()[:8]


def token_principal(token: str) -> str:
    """The principal name of a token: ``token:`` and the first 8 hex digits of its SHA-256."""
    return principal_of_digest(token_digest(token))


class TokenSet:
    """Tokens compared in constant time: both sides are SHA-256 digests of equal length and
    every entry is compared with :func:`hmac.compare_digest`, with no early exit, so timing
    reveals neither a token nor which entry matched."""

    __slots__ = ("_digests",)

    def __init__(self, tokens: Iterable[str]) -> None:
        self._digests = tuple(token_digest(token) for token in tokens)

    def __len__(self) -> int:
        return len(self._digests)

    def matches(self, token: str | None) -> bool:
        """Whether ``token`` is one of the set (``None`` never is)."""
        if token is None:
            return False
        presented = token_digest(token)
        matched = False
        for digest in self._digests:
            matched |= hmac.compare_digest(presented, digest)
        return matched
