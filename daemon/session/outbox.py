"""One connection's way out: a bounded queue drained by one sender task, and write-by-poster.

Rules of this module:
  * Messages leave in the order they were posted, through one bounded queue; posting never
    blocks. A peer whose queue overflows is disconnected (``on_overflow``).
  * While the sender task waits with nothing queued, a message is written by its poster when the
    channel can (``write_nowait``); anything else is queued, and from then on everything is, until
    the sender has sent the queue and waits again.
  * A peer that reads array frames (its ``hello`` said ``batch``: :attr:`Outbox.pack`) gets the
    messages queued at once packed into array frames of at most ``pack`` messages and
    PACK_BYTES; a message followed by attachment frames always goes alone. A peer that did not
    say so gets one message per frame, as ever.
"""

from __future__ import annotations

from collections.abc import Callable

import trio

import schedd.protocol as p
from schedd.protocol.attachments import Blob, message_frames
from schedd.transport.channel import Channel, ChannelClosed

OUTBOX_SIZE = 4096
#: Most messages a session writes at once to a channel that can (``send_many``).
SEND_BATCH = 64
#: Most bytes of messages packed into one array frame (far below any peer's frame limit).
PACK_BYTES = 1 << 16


class _Alone(bytes):
    """A frame never packed with others: a message its attachment frames follow, or an array
    frame already."""

    __slots__ = ()


class Outbox:
    """The outgoing side of one connection: :meth:`post` and the sender task :meth:`serve`."""

    def __init__(
        self, channel: Channel, cancel: trio.CancelScope, on_overflow: Callable[[], None]
    ) -> None:
        self.channel = channel
        #: cancelled when the channel closes under the sender (the session's receiving side)
        self._cancel = cancel
        self._on_overflow = on_overflow
        self._out_send, self._out_recv = trio.open_memory_channel[bytes](OUTBOX_SIZE)
        # The sender task waits with nothing queued and nothing of its own in flight: a message
        # posted now may be written at once by the poster (see post)
        self.sender_idle = False
        self._write_nowait: Callable[[bytes], bool] = channel.write_nowait
        #: most messages per array frame for this peer; 0: it reads one message per frame
        self.pack = 0

    def post(self, message: p.Message) -> None:
        """Send a message to this peer, in order; never blocks. Overflow disconnects the peer.

        While the sender task waits with nothing queued, the message is written here and now when
        the channel can (``write_nowait``: a plain socket, no send in progress): no trip through the
        queue and the sender's task, which cost a task switch per message and held an ``assign`` or
        a ``done`` for a scheduling round (docs/decisions/0013-write-by-poster.md). Anything else is
        queued for the sender, and from then on every message is until the sender has sent the queue
        and waits again, so the order holds. What a short write left waits for the sender, woken
        with an empty marker.
        """
        data = p.encode(message)
        if self.sender_idle and self._write_nowait(data):
            if not self.channel.write_pending:
                return
            data = b""  # the marker: the sender sends what the write left
        self.sender_idle = False
        try:
            self._out_send.send_nowait(data)
        except trio.WouldBlock:
            self._on_overflow()
        except trio.ClosedResourceError:
            pass

    def post_many(self, messages: list[p.Message]) -> None:
        """Send several messages, in order, as :meth:`post` sends each; to a peer that reads
        array frames in as few array frames as ``pack`` and PACK_BYTES allow."""
        if self.pack < 2 or len(messages) < 2:
            for message in messages:
                self.post(message)
            return
        for frame in pack_frames([p.encode(message) for message in messages], self.pack):
            self._post_frame(frame)

    def _post_frame(self, data: bytes) -> None:
        """:meth:`post` for a frame already encoded (an array frame: never packed again)."""
        data = _Alone(data)
        if self.sender_idle and self._write_nowait(data):
            if not self.channel.write_pending:
                return
            data = _Alone(b"")  # the marker: the sender sends what the write left
        self.sender_idle = False
        try:
            self._out_send.send_nowait(data)
        except trio.WouldBlock:
            self._on_overflow()
        except trio.ClosedResourceError:
            pass

    def post_attached(self, message: p.Message, data: list[bytes]) -> None:
        """Send a message and the attachment frames it declares, one after the other with
        nothing between them (schedd.protocol.attachments); never blocks."""
        if not data:
            self.post(message)
            return
        self.sender_idle = False  # through the queue: the frames go out together, in order
        try:
            for frame in message_frames(message, data):
                # the message its attachment frames follow is never packed with others
                self._out_send.send_nowait(frame if isinstance(frame, Blob) else _Alone(frame))
        except trio.WouldBlock:
            self._on_overflow()
        except trio.ClosedResourceError:
            pass

    async def serve(self) -> None:
        """Send what is posted and queued, in order: everything queued meanwhile goes to the
        channel's ``send_many`` at once (one write for TCP and WebSocket), up to SEND_BATCH
        messages."""
        send_many = self.channel.send_many
        out = self._out_recv
        while True:
            try:
                # idle only when nothing is queued: awaiting receive() on a queue that holds
                # something still yields once, and a direct write then would overtake it
                data = out.receive_nowait()
            except trio.WouldBlock:
                self.sender_idle = True
                try:
                    data = await out.receive()
                except trio.EndOfChannel:
                    return
                finally:
                    self.sender_idle = False
            except trio.EndOfChannel:
                return
            try:
                batch = [data] if data or isinstance(data, Blob) else []
                while len(batch) < SEND_BATCH:
                    try:
                        more = out.receive_nowait()
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break
                    if more or isinstance(more, Blob):  # an empty attachment is no marker
                        batch.append(more)
                if self.pack > 1 and len(batch) > 1:
                    batch = pack_frames(batch, self.pack)
                await send_many(batch)  # also what a short write of post left, first
            except ChannelClosed:
                self._cancel.cancel()
                return

    def close(self) -> None:
        """Take no more messages: what is queued still goes out; later posts are dropped.

        A closed outbox forgets ``on_overflow``, a bound method of its session, which holds the
        outbox: kept, the pair would be a reference cycle that outlives the connection
        (docs/decisions/0019-closed-connections-leave-no-cycle.md)."""
        self.sender_idle = False
        self._on_overflow = _closed
        self._out_send.close()


def pack_frames(frames: list[bytes], limit: int) -> list[bytes]:
    """``frames`` with each run of plain messages packed into array frames of at most ``limit``
    messages and PACK_BYTES (a message longer than that alone); attachment frames, the message
    they follow and array frames stay as they are, in order."""
    out: list[bytes] = []
    run: list[bytes] = []
    size = 0
    for frame in frames:
        if frame.__class__ is bytes and frame:
            if run and (len(run) >= limit or size + len(frame) > PACK_BYTES):
                out.append(run[0] if len(run) == 1 else p.encode_batch(run))
                run, size = [], 0
            run.append(frame)
            size += len(frame) + 1
            continue
        if run:
            out.append(run[0] if len(run) == 1 else p.encode_batch(run))
            run, size = [], 0
        out.append(frame)
    if run:
        out.append(run[0] if len(run) == 1 else p.encode_batch(run))
    return out


def _closed() -> None:
    """What a closed outbox does on overflow: nothing (later posts are dropped anyway)."""
