"""The I/O both channels share: socket addresses, reads and writes without trio's stream
machinery, graceful closing, and reading through a
:class:`~schedd.transport.readiness.ReadinessHub`.

Rules of this module:

- **Writes.** A plain socket with no other send in progress is written with one non-blocking
  ``os.write`` (:func:`send_in_order`, :func:`write_message_nowait`); what it leaves goes out
  through the stream under the channel's send lock, taken before anything yields, so messages
  stay whole and in order whichever task sends them.
- **Reads.** A plain socket is read with ``wait_readable`` + ``os.read`` (:func:`read_when_ready`)
  or, given a running hub, by the hub's task while a task waits in ``receive``
  (:class:`HubReader`).
- **Closing** (:func:`close_stream`) is graceful and bounded by :data:`CLOSE_TIMEOUT`: TLS
  ``close_notify``, and for plain TCP a half-close followed by reading and discarding what the
  peer still sends until it closes (closing a socket with unread input resets the connection,
  which can destroy what the peer has not read yet); then the connection is cut.
"""

from __future__ import annotations

import logging
import os
import select
from collections import deque
from collections.abc import Callable
from typing import Final, Generic, Protocol, TypeVar

import trio

from schedd.transport.channel import Channel, ChannelClosed
from schedd.transport.readiness import ReadinessHub

__all__ = [
    "CLOSE_TIMEOUT",
    "RECEIVE_SIZE",
    "HubReader",
    "close_stream",
    "format_address",
    "peer_address",
    "read_when_ready",
    "send_in_order",
    "write_message_nowait",
]

log = logging.getLogger(__name__)

CLOSE_TIMEOUT: Final = 1.0
"""Seconds a graceful close may take before the connection is cut."""
RECEIVE_SIZE: Final = 65536
"""Bytes asked of the socket per read."""
_PEER_GONE: Final = select.EPOLLRDHUP | select.EPOLLHUP | select.EPOLLERR if hasattr(
    select, "epoll") else 0
_M = TypeVar("_M", bytes, bytes | str)  # what a channel's receive returns


def format_address(sockaddr: object) -> str:
    """``ip:port`` for an IPv4 socket address, ``[ip]:port`` for IPv6, ``str()`` otherwise."""
    if isinstance(sockaddr, tuple) and len(sockaddr) >= 2:
        host, port = sockaddr[0], sockaddr[1]
        if isinstance(host, bytes):
            host = host.decode("ascii", "replace")
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(sockaddr)


def _socket_stream(stream: trio.abc.Stream) -> trio.SocketStream | None:
    while isinstance(stream, trio.SSLStream):
        stream = stream.transport_stream
    return stream if isinstance(stream, trio.SocketStream) else None


def peer_address(stream: trio.abc.Stream) -> str:
    """The remote address of a socket stream (through TLS) as :func:`format_address` writes it."""
    socket_stream = _socket_stream(stream)
    if socket_stream is None:
        return repr(stream)
    try:
        return format_address(socket_stream.socket.getpeername())
    except OSError:  # the peer is already gone
        return "unknown peer"


async def read_when_ready(sock: trio.socket.SocketType, max_bytes: int) -> bytes:
    """Wait until ``sock`` is readable, then read at most ``max_bytes`` without blocking.

    ``SocketStream.receive_some`` tries a ``recv`` first and waits only after it fails: right for
    a busy stream, but a node's connection carries one heartbeat a second, so the first try
    almost always fails (a syscall and an exception per message;
    docs/decisions/0007-readiness-hub.md). Returns ``b""`` at the end of the stream. A closed socket
    raises ``trio.ClosedResourceError`` (also when it is closed during the wait, through trio's
    ``notify_closing``); a failed read raises ``trio.BrokenResourceError``.
    """
    while True:
        fd = sock.fileno()
        if fd < 0:
            raise trio.ClosedResourceError("the socket was closed")
        # a close during the wait raises from it, before the number could be reused
        await trio.lowlevel.wait_readable(fd)
        try:
            return os.read(fd, max_bytes)
        except BlockingIOError:
            continue  # woken without data (spurious readiness)
        except OSError as exc:
            raise trio.BrokenResourceError(str(exc)) from exc


async def close_stream(stream: trio.abc.Stream) -> None:
    """Close ``stream`` so that what was sent last still reaches the peer; never raises.

    A plain TCP stream is half-closed, then read and discarded until the peer closes; a TLS
    stream sends ``close_notify``. After :data:`CLOSE_TIMEOUT` seconds, or at once when the caller
    is cancelled, the stream is closed without further ado.
    """
    with trio.move_on_after(CLOSE_TIMEOUT):
        try:
            if isinstance(stream, trio.SocketStream):
                await stream.send_eof()
                while await stream.receive_some(RECEIVE_SIZE):
                    pass
            else:
                await stream.aclose()
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.BusyResourceError):
            pass
    await trio.aclose_forcefully(stream)


