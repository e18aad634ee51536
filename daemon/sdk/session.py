"""An ordered session as the client sees it: the session's results, in ``seq`` order.

Rules of this module: the daemon sends an ordered session's ``done`` and ``skipped`` messages in
``seq`` order (docs/protocol.md, "Ordered sessions"); this object keeps the lowest ``seq`` it
has not passed yet, so a result sent again after a reconnect (a re-follow) is dropped here and
the stream holds each ``seq`` once, in order.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from typing import Final

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from schedd.protocol import Done, Skipped

__all__ = ["E_SKIPPED", "OrderedSession", "SessionResult"]

E_SKIPPED: Final = "E_SKIPPED"
"""SDK-local code (never on the wire): the job's ``seq`` was reported skipped by its ordered
session, so its ``done`` will never come to its handle (its outcome stays readable with
``status``)."""

SessionResult = Done | Skipped
"""What an ordered session yields: a job's ``done`` or a ``skipped`` range of seqs."""


class OrderedSession:
    """The results of one ordered session of this client's principal, in ``seq`` order
    (:meth:`schedd.sdk.Client.session`, :meth:`~schedd.sdk.Client.follow_session`)."""

    def __init__(self, session_id: str) -> None:
        self.session_id = session_id
        #: the lowest seq neither received nor skipped yet
        self.next_seq = 0
        self._send: MemoryObjectSendStream[SessionResult]
        self._receive: MemoryObjectReceiveStream[SessionResult]
        self._send, self._receive = anyio.create_memory_object_stream[SessionResult](math.inf)

    def __repr__(self) -> str:
        return f"<OrderedSession {self.session_id} next_seq={self.next_seq}>"

    def _push(self, message: SessionResult) -> None:
        if isinstance(message, Done):
            if message.seq is None:
                return
            first = last = message.seq
        else:
            first, last = message.from_seq, message.to_seq
        if first < self.next_seq:
            return  # received before (sent again after a reconnect)
        self.next_seq = last + 1
        self._send.send_nowait(message)

    async def next(self) -> SessionResult:
        """The session's next result (waits for it)."""
        return await self._receive.receive()

    async def __aiter__(self) -> AsyncIterator[SessionResult]:
        while True:
            yield await self._receive.receive()
