"""Open a :class:`~schedd.channel.Channel` to a daemon from a URL; the channels both ends use.

Rules of this module:

- **URLs.** ``ws://host[:port][/path]``, ``wss://…`` (WebSocket, default ports 80 and 443),
  ``tcp://host:port`` and ``tls://host:port`` (length-prefixed frames, see
  :mod:`schedd.protocol.framing`; the port is required, there is no path). IPv6 hosts are written
  in brackets: ``tcp://[::1]:8766``. The query parameter ``insecure=1`` (``wss``/``tls`` only)
  turns certificate verification off, for self-signed test certificates; any other query
  parameter of a ``ws``/``wss`` URL is sent to the server with the path. Anything else is a
  ``ValueError`` that lists what is supported.
- **Connecting.** Everything up to a usable channel (name lookup, TCP connect, TLS handshake and
  certificate check, WebSocket upgrade) shares one deadline, ``connect_timeout``. Any failure is a
  :class:`ConnectFailed` naming the URL and the reason, raised as soon as it is known (a refusal,
  a rejected certificate or upgrade, a peer that hangs up) and at the deadline for silence.
- **Channels.** :class:`StreamChannel` (TCP/TLS) and :class:`WebSocketChannel` implement
  :class:`~schedd.channel.Channel` for the daemon's transports and for clients alike. Neither
  runs a background task, so a channel holds no nursery and may be closed from any task (a
  ``StreamChannel`` given a running :class:`~schedd.sdk.readiness.ReadinessHub` is read by
  the hub's task while someone waits in ``receive``; closing it unwatches the socket and
  forgets the inline consumer, so a closed channel and its owner hold no cycle). A
  message over ``max_frame`` bytes raises :class:`~schedd.errors.ProtocolError` ``E_TOO_LARGE``
  from ``receive`` (a TCP frame as soon as its 4-byte header is read, a WebSocket message as soon
  as the part received goes over); a TCP frame of length 0 or a broken WebSocket frame (bad
  opcode, invalid UTF-8 text...) raises ``E_MALFORMED``. After either, every later ``receive``
  raises the same, while ``send`` still works, so the caller can send an ``error`` before closing.
  The end of the connection, whoever caused it, raises :class:`~schedd.channel.ChannelClosed`
  (after every message that arrived before it was returned). ``send`` is safe from several
  tasks at once.
- **WebSocket.** One WebSocket message is one protocol message; text and binary are both
  accepted (text as ``str``). A :class:`WebSocketChannel` sends text messages (what
  ``docs/protocol.md`` asks peers to send) until it receives a binary one, and from then on
  answers in the kind it last received. Pings are answered while someone is in ``receive``.
  No extension (compression) is negotiated. The WebSocket protocol is :mod:`wsproto`'s; this
  module only moves its bytes.
- **Closing.** ``aclose`` is idempotent and never raises. It closes gracefully, so that the last
  bytes sent (an ``error`` before closing) reach the peer: a WebSocket close frame (code 1009
  after ``E_TOO_LARGE``, the parser's code after ``E_MALFORMED``, else 1000), TLS
  ``close_notify``, and for plain TCP a half-close followed by reading and discarding what the
  peer still sends until it closes (closing a socket with unread input resets the connection,
  which can destroy what the peer has not read yet). All of it is bounded by
  :data:`CLOSE_TIMEOUT`, then the connection is cut.
"""

from __future__ import annotations

import logging
import os
import select
import ssl
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, suppress
from typing import Final, Generic, NoReturn, Protocol, TypeVar, cast
from urllib.parse import parse_qsl, urlencode, urlsplit

import attrs
import trio
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Ping,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from schedd.channel import Channel, ChannelClosed
from schedd.errors import ProtocolError
from schedd.protocol.codec import E_MALFORMED, E_TOO_LARGE
from schedd.protocol.framing import DEFAULT_MAX_FRAME, FrameDecoder, encode_frame
from schedd.sdk.readiness import ReadinessHub
from schedd.sdk.wsframes import FrameSplitter, HeadSplitter, encode_message