async def _acquire(lock: trio.Lock) -> None:
    # Uncontended (the usual case: one sender task), skip the lock's own trip through the
    # scheduler; the send that follows checkpoints anyway.
    if lock.locked():
        await lock.acquire()
    else:
        lock.acquire_nowait()


def _write_now(sock: trio.socket.SocketType, data: bytes, peer: str) -> int:
    """Write ``data`` to the plain socket without waiting; returns the bytes it took (0 when
    it would block or the socket is closed, and the stream's own send then says why).

    For a caller that checked that no other send is in progress and sends what is left through
    the stream before it yields, which spares trio's ``send_all`` around the syscall
    (docs/decisions/0013-write-by-poster.md). Raises
    :class:`~schedd.transport.channel.ChannelClosed` when the connection is broken.
    """
    fd = sock.fileno()
    if fd < 0:
        return 0
    try:
        return os.write(fd, data)
    except BlockingIOError:
        return 0
    except OSError as exc:
        raise ChannelClosed(f"connection with {peer} lost: {exc}") from exc


class _Sends(Protocol):
    """What :func:`send_in_order` and :func:`write_message_nowait` use of a channel."""

    _stream: trio.abc.Stream
    _socket: trio.socket.SocketType | None
    _send_lock: trio.Lock
    #: the end of a message a short :func:`write_message_nowait` left: it goes out first
    _rest: bytes
    peer: str


async def send_in_order(channel: _Sends, encode: Callable[[], bytes]) -> None:
    """Send the bytes ``encode()`` makes (called once) whole, in the order of the calls.

    With a plain socket and no other send in progress, one non-blocking write
    (:func:`_write_now`) almost always takes it all; what it leaves goes through ``send_all``
    under the channel's lock, taken before anything yields, so no other send can come between.
    Otherwise ``encode`` runs under the lock, after what a short :func:`write_message_nowait` left.
    Either way this is a checkpoint. Transport failures raise
    :class:`~schedd.transport.channel.ChannelClosed`.
    """
    sock, lock, peer = channel._socket, channel._send_lock, channel.peer
    rest: bytes | None = None
    if sock is not None and not lock.locked() and not channel._rest:
        data = encode()
        sent = _write_now(sock, data, peer)
        if sent == len(data):
            await trio.lowlevel.checkpoint()
            return
        rest = data[sent:]
    await _acquire(lock)
    try:
        held, channel._rest = channel._rest, b""
        if held:
            await channel._stream.send_all(held)
        data = encode() if rest is None else rest
        if data:
            await channel._stream.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        raise ChannelClosed(f"connection with {peer} lost: {exc}") from exc
    except trio.BusyResourceError as exc:
        # Sends are serialised by the lock, so the other party is aclose()'s send_eof: the
        # channel is closing under us (found by the chaos run: a client's instance died).
        raise ChannelClosed(f"connection with {peer} closed while sending") from exc
    finally:
        lock.release()


def write_message_nowait(channel: _Sends, encode: Callable[[], bytes]) -> bool:
    """Write the bytes ``encode()`` makes at once, from any task, without waiting: True when
    they are on their way, False when nothing was written (no plain socket, another send in
    progress, the socket full, closing or broken, or ``encode`` refused: send as usual, which
    says why). What a short write leaves is kept in ``_rest`` and goes out first with the next
    send (``send_many([])`` sends only that)."""
    sock = channel._socket
    if sock is None or channel._send_lock.locked() or channel._rest:
        return False
    try:
        data = encode()
        sent = _write_now(sock, data, channel.peer)
    except Exception:  # closing, broken or refused: the usual send says why
        return False
    if sent == 0 and data:
        return False
    if sent < len(data):
        channel._rest = data[sent:]
    return True


# ---------------------------------------------------------------------------------------------
# Reading through a readiness hub (both channels)
# ---------------------------------------------------------------------------------------------


