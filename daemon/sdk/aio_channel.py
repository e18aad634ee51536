"""The SDK's channels under asyncio: length-prefixed frames and WebSocket on anyio byte streams.

Rules of this module:

- **Same behaviour as the trio channels.** :class:`AioStreamChannel` and
  :class:`AioWebSocketChannel` are :class:`~schedd.transport.channel.Channel` s with the
  contract of :mod:`schedd.transport`'s (one ``receive`` = one message, ``ChannelClosed`` when
  the connection ends, ``ProtocolError`` (``E_TOO_LARGE``, ``E_MALFORMED``) for a frame that
  cannot be accepted, an idempotent ``aclose`` that never raises). They share the sans-io layers
  with them unchanged: :mod:`schedd.protocol.framing` for ``tcp://``/``tls://``, and wsproto with
  :mod:`schedd.protocol.wsframes` (the common frames decoded without wsproto) for
  ``ws://``/``wss://``; only the reads and writes are anyio's.
- **Client side only.** The daemon's transports stay on trio; these channels are opened by
  :func:`schedd.sdk.connect.open_channel` when the running event loop is not trio.
- **Sends** are serialised by a FIFO lock, so that messages stay whole and in the order of the
  calls whichever tasks send them; ``send_many`` writes its messages in one go (a message and
  its attachments). A WebSocket's pings and the peer's close are answered by the task in
  ``receive``, before it returns the next message.
- **Closing** is bounded by :data:`~schedd.transport.sockets.CLOSE_TIMEOUT` and shielded: a
  WebSocket sends its close frame (1009 after ``E_TOO_LARGE``, the parser's code after
  ``E_MALFORMED``, else 1000), then the stream is closed.
"""

from __future__ import annotations

import os
from collections import deque
from contextlib import suppress
from typing import Final

import anyio
import anyio.abc
import anyio.lowlevel
from anyio.streams.tls import TLSStream
from wsproto import WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import BytesMessage, CloseConnection, Event, Ping, TextMessage
from wsproto.utilities import LocalProtocolError

from schedd.errors import ProtocolError
from schedd.protocol.attachments import SDK_MAX_ATTACHMENT, Blob
from schedd.protocol.codec import E_MALFORMED, E_TOO_LARGE
from schedd.protocol.framing import FrameDecoder, encode_frame
from schedd.protocol.wsframes import FrameSplitter, MaskKeys, encode_message
from schedd.sdk._target import BROKEN, ConnectFailed, Target, reason, websocket_handshake
from schedd.transport.channel import Channel, ChannelClosed
from schedd.transport.sockets import CLOSE_TIMEOUT, RECEIVE_SIZE, format_address

__all__ = ["AioStreamChannel", "AioWebSocketChannel", "open_anyio"]

_CLOSE_NORMAL: Final = 1000
_CLOSE_TOO_BIG: Final = 1009
_LOST: Final = (*BROKEN, anyio.EndOfStream, OSError)
"""What a read or write raises when the connection is gone."""


async def open_anyio(target: Target, max_frame: int) -> Channel:
    """Connect, do the TLS handshake and the WebSocket upgrade the URL asks for, and return the
    channel. Raises :class:`ConnectFailed` (the caller bounds the time)."""
    try:
        stream: anyio.abc.ByteStream = await anyio.connect_tcp(target.host, target.port)
    except OSError as exc:
        raise ConnectFailed(f"cannot connect to {target.url}: {_cause(exc)}") from exc
    try:
        peer = format_address(stream.extra(anyio.abc.SocketAttribute.remote_address, ""))
        if target.ssl_context is not None:
            try:
                stream = await TLSStream.wrap(
                    stream,
                    hostname=target.host,
                    ssl_context=target.ssl_context,
                    standard_compatible=target.websocket,
                )
            except _LOST as exc:
                raise ConnectFailed(f"cannot connect to {target.url}: {reason(exc)}") from exc
        if not target.websocket:
            return AioStreamChannel(stream, peer, max_frame)
        ws, leftover = await websocket_handshake(stream.send, _EofAsEmpty(stream), target)
        return AioWebSocketChannel(stream, ws, peer, max_frame, leftover)
    except BaseException:
        await anyio.aclose_forcefully(stream)
        raise


def _cause(exc: OSError) -> str:
    """anyio reports a failed connect as one OSError whose cause says why (the last attempt)."""
    cause = exc.__cause__
    if isinstance(cause, OSError) and cause.errno:
        return os.strerror(cause.errno)  # "Connection refused", not asyncio's wording
    return reason(exc)


class _EofAsEmpty:
    """``receive()`` of a stream that returns ``b""`` at its end, as the handshake expects."""

    def __init__(self, stream: anyio.abc.ByteStream) -> None:
        self._stream = stream

    async def __call__(self) -> bytes:
        try:
            return await self._stream.receive(RECEIVE_SIZE)
        except anyio.EndOfStream:
            return b""