__all__ = [
    "CLOSE_TIMEOUT",
    "RECEIVE_SIZE",
    "SUPPORTED_SCHEMES",
    "ConnectFailed",
    "StreamChannel",
    "WebSocketChannel",
    "close_stream",
    "format_address",
    "handshake_events",
    "open_channel",
    "peer_address",
    "read_when_ready",
]

log = logging.getLogger(__name__)

SUPPORTED_SCHEMES: Final = ("ws", "wss", "tcp", "tls")
CLOSE_TIMEOUT: Final = 1.0
"""Seconds a graceful close may take before the connection is cut."""
RECEIVE_SIZE: Final = 65536
"""Bytes asked of the socket per read."""
_DEFAULT_PORTS: Final = {"ws": 80, "wss": 443}
_PEER_GONE: Final = select.EPOLLRDHUP | select.EPOLLHUP | select.EPOLLERR if hasattr(
    select, "epoll") else 0
_TRUE: Final = frozenset({"1", "true", "yes"})
_FALSE: Final = frozenset({"0", "false", "no"})
_CLOSE_NORMAL: Final = 1000
_CLOSE_TOO_BIG: Final = 1009
_REJECT_BODY_SHOWN: Final = 200  # bytes of an HTTP refusal's body quoted in ConnectFailed
_M = TypeVar("_M", bytes, bytes | str)  # what a channel's receive returns


class ConnectFailed(ChannelClosed):
    """No channel could be opened: the host is unknown, unreachable, refused or too slow, its
    certificate was not accepted, or it refused the WebSocket upgrade."""


# ---------------------------------------------------------------------------------------------
# Addresses and closing
# ---------------------------------------------------------------------------------------------


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
    almost always fails (a syscall and an exception per message; measured with py-spy at
    10,000 nodes, docs/benchmarks.md). Returns ``b""`` at the end of the stream. A closed socket
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
    the stream before it yields: trio's ``send_all`` around the syscall cost the simulated
    fleet a third of its CPU at 10,000 nodes (docs/benchmarks.md). Raises
    :class:`~schedd.channel.ChannelClosed` when the connection is broken.
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
    """What :func:`_send_in_order` and :func:`_write_nowait` use of a channel."""

    _stream: trio.abc.Stream
    _socket: trio.socket.SocketType | None
    _send_lock: trio.Lock
    #: the end of a message a short :func:`_write_nowait` left: it goes out before anything else
    _rest: bytes
    peer: str


