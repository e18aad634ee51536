"""The messages of ordered sessions: ``follow_session`` (client), ``session`` and ``skipped``
(daemon). A ``submit`` with a ``seq`` and a ``done`` with a ``session_id`` and ``seq`` are in
:mod:`schedd.protocol.messages`, which lists these classes in the protocol's union.

Rules of this module (as for :mod:`schedd.protocol.messages`): frozen attrs classes, every value
rule a validator, no I/O.
"""

from __future__ import annotations

from typing import ClassVar, Literal, TypeAlias

import attrs

from schedd.protocol.fields import _int, _name, _ref

__all__ = ["FollowSession", "Session", "Skipped"]

Sender: TypeAlias = Literal["node", "client", "daemon"]


@attrs.frozen(kw_only=True)
class Skipped:
    """Seqs ``from_seq``..``to_seq`` of an ordered session got no result within its gap timeout;
    the session's later results follow. Sent in the session's order, like ``done``."""

    TYPE: ClassVar[str] = "skipped"
    SENT_BY: ClassVar[frozenset[Sender]] = frozenset({"daemon"})

    session_id: str = attrs.field(validator=_name)
    from_seq: int = attrs.field(validator=_int(0))
    to_seq: int = attrs.field(validator=_int(0))
    ref: str | None = _ref()


@attrs.frozen(kw_only=True)
class FollowSession:
    """A client (re-)attaches this connection to an ordered session of its principal; answered
    with ``session``."""

    TYPE: ClassVar[str] = "follow_session"
    SENT_BY: ClassVar[frozenset[Sender]] = frozenset({"client"})

    session_id: str = attrs.field(validator=_name)
    ref: str | None = _ref()


@attrs.frozen(kw_only=True)
class Session:
    """An ordered session's results now come to this connection, in reply to
    ``follow_session``: the ones that waited follow at once, in seq order."""

    TYPE: ClassVar[str] = "session"
    SENT_BY: ClassVar[frozenset[Sender]] = frozenset({"daemon"})

    session_id: str = attrs.field(validator=_name)
    next_seq: int = attrs.field(validator=_int(0))
    held: int = attrs.field(default=0, validator=_int(0))
    ref: str | None = _ref()