class _AioChannel(Channel):
    """The I/O both channels share: reads, ordered writes and a bounded, shielded close."""

    def __init__(self, stream: anyio.abc.ByteStream, peer: str) -> None:
        self._stream = stream
        self.peer = peer
        self._send_lock = anyio.Lock(fast_acquire=True)
        self._close_called = False  # aclose has begun (it runs once)
        self._closing = False  # the goodbye is sent: nothing more is written or read

    async def _read(self) -> bytes:
        """The next bytes from the peer; ``b""`` once it closed the connection (or broke it)."""
        try:
            return await self._stream.receive(RECEIVE_SIZE)
        except _LOST:
            return b""

    async def _write(self, data: bytes) -> None:
        if self._closing:
            raise ChannelClosed(f"connection with {self.peer} is closed")
        async with self._send_lock:
            try:
                await self._stream.send(data)
            except _LOST as exc:
                raise ChannelClosed(f"connection with {self.peer} lost: {reason(exc)}") from exc

    def _frame(self, data: bytes) -> bytes:
        """``data`` as the bytes that carry it on the stream (raises ``ChannelClosed`` when the
        connection is closing)."""
        raise NotImplementedError

    async def send(self, data: bytes) -> None:
        """Send one message (see the subclass)."""
        await self._write(self._frame(data))

    async def send_many(self, messages: list[bytes]) -> None:
        """Send each of ``messages`` as ``send`` would, in one write: nothing another task
        sends comes between them (a message and its attachments); none: nothing is written."""
        data = b"".join([self._frame(message) for message in messages])
        if data:
            await self._write(data)
        else:
            await anyio.lowlevel.checkpoint()

    async def _goodbye(self) -> None:
        """What to send before the stream is closed (a WebSocket's close frame)."""

    async def aclose(self) -> None:
        """Say goodbye, then close the stream (see the module rules); never raises."""
        if self._close_called:
            return
        self._close_called = True
        with anyio.CancelScope(shield=True):
            with anyio.move_on_after(CLOSE_TIMEOUT), suppress(ChannelClosed):
                await self._goodbye()
            self._closing = True
            with anyio.move_on_after(CLOSE_TIMEOUT), suppress(*_LOST):
                await self._stream.aclose()
            await anyio.aclose_forcefully(self._stream)


class AioStreamChannel(_AioChannel):
    """Length-prefixed frames (:mod:`schedd.protocol.framing`) over an anyio byte stream."""

    def __init__(self, stream: anyio.abc.ByteStream, peer: str, max_frame: int) -> None:
        super().__init__(stream, peer)
        self._decoder = FrameDecoder(max_frame, SDK_MAX_ATTACHMENT)
        self._frames: deque[bytes] = deque()
        self._broken: tuple[str, str] | None = None  # (code, message) of a bad frame

    async def receive(self) -> bytes:
        """The next frame's payload (frames read together come out one per call)."""
        frames = self._frames
        while not frames:
            if self._broken is not None:
                raise ProtocolError(*self._broken)
            if self._closing:
                raise ChannelClosed(f"connection with {self.peer} is closed")
            data = await self._read()
            if not data:
                raise ChannelClosed(f"{self.peer} closed the connection")
            try:
                frames.extend(self._decoder.feed(data))
            except ProtocolError as exc:
                self._broken = (exc.code, exc.message)
        await anyio.lowlevel.checkpoint_if_cancelled()
        return frames.popleft()

    def _frame(self, data: bytes) -> bytes:
        return encode_frame(data)