class HubReader(Channel, Generic[_M]):
    """How a channel is read by a :class:`~schedd.transport.readiness.ReadinessHub`: shared by
    :class:`StreamChannel` and :class:`WebSocketChannel`.

    The subclass keeps received messages in ``_items`` and says how one read's bytes are taken
    (``_take``), how the input ends for a reason (``_lose``; the first reason stays) and whether
    a task waiting in ``receive`` has something to wake for (``_news``: a message, the end, or
    work only the task can do). It calls ``_attach`` last in ``__init__``.
    """

    __slots__ = ("_closed", "_hub", "_hup", "_inline", "_items", "_ready", "_socket", "_stream",
                 "_waiter", "peer")
    _hub: ReadinessHub | None
    _stream: trio.abc.Stream
    _socket: trio.socket.SocketType | None
    _waiter: trio.lowlevel.Task | None  # the task parked in receive()
    _ready: bool  # the socket may have unread input (edge-triggered: nobody says so again)
    _hup: bool  # the peer's end arrived: read until it is read
    _closed: bool  # aclose was called
    _inline: Callable[[_M], bool] | None
    _items: deque[_M]
    peer: str

    def _attach(self, hub: ReadinessHub | None) -> None:
        self._hub = None
        self._closed = False
        self._waiter = None
        self._ready = True
        self._hup = False
        self._inline = None
        if hub is not None and hub.running and self._socket is not None:
            try:
                hub.watch(self._socket.fileno(), self._on_input)
                self._hub = hub
            except OSError as exc:  # e.g. already closed: receive() will say so
                log.debug("reading %s without the readiness hub: %s", self.peer, exc)

    def set_inline(self, consume: Callable[[_M], bool] | None) -> None:
        """Offer messages to ``consume`` before ``receive`` returns them (only with a hub).

        ``consume(message)`` is called from the hub's task, for a message that arrives while a
        task waits in ``receive`` with nothing before it; ``True`` means it handled the message
        (which ``receive`` then never returns), ``False`` that ``receive`` returns it as usual.
        It must not block; if it raises, the exception is logged and the message goes to
        ``receive``. Messages are offered in order, and none after one it refused until
        ``receive`` returned that one.
        """
        self._inline = consume

    def _take(self, data: bytes) -> None:
        raise NotImplementedError

    def _lose(self, reason: str) -> None:
        raise NotImplementedError

    def _news(self) -> bool:
        raise NotImplementedError

    async def _read(self) -> bytes:
        """One read waiting with trio (no hub, or TLS): ``b""`` at the end of the stream;
        ``ChannelClosed`` when the connection broke."""
        try:
            if self._socket is not None:
                return await read_when_ready(self._socket, RECEIVE_SIZE)
            return bytes(await self._stream.receive_some(RECEIVE_SIZE))
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise ChannelClosed(f"connection with {self.peer} lost: {exc}") from exc

    def _read_ready(self) -> None:
        """Read what the socket has and take it (or lose the input)."""
        assert self._socket is not None
        self._ready = False
        fd = self._socket.fileno()
        if fd < 0:
            self._lose(f"connection with {self.peer} lost: the socket was closed")
            return
        try:
            data = os.read(fd, RECEIVE_SIZE)
        except BlockingIOError:
            return  # readiness without input (it came and went)
        except OSError as exc:
            self._lose(f"connection with {self.peer} lost: {exc}")
            return
        # a full read may have left input behind, and the end may be behind the data: no new
        # edge will say so
        self._ready = len(data) == RECEIVE_SIZE or self._hup
        try:
            self._take(data)
        except Exception as exc:  # a parser's bug: end the input rather than leave the hub
            log.exception("reading from %s failed; closing the connection", self.peer)
            self._lose(f"connection with {self.peer} lost: reading failed: {exc!r}")

    async def _hub_input(self) -> None:
        """Return once there is news, reading what the socket has or parking until the hub's
        task brings some; a checkpoint."""
        parked = False
        while not self._news():
            if self._ready:
                self._read_ready()
                continue
            self._waiter = trio.lowlevel.current_task()

            def abort(_: trio.lowlevel.RaiseCancelT) -> trio.lowlevel.Abort:
                self._waiter = None
                return trio.lowlevel.Abort.SUCCEEDED

            await trio.lowlevel.wait_task_rescheduled(abort)
            parked = True
        if not parked:
            await trio.lowlevel.checkpoint()

    def _on_input(self, flags: int) -> None:
        """The hub's callback: input arrived. Read it now if a task waits in ``receive``
        (after anything earlier was handed out), offer the messages to the inline consumer, and
        wake the task for the rest; otherwise only remember it for the next ``receive``."""
        self._ready = True
        if flags & _PEER_GONE:
            self._hup = True
        task = self._waiter
        if task is None:
            return
        self._read_ready()
        items, consume = self._items, self._inline
        if consume is not None:
            while items:
                try:
                    if not consume(items[0]):
                        break
                except Exception:
                    log.exception("inline consumer failed on a message from %s; it goes to "
                                  "receive", self.peer)
                    break
                items.popleft()
        if self._ready or self._news():
            self._waiter = None
            trio.lowlevel.reschedule(task)

    def _close_once(self) -> bool:
        """Mark the channel closed: ``True`` the first time (a task waiting in ``receive`` then
        gets ``ChannelClosed``), ``False`` after.

        Closing forgets the inline consumer: a bound method of the channel's owner, which holds
        the channel; kept, the pair would be a reference cycle that outlives the connection
        until a full collection (docs/decisions/0004-collector-freezes-connections.md)."""
        if self._closed:
            return False
        self._closed = True
        self._inline = None
        if self._hub is not None:
            self._wake_closed()
        return True

    def _wake_closed(self) -> None:
        """Closing: stop watching; a task waiting in ``receive`` gets ``ChannelClosed``."""
        self._lose(f"connection with {self.peer} lost: the channel was closed")
        if self._hub is not None and self._socket is not None:
            self._hub.unwatch(self._socket.fileno())
            self._hub = None
        task, self._waiter = self._waiter, None
        if task is not None:
            trio.lowlevel.reschedule(task)
