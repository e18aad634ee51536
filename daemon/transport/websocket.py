"""The WebSocket channel, either end of a WebSocket whose handshake is complete.

Rules of this module: one WebSocket message is one protocol message or one attachment frame;
text and binary are both accepted (text as ``str``, binary as ``bytes``: the session decides
whether a binary message is an attachment it awaits or a JSON message). A
:class:`~schedd.protocol.attachments.Blob` is always sent as a binary message. A
:class:`WebSocketChannel` sends text messages (what ``docs/protocol.md`` asks peers to send)
until it receives a binary one, and from then on answers in the kind it last received. Pings
are answered while someone is in ``receive``. No extension
(compression) is negotiated. The WebSocket protocol is :mod:`wsproto`'s, with common frames
decoded by :mod:`schedd.protocol.wsframes`; this module only moves their bytes. ``aclose``
sends a close frame (code 1009 after ``E_TOO_LARGE``, the parser's code after ``E_MALFORMED``,
else 1000) before closing the stream.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from contextlib import suppress
from typing import Final, cast

import trio
from wsproto import WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import BytesMessage, CloseConnection, Event, Ping, Pong, TextMessage
from wsproto.utilities import LocalProtocolError

from schedd.errors import ProtocolError
from schedd.protocol.attachments import Blob
from schedd.protocol.codec import E_MALFORMED, E_TOO_LARGE
from schedd.protocol.wsframes import FrameSplitter, MaskKeys, encode_message
from schedd.transport.channel import ChannelClosed
from schedd.transport.readiness import ReadinessHub
from schedd.transport.sockets import (
    CLOSE_TIMEOUT,
    HubReader,
    close_stream,
    send_in_order,
    write_message_nowait,
)

__all__ = ["WebSocketChannel"]

_CLOSE_NORMAL: Final = 1000
_CLOSE_TOO_BIG: Final = 1009


class WebSocketChannel(HubReader[bytes | str]):
    """A :class:`~schedd.transport.channel.Channel` over a WebSocket whose handshake is complete.

    Either end of a WebSocket works: :func:`schedd.sdk.connect.open_channel` makes the client
    side, the daemon's WebSocket transport (:mod:`schedd.plugins.transport_ws`) the server side.

    :param stream: the connected stream (owned from now on).
    :param ws: the wsproto connection, in state ``OPEN``.
    :param peer: the remote address.
    :param max_frame: the largest message accepted, in bytes (UTF-8 bytes for text).
    :param hub: a running :class:`~schedd.transport.readiness.ReadinessHub`, as for
        :class:`StreamChannel`: a plain socket is then read by the hub's task and messages go
        first to the consumer set with :meth:`set_inline`. Pings and the peer's close are
        answered by the task in ``receive``; each ping and pong is first offered to the
        callback set with :meth:`set_control` (the daemon's rate limit).
    """

    untagged_blobs = True

    __slots__ = (
        "_close_code",
        "_control",
        "_ended",
        "_frames",
        "_keys",
        "_max_binary",
        "_max_frame",
        "_on_control",
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
        max_blob: int | None = None,
    ) -> None:
        if ws.state is not ConnectionState.OPEN:
            raise ValueError(f"the WebSocket is not open (state {ws.state.name})")
        self._stream = stream
        # A plain socket is read with read_when_ready (or the hub) and written by
        # send_in_order, as the TCP channel's.
        self._socket = stream.socket if isinstance(stream, trio.SocketStream) else None
        self._ws = ws
        self.peer = peer
        self._max_frame = max_frame
        # a binary message may be an attachment, up to max_blob bytes
        self._max_binary = max(max_frame, max_blob or 0)
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
        self._frames: FrameSplitter | None = None
        # a client masks every frame it sends (RFC 6455), with keys drawn in bulk
        self._keys = MaskKeys() if ws.client else None
        self._on_control: Callable[[], bool] | None = None
        self._attach(hub)
        self._handle_events()  # frames wsproto was fed with the handshake
        # Common frames are decoded here (schedd.protocol.wsframes), from a frame boundary: where
        # the handshake's HTTP head ended. The handshakes (the SDK's, the daemon's transport)
        # feed wsproto the head only and pass what followed it as ``leftover``; a
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

    def set_control(self, allow: Callable[[], bool] | None) -> None:
        """Call ``allow()`` for every ping and pong the peer sends, when it arrives (from the
        task that read it, the hub's maybe: it must not block or raise); a ping it refuses
        (``False``) gets no pong."""
        self._on_control = allow

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
            elif isinstance(event, Ping | Pong):
                allow = self._on_control
                if (allow is None or allow()) and isinstance(event, Ping):
                    self._control.append(event.response())
            elif isinstance(event, CloseConnection):
                self._handle_close(event)
                if self._ws.state is ConnectionState.REMOTE_CLOSING:
                    self._control.append(event.response())
            # handshake events do not occur once the socket is open

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
        limit = self._max_frame if isinstance(data, str) else self._max_binary
        if total > limit:
            self._parts.clear()
            self._size = 0
            self._close_code = _CLOSE_TOO_BIG
            self._ended = (
                E_TOO_LARGE,
                f"message of more than {limit} bytes exceeds the limit",
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
        await send_in_order(self, lambda: self._event_bytes(event))

    async def send(self, data: bytes) -> None:
        """Send one message: text (``data`` is UTF-8 JSON) or binary, see the module rules."""
        await send_in_order(self, lambda: self._message(data))

    async def send_many(self, messages: list[bytes]) -> None:
        """Send each of ``messages`` as ``send`` would, all in one write (in order, whole)."""
        await send_in_order(self, lambda: b"".join([self._message(data) for data in messages]))

    def write_nowait(self, data: bytes) -> bool:
        """Write one message now, without waiting, as ``StreamChannel.write_nowait``."""
        return write_message_nowait(self, lambda: self._message(data))

    @property
    def write_pending(self) -> bool:
        """As ``StreamChannel.write_pending``."""
        return bool(self._rest)

    def _message(self, data: bytes) -> bytes:
        """``data`` as one frame (schedd.protocol.wsframes.encode_message); ``ChannelClosed`` once
        the connection is closing, as wsproto would refuse it."""
        if self._ws.state is not ConnectionState.OPEN:
            raise ChannelClosed(f"connection with {self.peer} is closing")
        text = self._text and not isinstance(data, Blob)
        if text and not data.isascii():
            data.decode()  # text must be UTF-8: raises UnicodeDecodeError as wsproto's str did
        return encode_message(data, text=text, masked=self._keys is not None, keys=self._keys)

    async def aclose(self) -> None:
        """Send a close frame, then close the stream (see the module rules); never raises."""
        if not self._close_once():
            return
        self._on_control = None  # the owner's bound method: no cycle left behind (_close_once)
        with trio.move_on_after(CLOSE_TIMEOUT):
            if self._ws.state in (ConnectionState.OPEN, ConnectionState.REMOTE_CLOSING):
                with suppress(ChannelClosed):
                    await self._send_event(CloseConnection(code=self._close_code))
        await close_stream(self._stream)
