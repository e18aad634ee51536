"""One task that learns which of many sockets have input, for channels that then read inline.

Rules of this module:

- **Why.** A task per connection parked in trio's ``wait_readable`` costs, per message, an
  ``epoll_ctl`` to re-arm the descriptor, the event's trip through trio's I/O manager and a
  task switch; reading the socket and handing the bytes on is the cheaper half. At 10,000 nodes
  sending one heartbeat a second that machinery is a large share of the daemon's CPU
  (docs/decisions/0007-readiness-hub.md).
  :class:`ReadinessHub` keeps every watched socket in one private
  ``epoll`` set, registered once, edge-triggered; trio waits on that set's single descriptor.
  When it has events, the hub calls each ready socket's callback, synchronously, in its own
  task. A channel's callback reads the socket there and passes what it can handle without
  awaiting to the consumer inline (a node's unchanged heartbeat); only what needs the
  connection's task wakes that task (:class:`~schedd.transport.stream.StreamChannel`).
- **Edge-triggered.** A callback is called once per arrival of input, not while input stays
  unread: whoever skips a read must remember that the socket is ready and read later. The end
  of the stream may arrive with the last data in one event (``EPOLLRDHUP``): after that, a read
  that returns less than asked for has not drained the socket, the end is still to be read.
- **Callbacks** must not block. One that raises is logged with its descriptor and unwatched;
  the hub goes on with the others.
- **Lifetime.** :meth:`ReadinessHub.serve` runs in the process's nursery; :attr:`running` is
  true from its start until it ends, and channels only use a running hub (otherwise they wait
  with trio as before). When it ends the epoll set is closed and every callback is forgotten,
  so watchers must not be left waiting on it (the daemon runs it for its whole life).
- Linux only (``select.epoll``); :func:`available` says whether this platform has it.
"""

from __future__ import annotations

import logging
import select
from collections.abc import Callable
from contextlib import suppress

import trio

__all__ = ["ReadinessHub", "available"]

log = logging.getLogger(__name__)

def available() -> bool:
    """Whether this platform has ``epoll`` (Linux)."""
    return hasattr(select, "epoll")


class ReadinessHub:
    """Readiness of many sockets, learnt by one task (see the module's rules)."""

    def __init__(self) -> None:
        self._epoll: select.epoll | None = None
        self._callbacks: dict[int, Callable[[int], None]] = {}
        self.running = False
        #: callbacks called since start (for tests and diagnostics)
        self.calls = 0

    def watch(self, fd: int, callback: Callable[[int], None]) -> None:
        """Call ``callback(flags)`` from the hub's task each time input arrives on ``fd``
        (``flags``: the ``select.EPOLL*`` bits of the event; ``EPOLLRDHUP``, ``EPOLLHUP`` or
        ``EPOLLERR`` mean the peer is gone and whatever is left, the end included, can be read
        without another call).

        Raises ``RuntimeError`` when the hub is not running and ``OSError`` when the
        descriptor cannot be watched (closed, or already watched).
        """
        if self._epoll is None:
            raise RuntimeError("the readiness hub is not running")
        self._epoll.register(fd, select.EPOLLIN | select.EPOLLRDHUP | select.EPOLLET)
        self._callbacks[fd] = callback

    def unwatch(self, fd: int) -> None:
        """Stop watching ``fd`` (before it is closed); a descriptor not watched is ignored."""
        if self._callbacks.pop(fd, None) is None or self._epoll is None:
            return
        # closed already: the kernel dropped it from the set with the socket
        with suppress(OSError):
            self._epoll.unregister(fd)

    @property
    def watched(self) -> int:
        """How many descriptors are watched."""
        return len(self._callbacks)

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                    ) -> None:
        """Watch until cancelled; report started once :meth:`watch` can be called."""
        epoll = self._epoll = select.epoll()
        callbacks = self._callbacks
        self.running = True
        try:
            task_status.started()
            while True:
                await trio.lowlevel.wait_readable(epoll.fileno())
                # every ready socket in one turn, as trio's own loop does
                events = epoll.poll(0, max(1, len(callbacks)))
                self.calls += len(events)
                for fd, flags in events:
                    callback = callbacks.get(fd)
                    if callback is None:
                        continue  # unwatched by an earlier callback of this turn
                    try:
                        callback(flags)
                    except Exception:
                        log.exception("readiness callback for descriptor %d failed; no longer "
                                      "watched", fd)
                        self.unwatch(fd)
        finally:
            self.running = False
            self._epoll = None
            callbacks.clear()
            epoll.close()