async def _send_in_order(channel: _Sends, encode: Callable[[], bytes]) -> None:
    """Send the bytes ``encode()`` makes (called once) whole, in the order of the calls.

    With a plain socket and no other send in progress, one non-blocking write
    (:func:`_write_now`) almost always takes it all; what it leaves goes through ``send_all``
    under the channel's lock, taken before anything yields, so no other send can come between.
    Otherwise ``encode`` runs under the lock, after what a short :func:`_write_nowait` left.
    Either way this is a checkpoint. Transport failures raise
    :class:`~schedd.channel.ChannelClosed`.
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


def _write_nowait(channel: _Sends, encode: Callable[[], bytes]) -> bool:
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


class _HubReader(Generic[_M]):
    """How a channel is read by a :class:`~schedd.sdk.readiness.ReadinessHub`: shared by
    :class:`StreamChannel` and :class:`WebSocketChannel`.

    The subclass keeps received messages in ``_items`` and says how one read's bytes are taken
    (``_take``), how the input ends for a reason (``_lose``; the first reason stays) and whether
    a task waiting in ``receive`` has something to wake for (``_news``: a message, the end, or
    work only the task can do). It calls ``_attach`` last in ``__init__``.
    """

    __slots__ = ("_hub", "_hup", "_inline", "_items", "_ready", "_socket", "_stream", "_waiter",
                 "peer")
    _hub: ReadinessHub | None
    _stream: trio.abc.Stream
    _socket: trio.socket.SocketType | None
    _waiter: trio.lowlevel.Task | None  # the task parked in receive()
    _ready: bool  # the socket may have unread input (edge-triggered: nobody says so again)
    _hup: bool  # the peer's end arrived: read until it is read
    _inline: Callable[[_M], bool] | None
    _items: deque[_M]
    peer: str

    def _attach(self, hub: ReadinessHub | None) -> None:
        self._hub = None
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

    def _wake_closed(self) -> None:
        """Closing: stop watching; a task waiting in ``receive`` gets ``ChannelClosed``."""
        self._lose(f"connection with {self.peer} lost: the channel was closed")
        if self._hub is not None and self._socket is not None:
            self._hub.unwatch(self._socket.fileno())
            self._hub = None
        task, self._waiter = self._waiter, None
        if task is not None:
            trio.lowlevel.reschedule(task)

    def _detach(self) -> None:
        """Closing: forget the hub and the inline consumer. The consumer is a bound method of
        the channel's owner, which holds the channel: kept, the pair would be a reference
        cycle that outlives the connection until a full collection."""
        self._inline = None
        if self._hub is not None:
            self._wake_closed()


# ---------------------------------------------------------------------------------------------
# TCP / TLS
# ---------------------------------------------------------------------------------------------


class StreamChannel(_HubReader[bytes]):
    """A :class:`~schedd.channel.Channel` of length-prefixed frames over a byte stream.

    :param stream: a connected ``trio.SocketStream`` or ``trio.SSLStream`` (owned from now on).
    :param peer: the remote address, for logs and authentication.
    :param max_frame: the largest payload accepted, in bytes.
    :param hub: a running :class:`~schedd.sdk.readiness.ReadinessHub`: a plain socket is then
        read by the hub's task when input arrives while someone waits in ``receive``, and the
        frames go first to the consumer set with :meth:`set_inline` (the daemon's node
        connections: docs/benchmarks.md, S3). Without it, or over TLS, ``receive`` waits with
        trio (:func:`read_when_ready`).
    """

    __slots__ = ("_broken", "_closed", "_decoder", "_end", "_rest", "_send_lock")

    def __init__(self, stream: trio.abc.Stream, peer: str, max_frame: int,
                 hub: ReadinessHub | None = None) -> None:
        self._stream = stream
        # A plain socket is read with wait_readable + os.read (see read_when_ready).
        self._socket = stream.socket if isinstance(stream, trio.SocketStream) else None
        self.peer = peer
        self._decoder = FrameDecoder(max_frame)
        self._items: deque[bytes] = deque()
        self._send_lock = trio.Lock()
        self._rest = b""
        self._broken: tuple[str, str] | None = None
        self._closed = False
        # Why the input ended, once read (with a hub). A reason, not the exception: an exception
        # kept here holds its traceback, whose frames hold this channel (a reference cycle).
        self._end: str | None = None
        self._attach(hub)

    async def receive(self) -> bytes:
        """The next frame's payload.

        Frames that arrived together are handed out one per call without reading again (only a
        pending cancellation is honoured), so at most one read (64 KiB) is buffered.
        """
        frames = self._items
        if frames:
            await trio.lowlevel.checkpoint_if_cancelled()
            return frames.popleft()
        if self._broken is not None:
            raise ProtocolError(*self._broken)
        if self._hub is not None or self._end is not None:
            await self._hub_input()
            if frames:
                return frames.popleft()
            if self._broken is not None:
                raise ProtocolError(*self._broken)
            assert self._end is not None
            raise ChannelClosed(self._end)
        while not frames:
            self._feed(await self._read())
        return frames.popleft()

    def receive_nowait(self) -> bytes | None:
        """The next frame's payload if it has arrived already, else ``None``: no read, no
        checkpoint (the daemon looks for a node's ``result`` right behind its ``accept``)."""
        return self._items.popleft() if self._items else None

    def _feed(self, data: bytes) -> None:
        """Decode what one read returned; raise at the end of the stream or a bad header."""
        if not data:
            cut = " in the middle of a frame" if self._decoder.pending else ""
            raise ChannelClosed(f"{self.peer} closed the connection{cut}")
        try:
            self._items.extend(self._decoder.feed(data))
        except ProtocolError as exc:
            # Frames completed before the bad header in this read are lost with the stream.
            self._broken = (exc.code, exc.message)
            raise

    def _take(self, data: bytes) -> None:
        try:
            self._feed(data)
        except ChannelClosed as exc:
            self._end = str(exc)
        except ProtocolError:
            pass  # in _broken

    def _lose(self, reason: str) -> None:
        if self._end is None:
            self._end = reason

    def _news(self) -> bool:
        return bool(self._items) or self._broken is not None or self._end is not None

    async def send(self, data: bytes) -> None:
        """Send ``data`` as one frame, whole even when several tasks send at once.

        Over a plain socket with no other send in progress the frame goes out in one
        non-blocking write (what it leaves goes through the stream, still in order); trio's
        stream machinery per message cost the simulated fleet a third of its CPU at 10,000
        nodes (docs/benchmarks.md). Either way ``send`` is a checkpoint.
        """
        await self._send_frames(encode_frame(data))

    async def send_many(self, messages: list[bytes]) -> None:
        """Send each of ``messages`` as a frame, all in one write (in order, whole)."""
        await self._send_frames(b"".join([encode_frame(data) for data in messages]))

    async def _send_frames(self, frame: bytes) -> None:
        await _send_in_order(self, lambda: frame)

    def write_nowait(self, data: bytes) -> bool:
        """Write ``data`` as one frame now, without waiting, if no other send is in progress:
        True when it is on its way (what a short write left goes out first with the next send:
        see :attr:`write_pending`), False when nothing was written (use :meth:`send`). For the
        daemon, whose sessions post messages from other connections' tasks."""
        return _write_nowait(self, lambda: encode_frame(data))

    @property
    def write_pending(self) -> bool:
        """Whether a short :meth:`write_nowait` left bytes that wait for the next send
        (``send_many([])`` sends just them)."""
        return bool(self._rest)

    async def aclose(self) -> None:
        """Close gracefully (see :func:`close_stream`); idempotent, never raises."""
        if self._closed:
            return
        self._closed = True
        self._detach()
        await close_stream(self._stream)


# ---------------------------------------------------------------------------------------------
# WebSocket
# ---------------------------------------------------------------------------------------------


class WebSocketChannel(_HubReader[bytes | str]):
    """A :class:`~schedd.channel.Channel` over a WebSocket whose handshake is complete.

    Either end of a WebSocket works: :func:`open_channel` makes the client side, the daemon's
    WebSocket transport (:mod:`schedd.plugins.transport_ws`) the server side.

    :param stream: the connected stream (owned from now on).
    :param ws: the wsproto connection, in state ``OPEN``.
    :param peer: the remote address.
    :param max_frame: the largest message accepted, in bytes (UTF-8 bytes for text).
    :param hub: a running :class:`~schedd.sdk.readiness.ReadinessHub`, as for
        :class:`StreamChannel`: a plain socket is then read by the hub's task and messages go
        first to the consumer set with :meth:`set_inline`. Pings and the peer's close are
        answered by the task in ``receive``.
    """

    __slots__ = (
        "_close_code",
        "_closed",
        "_control",
        "_ended",
        "_frames",
        "_max_frame",
        "_parts",
        "_rest",
        "_send_lock",
        "_size",
        "_text",
        "_ws",
    )

    def __init__(
        self, stream: trio.abc.Stream, ws: WSConnection, peer: str, max_frame: int,
        hub: ReadinessHub | None = None, *, leftover: bytes | None = None,
    ) -> None:
        if ws.state is not ConnectionState.OPEN:
            raise ValueError(f"the WebSocket is not open (state {ws.state.name})")
        self._stream = stream
        # A plain socket is read with read_when_ready (or the hub) and written by
        # _send_in_order, as the TCP channel's.
        self._socket = stream.socket if isinstance(stream, trio.SocketStream) else None
        self._ws = ws
        self.peer = peer
        self._max_frame = max_frame
        self._items: deque[bytes | str] = deque()
        self._control: list[Event] = []  # answers to send before receive returns (pong, close)
        self._parts: list[bytes | str] = []
        self._size = 0
        self._send_lock = trio.Lock()
        self._rest = b""
        self._text = True
        # Once set, (error code or "", message) of what every later receive raises.
        self._ended: tuple[str, str] | None = None
        self._close_code = _CLOSE_NORMAL
        self._closed = False
        self._frames: FrameSplitter | None = None
        self._attach(hub)
        self._handle_events()  # frames wsproto was fed with the handshake
        # Common frames are decoded here (schedd.sdk.wsframes), from a frame boundary: where
        # the handshake's HTTP head ended. The handshakes (_websocket_handshake, the daemon's
        # transport) feed wsproto the head only and pass what followed it as ``leftover``; a
        # server's wsproto keeps nothing after the request anyway. Not a client handed no
        # leftover (its wsproto may hold the start of a frame), nor a connection whose wsproto
        # was fed frames.
        if (leftover is not None or not ws.client) and not self._news():
            self._frames = FrameSplitter(max_frame, server=not ws.client)
        if leftover:
            self._take(leftover)

    async def receive(self) -> bytes | str:
        """The next message, text as ``str`` and binary as ``bytes``."""
        messages = self._items
        if messages and not self._control:
            await trio.lowlevel.checkpoint_if_cancelled()
            return messages.popleft()
        while True:
            if self._control:
                await self._answer_control()
            if messages:
                return messages.popleft()
            if self._ended is not None:
                break
            if self._hub is not None:
                await self._hub_input()
                continue
            try:
                data = await self._read()
            except ChannelClosed as exc:
                self._lose(str(exc))
                continue
            self._take(data)
        code, message = self._ended
        if code:
            raise ProtocolError(code, message)
        raise ChannelClosed(message)

    def receive_nowait(self) -> bytes | str | None:
        """The next message if it has arrived already and no control frame waits to be answered
        before it, else ``None``: no read, no checkpoint (see ``StreamChannel``)."""
        messages = self._items
        return messages.popleft() if messages and not self._control else None

    def _take(self, data: bytes) -> None:
        ws = self._ws
        if ws.state is ConnectionState.CLOSED:
            # Our close was answered (aclose from another task); nothing more will come.
            self._lose(f"connection with {self.peer} closed")
            return
        frames = self._frames
        if frames is not None:
            if data and ws.state is ConnectionState.OPEN:
                self._split(frames, data)
                return
            # closing or ended: wsproto reads the rest, after what the splitter held back
            self._frames = None
            held = frames.release()
            if held:
                ws.receive_data(held)
        ws.receive_data(data or None)  # None: end of stream
        self._handle_events()

    def _split(self, frames: FrameSplitter, data: bytes) -> None:
        """Messages the splitter decoded go to ``_items`` as wsproto's would; the rest through
        wsproto, whose events are handled before any later message, so the order holds."""
        fed = False
        for decoded, value in frames.feed(data):
            if not decoded:
                self._ws.receive_data(cast("bytes", value))
                fed = True
                continue
            if fed:
                self._handle_events()
                fed = False
            if self._ended is None:
                self._text = isinstance(value, str)
                self._items.append(value)
        if fed:
            self._handle_events()

    def _lose(self, reason: str) -> None:
        if self._ended is None:
            self._ended = ("", reason)

    def _news(self) -> bool:
        return bool(self._items) or bool(self._control) or self._ended is not None

    def _handle_events(self) -> None:
        for event in self._ws.events():
            if isinstance(event, TextMessage | BytesMessage):
                if self._ended is None:
                    self._add_part(event)
            elif isinstance(event, Ping):
                self._control.append(event.response())
            elif isinstance(event, CloseConnection):
                self._handle_close(event)
                if self._ws.state is ConnectionState.REMOTE_CLOSING:
                    self._control.append(event.response())
            # Pong needs nothing; handshake events do not occur once the socket is open.

    async def _answer_control(self) -> None:
        control, self._control = self._control, []
        for event in control:
            with suppress(ChannelClosed):  # the reading side finds out why
                await self._send_event(event)

    def _add_part(self, event: TextMessage | BytesMessage) -> None:
        raw = event.data
        data = raw if isinstance(raw, str | bytes) else bytes(raw)
        if isinstance(data, str):
            self._text = True
            size = len(data) if data.isascii() else len(data.encode())
        else:
            self._text = False
            size = len(data)
        total = self._size + size
        if total > self._max_frame:
            self._parts.clear()
            self._size = 0
            self._close_code = _CLOSE_TOO_BIG
            self._ended = (
                E_TOO_LARGE,
                f"message of more than {self._max_frame} bytes exceeds the limit",
            )
            return
        if not event.message_finished:
            self._parts.append(data)
            self._size = total
            return
        parts = self._parts
        if parts:
            parts.append(data)
            if isinstance(data, str):
                message: bytes | str = "".join(cast("list[str]", parts))
            else:
                message = b"".join(cast("list[bytes]", parts))
            parts.clear()
            self._size = 0
        else:
            message = data
        self._items.append(message)

    def _handle_close(self, event: CloseConnection) -> None:
        if self._ended is not None:
            return
        state = self._ws.state
        reason = f" ({event.reason})" if event.reason else ""
        if state is ConnectionState.OPEN:
            # wsproto reports a frame it cannot parse as a close event without changing state.
            self._close_code = event.code
            self._ended = (E_MALFORMED, f"invalid WebSocket frame: {event.reason or event.code}")
        elif event.code == 1006:  # end of stream without a close frame
            self._ended = ("", f"{self.peer} closed the connection without a WebSocket close")
        else:
            self._ended = ("", f"{self.peer} closed the connection: {event.code}{reason}")

    def _event_bytes(self, event: Event) -> bytes:
        try:
            return self._ws.send(event)
        except LocalProtocolError:
            raise ChannelClosed(f"connection with {self.peer} is closing") from None

    async def _send_event(self, event: Event) -> None:
        await _send_in_order(self, lambda: self._event_bytes(event))

    async def send(self, data: bytes) -> None:
        """Send one message: text (``data`` is UTF-8 JSON) or binary, see the module rules."""
        await _send_in_order(self, lambda: self._message(data))

    async def send_many(self, messages: list[bytes]) -> None:
        """Send each of ``messages`` as ``send`` would, all in one write (in order, whole)."""
        await _send_in_order(self, lambda: b"".join([self._message(data) for data in messages]))

    def write_nowait(self, data: bytes) -> bool:
        """Write one message now, without waiting, as ``StreamChannel.write_nowait``."""
        return _write_nowait(self, lambda: self._message(data))

    @property
    def write_pending(self) -> bool:
        """As ``StreamChannel.write_pending``."""
        return bool(self._rest)

    def _message(self, data: bytes) -> bytes:
        """``data`` as one frame (schedd.sdk.wsframes.encode_message); ``ChannelClosed`` once
        the connection is closing, as wsproto would refuse it."""
        if self._ws.state is not ConnectionState.OPEN:
            raise ChannelClosed(f"connection with {self.peer} is closing")
        text = self._text
        if text and not data.isascii():
            data.decode()  # text must be UTF-8: raises UnicodeDecodeError as wsproto's str did
        return encode_message(data, text=text, masked=self._ws.client)

    async def aclose(self) -> None:
        """Send a close frame, then close the stream (see the module rules); never raises."""
        if self._closed:
            return
        self._closed = True
        self._detach()
        with trio.move_on_after(CLOSE_TIMEOUT):
            if self._ws.state in (ConnectionState.OPEN, ConnectionState.REMOTE_CLOSING):
                with suppress(ChannelClosed):
                    await self._send_event(CloseConnection(code=self._close_code))
        await close_stream(self._stream)


# ---------------------------------------------------------------------------------------------
# Opening a channel from a URL
# ---------------------------------------------------------------------------------------------


@attrs.frozen
class _Target:
    url: str
    scheme: str
    host: str
    port: int
    resource: str
    ssl_context: ssl.SSLContext | None

    @property
    def websocket(self) -> bool:
        return self.scheme in ("ws", "wss")

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == _DEFAULT_PORTS.get(self.scheme) else f"{host}:{self.port}"


def _parse_url(url: str, ssl_context: ssl.SSLContext | None) -> _Target:
    supported = ", ".join(f"{scheme}://" for scheme in SUPPORTED_SCHEMES)
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"invalid URL {url!r}: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in SUPPORTED_SCHEMES:
        raise ValueError(f"unsupported URL scheme in {url!r}; supported: {supported}")
    host = parts.hostname
    if not host:
        raise ValueError(f"URL {url!r} names no host")
    insecure = False
    rest: list[tuple[str, str]] = []
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key != "insecure":
            rest.append((key, value))
        elif value.lower() in _TRUE:
            insecure = True
        elif value.lower() not in _FALSE:
            raise ValueError(f"URL {url!r}: insecure must be 1 or 0, not {value!r}")
    secure = scheme in ("wss", "tls")
    if insecure and not secure:
        raise ValueError(f"URL {url!r}: insecure=1 applies to wss:// and tls:// only")
    if insecure and ssl_context is not None:
        raise ValueError(f"URL {url!r}: give either ssl_context or insecure=1, not both")
    if scheme in ("tcp", "tls"):
        if port is None:
            raise ValueError(f"URL {url!r} needs a port: {scheme}://host:port")
        if parts.path not in ("", "/") or rest or parts.fragment:
            raise ValueError(f"URL {url!r}: a {scheme}:// URL has no path or query")
        resource = ""
    else:
        resource = (parts.path or "/") + (f"?{urlencode(rest)}" if rest else "")
    if secure and ssl_context is None:
        ssl_context = ssl.create_default_context()
        if insecure:
            ssl_context.check_hostname = False
            ssl_context.verify_mode = ssl.CERT_NONE
    return _Target(
        url=url,
        scheme=scheme,
        host=host,
        port=port if port is not None else _DEFAULT_PORTS[scheme],
        resource=resource,
        ssl_context=ssl_context if secure else None,
    )


def _reason(exc: BaseException) -> str:
    """The most telling message in an exception and its causes."""
    while isinstance(exc, trio.BrokenResourceError) and exc.__cause__ is not None:
        exc = exc.__cause__
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate not accepted: {exc.verify_message}"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


async def _connect_stream(target: _Target) -> trio.abc.Stream:
    """TCP connect and, for wss/tls, the TLS handshake."""
    try:
        stream: trio.abc.Stream = await trio.open_tcp_stream(target.host, target.port)
    except OSError as exc:
        raise ConnectFailed(f"cannot connect to {target.url}: {_reason(exc)}") from exc
    if target.ssl_context is None:
        return stream
    ssl_stream = trio.SSLStream(
        stream,
        target.ssl_context,
        server_hostname=target.host,
        https_compatible=target.websocket,
    )
    try:
        await ssl_stream.do_handshake()
    except trio.BrokenResourceError as exc:
        await trio.aclose_forcefully(ssl_stream)
        raise ConnectFailed(f"cannot connect to {target.url}: {_reason(exc)}") from exc
    except BaseException:
        await trio.aclose_forcefully(ssl_stream)
        raise
    return ssl_stream


def _refused(target: _Target, status: int, body: bytes) -> NoReturn:
    text = body[:_REJECT_BODY_SHOWN].decode("utf-8", "replace").strip()
    detail = f": {text}" if text else ""
    raise ConnectFailed(
        f"cannot connect to {target.url}: the server refused the WebSocket upgrade "
        f"(HTTP {status}){detail}"
    )


def handshake_events(
    ws: WSConnection, head: HeadSplitter, data: bytes,
) -> Iterator[tuple[Event, bytes | None]]:
    """Feed one handshake read to ``ws`` (the HTTP head only, see schedd.sdk.wsframes) and
    yield each event with what followed the head and was not fed: the bytes a channel built
    on that event reads first (``leftover``). None if the head's end was not found (a head
    ended by bare line feeds, which wsproto accepts): wsproto may then hold the start of a
    frame. Raises wsproto's ``RemoteProtocolError`` as ``receive_data`` does."""
    chunks = head.chunks(data)
    for i, chunk in enumerate(chunks):
        ws.receive_data(chunk)
        for event in ws.events():
            rest = b"".join(c for c in chunks[i + 1:] if c) if head.done else None
            yield event, rest


async def _websocket_handshake(
    stream: trio.abc.Stream, target: _Target,
) -> tuple[WSConnection, bytes | None]:
    """Send the upgrade request and read the answer: the open connection and the bytes that
    followed the response (for the channel to read first; see handshake_events), or
    ConnectFailed."""
    ws = WSConnection(ConnectionType.CLIENT)
    status = 0
    body = bytearray()
    head = HeadSplitter()
    try:
        await stream.send_all(ws.send(Request(host=target.host_header, target=target.resource)))
        while True:
            data = bytes(await stream.receive_some(RECEIVE_SIZE))
            try:
                for event, leftover in handshake_events(ws, head, data):
                    if isinstance(event, AcceptConnection):
                        return ws, leftover
                    if isinstance(event, RejectConnection):
                        status = event.status_code
                        if not event.has_body:
                            _refused(target, status, b"")
                    elif isinstance(event, RejectData):
                        if len(body) < _REJECT_BODY_SHOWN:
                            body += event.data
                        if event.body_finished:
                            _refused(target, status, bytes(body))
            except RemoteProtocolError as exc:
                raise ConnectFailed(
                    f"cannot connect to {target.url}: not a WebSocket server ({exc})"
                ) from None
            if not data:
                raise ConnectFailed(
                    f"cannot connect to {target.url}: the server closed the connection "
                    "during the WebSocket handshake"
                )
    except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        raise ConnectFailed(f"cannot connect to {target.url}: {_reason(exc)}") from exc


async def _open(target: _Target, max_frame: int) -> StreamChannel | WebSocketChannel:
    stream = await _connect_stream(target)
    try:
        peer = peer_address(stream)
        if not target.websocket:
            return StreamChannel(stream, peer, max_frame)
        ws, leftover = await _websocket_handshake(stream, target)
        return WebSocketChannel(stream, ws, peer, max_frame, leftover=leftover)
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise


@asynccontextmanager
async def open_channel(
    url: str,
    *,
    max_frame: int = DEFAULT_MAX_FRAME,
    connect_timeout: float = 5.0,
    ssl_context: ssl.SSLContext | None = None,
) -> AsyncIterator[Channel]:
    """Connect to a daemon and yield a channel; close it gracefully when the block ends.

    :param url: ``ws://``, ``wss://``, ``tcp://host:port`` or ``tls://host:port`` (see the
        module rules; ``?insecure=1`` skips certificate verification).
    :param max_frame: the largest message accepted from the daemon, in bytes.
    :param connect_timeout: seconds for everything up to a usable channel.
    :param ssl_context: the TLS context for ``wss``/``tls`` (default: the system's trust store
        with hostname checking).
    :raises ValueError: for an unsupported or malformed URL.
    :raises ConnectFailed: when no channel could be opened.
    """
    target = _parse_url(url, ssl_context)
    try:
        with trio.fail_after(connect_timeout):
            channel = await _open(target, max_frame)
    except trio.TooSlowError:
        raise ConnectFailed(
            f"cannot connect to {url}: no answer within {connect_timeout:g} s"
        ) from None
    try:
        yield channel
    finally:
        await channel.aclose()
