"""The daemon's side of a connection: one module per concern (see schedd.session.connection)."""

from __future__ import annotations

from schedd.session.connection import (
    MAX_VIOLATIONS,
    CloseConnection,
    Session,
)

__all__ = ["MAX_VIOLATIONS", "CloseConnection", "Session"]