class AioWebSocketChannel(_AioChannel):
    """The client end of a WebSocket whose handshake is complete, over an anyio byte stream.

    Text and binary messages are both accepted (text as ``str``); it sends text until it
    receives a binary message, then answers in the kind it last received, as
    :class:`~schedd.transport.WebSocketChannel` does. An attachment
    (:class:`~schedd.protocol.attachments.Blob`) always goes as a binary message.
    """

    untagged_blobs = True

    def __init__(
        self, stream: anyio.abc.ByteStream, ws: WSConnection, peer: str, max_frame: int,
        leftover: bytes | None,
    ) -> None:
        if ws.state is not ConnectionState.OPEN:
            raise ValueError(f"the WebSocket is not open (state {ws.state.name})")
        super().__init__(stream, peer)
        self._ws = ws
        self._max_frame = max_frame
        self._messages: deque[bytes | str] = deque()
        self._answers: list[Event] = []  # pongs and the close reply, sent before receive returns
        self._parts: list[bytes | str] = []
        self._size = 0
        self._text = True
        # Once set, (error code or "", message) of what every later receive raises.
        self._ended: tuple[str, str] | None = None
        self._close_code = _CLOSE_NORMAL
        self._keys = MaskKeys()
        # Common frames are decoded by the splitter from a frame boundary: the handshake fed
        # wsproto the HTTP head only and handed what followed as ``leftover``.
        self._splitter = FrameSplitter(max_frame, server=False) if leftover is not None else None
        self._events()
        if leftover:
            self._take(leftover)

    async def receive(self) -> bytes | str:
        """The next message, text as ``str`` and binary as ``bytes``."""
        messages = self._messages
        while True:
            if self._answers:
                answers, self._answers = self._answers, []
                for event in answers:
                    with suppress(ChannelClosed):  # the reading side finds out why
                        await self._send_event(event)
            if messages:
                await anyio.lowlevel.checkpoint_if_cancelled()
                return messages.popleft()
            if self._ended is not None:
                code, message = self._ended
                if code:
                    raise ProtocolError(code, message)
                raise ChannelClosed(message)
            if self._closing:
                raise ChannelClosed(f"connection with {self.peer} is closed")
            self._take(await self._read())

    def _frame(self, data: bytes) -> bytes:
        """One message: text (``data`` is UTF-8 JSON) or binary, see the class."""
        if self._ws.state is not ConnectionState.OPEN:
            raise ChannelClosed(f"connection with {self.peer} is closing")
        text = self._text and not isinstance(data, Blob)
        if text and not data.isascii():
            data.decode()  # text must be UTF-8
        return encode_message(data, text=text, masked=True, keys=self._keys)

    async def _send_event(self, event: Event) -> None:
        try:
            data = self._ws.send(event)
        except LocalProtocolError:
            raise ChannelClosed(f"connection with {self.peer} is closing") from None
        await self._write(data)

    async def _goodbye(self) -> None:
        if self._ws.state in (ConnectionState.OPEN, ConnectionState.REMOTE_CLOSING):
            await self._send_event(CloseConnection(code=self._close_code))

    def _take(self, data: bytes) -> None:
        """Decode what one read returned (``b""``: the end of the stream)."""
        ws = self._ws
        if ws.state is ConnectionState.CLOSED:
            self._end("", f"connection with {self.peer} closed")
            return
        splitter = self._splitter
        if splitter is not None and data and ws.state is ConnectionState.OPEN:
            for decoded, value in splitter.feed(data):
                if decoded:
                    self._events()  # what wsproto holds comes first
                    if self._ended is None:
                        self._text = isinstance(value, str)
                        self._messages.append(value)
                else:
                    assert isinstance(value, bytes)
                    ws.receive_data(value)
            self._events()
            return
        if splitter is not None:  # closing or ended: wsproto reads the rest
            self._splitter = None
            held = splitter.release()
            if held:
                ws.receive_data(held)
        ws.receive_data(data or None)
        self._events()

    def _end(self, code: str, message: str) -> None:
        if self._ended is None:
            self._ended = (code, message)

    def _events(self) -> None:
        for event in self._ws.events():
            if isinstance(event, TextMessage | BytesMessage):
                if self._ended is None:
                    self._part(event.data, finished=event.message_finished)
            elif isinstance(event, Ping):
                self._answers.append(event.response())
            elif isinstance(event, CloseConnection):
                self._closed_by_peer(event)
                if self._ws.state is ConnectionState.REMOTE_CLOSING:
                    self._answers.append(event.response())

    def _part(self, raw: bytes | bytearray | str, *, finished: bool) -> None:
        data: bytes | str = raw if isinstance(raw, str | bytes) else bytes(raw)
        self._text = isinstance(data, str)
        self._size += len(data.encode()) if isinstance(data, str) else len(data)
        limit = self._max_frame if isinstance(data, str) else max(self._max_frame,
                                                                  SDK_MAX_ATTACHMENT)
        if self._size > limit:
            self._close_code = _CLOSE_TOO_BIG
            self._end(E_TOO_LARGE, f"message of more than {limit} bytes exceeds the limit")
            return
        self._parts.append(data)
        if not finished:
            return
        parts, self._parts, self._size = self._parts, [], 0
        if isinstance(data, str):
            self._messages.append("".join(part for part in parts if isinstance(part, str)))
        else:
            self._messages.append(b"".join(part for part in parts if isinstance(part, bytes)))

    def _closed_by_peer(self, event: CloseConnection) -> None:
        if self._ws.state is ConnectionState.OPEN:
            # wsproto reports a frame it cannot parse as a close event without changing state.
            self._close_code = event.code
            self._end(E_MALFORMED, f"invalid WebSocket frame: {event.reason or event.code}")
        elif event.code == 1006:  # end of stream without a close frame
            self._end("", f"{self.peer} closed the connection without a WebSocket close")
        else:
            why = f" ({event.reason})" if event.reason else ""
            self._end("", f"{self.peer} closed the connection: {event.code}{why}")
