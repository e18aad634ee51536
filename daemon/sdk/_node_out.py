"""What a node sends about its jobs, batched: messages ready together leave in one write.

Rules of this module:

- A :class:`Batcher` serves one link. ``post`` (no wait) and ``send`` (waits for the write)
  queue a message; one writer task takes everything queued and writes it with one
  :meth:`Link.send_all` (``send_many`` of the channel), in the order posted. After it wakes it
  lets the tasks that are ready run once first, so what they make ready in the same step joins
  the write: the accepts of assigns read together, the result of a job that took no time, the
  ``ping`` that confirms results. Writes follow one another: what is posted during a write
  goes in the next one.
- A failed write ends the batcher: every message queued, and every later one, fails with
  :class:`LinkLost` (the link is closed; the node sends again what needs confirming after its
  next registration).
- Only the node's job messages (``accept``, ``reject``, ``progress``, ``result``) and the
  ``ping`` that confirms results go through it; heartbeats and requests use the link directly.
"""

from __future__ import annotations

from collections.abc import Sequence

import anyio
import anyio.lowlevel

from schedd.protocol import Message
from schedd.sdk._conn import Link, LinkLost
from schedd.sdk._native import Event, event

__all__ = ["Batcher"]


class _Write:
    """The messages of one write, and how it went."""

    __slots__ = ("done", "error", "items")

    def __init__(self) -> None:
        self.items: list[tuple[Message, Sequence[bytes]]] = []
        self.done: Event = event()
        self.error: LinkLost | None = None


class Batcher:
    """One link's writer of the node's job messages: those ready together, in one write."""

    def __init__(self, link: Link) -> None:
        self.link = link
        self._next = _Write()
        self._wake = event()
        self._ended: LinkLost | None = None
        #: the number of writes made (each one ``send_all``)
        self.writes = 0

    def post(self, message: Message, data: Sequence[bytes] = ()) -> _Write:
        """Queue ``message`` (and its attachments' bytes) for the next write; no wait. Raises
        :class:`LinkLost` once the batcher has ended or the link is closed."""
        if self._ended is not None:
            raise LinkLost(str(self._ended))
        if self.link.closed:
            raise LinkLost(f"connection to {self.link.url} is closed")
        write = self._next
        write.items.append((message, data))
        self._wake.set()
        return write

    async def send(self, message: Message, data: Sequence[bytes] = ()) -> None:
        """Queue ``message`` and wait until its write is done; :class:`LinkLost` if it failed."""
        write = self.post(message, data)
        await write.done.wait()
        if write.error is not None:
            raise LinkLost(str(write.error))

    async def serve(self) -> None:
        """Write what is queued, batch after batch, until a write fails or the task is
        cancelled; then fail what is queued and everything posted later."""
        try:
            while True:
                await self._wake.wait()
                self._wake = event()
                # let the tasks made ready with what woke us run once: what they post joins
                await anyio.lowlevel.checkpoint()
                write, self._next = self._next, _Write()
                if not write.items:  # taken by the write before (posted as it began)
                    continue
                try:
                    await self.link.send_all(write.items)
                except LinkLost as exc:
                    write.error = self._ended = exc
                    return
                except BaseException:  # cancelled during the write: it may not have happened
                    write.error = self._ended = LinkLost(
                        f"connection to {self.link.url} ended during a write")
                    raise
                finally:
                    self.writes += 1
                    write.done.set()
        finally:
            if self._ended is None:
                self._ended = LinkLost(f"connection to {self.link.url} ended")
            write = self._next
            write.error = self._ended
            write.done.set()
