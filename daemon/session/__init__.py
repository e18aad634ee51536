"""One connection, from ``hello`` to close: the protocol's rules on the daemon side."""

from __future__ import annotations

from schedd.session.connection import (
    MAX_VIOLATIONS,
    CloseConnection,
    Session,
)

__all__ = ["MAX_VIOLATIONS", "CloseConnection", "Session"]
