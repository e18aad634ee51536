"""How a token is named: its principal.

Rules of this module: a token never appears in a log or a reply; its principal does. The
principal of a token is ``"token:<first 8 hex digits of sha256(token)>"``; a role with no tokens
admits every peer as :data:`ANONYMOUS`. It imports nothing of schedd, so the configuration (which
checks ``[auth.node_id_patterns]`` against the tokens' principals) and authentication share it.
"""

from __future__ import annotations

import hashlib

__all__ = ["ANONYMOUS", "principal_of_digest", "token_digest", "token_principal"]

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
