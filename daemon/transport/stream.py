"""The TCP/TLS channel: length-prefixed frames (:mod:`schedd.protocol.framing`) over a byte
stream, for the daemon's TCP transport and the SDK's ``tcp://``/``tls://`` URLs alike."""

from __future__ import annotations

from collections import deque

import trio

from schedd.errors import ProtocolError
from schedd.protocol.framing import FrameDecoder, encode_frame
from schedd.transport.channel import ChannelClosed
from schedd.transport.readiness import ReadinessHub
from schedd.transport.sockets import HubReader, close_stream, send_in_order, write_message_nowait

__all__ = ["StreamChannel"]


class StreamChannel(HubReader[bytes]):
    """A :class:`~schedd.transport.channel.Channel` of length-prefixed frames over a byte stream.

    :param stream: a connected ``trio.SocketStream`` or ``trio.SSLStream`` (owned from now on).
    :param peer: the remote address, for logs and authentication.
    :param max_frame: the largest payload accepted, in bytes.
    :param max_blob: the largest attachment frame accepted (after its type byte), in bytes
        (default: ``max_frame``); one arrives as a :class:`~schedd.protocol.attachments.Blob`.
    :param hub: a running :class:`~schedd.transport.readiness.ReadinessHub`: a plain socket is then
        read by the hub's task when input arrives while someone waits in ``receive``, and the
        frames go first to the consumer set with :meth:`set_inline` (the daemon's node
        connections: docs/decisions/0007-readiness-hub.md). Without it, or over TLS,
        ``receive`` waits with trio (:func:`read_when_ready`).
    """

    __slots__ = ("_broken", "_decoder", "_end", "_rest", "_send_lock")

    def __init__(self, stream: trio.abc.Stream, peer: str, max_frame: int,
                 hub: ReadinessHub | None = None, *, max_blob: int | None = None) -> None:
        self._stream = stream
        # A plain socket is read with wait_readable + os.read (see read_when_ready).
        self._socket = stream.socket if isinstance(stream, trio.SocketStream) else None
        self.peer = peer
        self._decoder = FrameDecoder(max_frame, max_blob)
        self._items: deque[bytes] = deque()
        self._send_lock = trio.Lock()
        self._rest = b""
        self._broken: tuple[str, str] | None = None
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
        """Send ``data`` as one frame (an attachment frame for a
        :class:`~schedd.protocol.attachments.Blob`), whole even when several tasks send at once.

        Over a plain socket with no other send in progress the frame goes out in one
        non-blocking write (what it leaves goes through the stream, still in order), without
        trio's stream machinery per message (docs/decisions/0013-write-by-poster.md). Either
        way ``send`` is a checkpoint.
        """
        await self._send_frames(encode_frame(data))

    async def send_many(self, messages: list[bytes]) -> None:
        """Send each of ``messages`` as a frame, all in one write (in order, whole)."""
        await self._send_frames(b"".join([encode_frame(data) for data in messages]))

    async def _send_frames(self, frame: bytes) -> None:
        await send_in_order(self, lambda: frame)

    def write_nowait(self, data: bytes) -> bool:
        """Write ``data`` as one frame now, without waiting, if no other send is in progress:
        True when it is on its way (what a short write left goes out first with the next send:
        see :attr:`write_pending`), False when nothing was written (use :meth:`send`). For the
        daemon, whose sessions post messages from other connections' tasks."""
        return write_message_nowait(self, lambda: encode_frame(data))

    @property
    def write_pending(self) -> bool:
        """Whether a short :meth:`write_nowait` left bytes that wait for the next send
        (``send_many([])`` sends just them)."""
        return bool(self._rest)

    async def aclose(self) -> None:
        """Close gracefully (see :func:`close_stream`); idempotent, never raises."""
        if self._close_once():
            await close_stream(self._stream)
