"""What a transport gives the daemon for one connection: a channel of whole messages.

Rules of this module: a transport only moves frames. It turns its connection into a
:class:`Channel` (one ``receive`` = one complete message, one ``send`` = one message) and hands
it to ``App.serve_channel``; everything about the protocol (handshake, auth, limits, routing)
happens in the core. Transport failures are mapped to two exceptions, mirroring trio's split:
:class:`ChannelClosed` when the peer or the network ended the connection, and
:class:`~schedd.errors.ProtocolError` (code ``E_TOO_LARGE``/``E_MALFORMED``) when the peer sent
a frame the transport cannot accept (the core replies with an error and closes).

A channel subclasses :class:`Channel` and implements ``peer``, ``receive``, ``send`` and
``aclose``; every other member is an optional capability whose default here is correct for a
channel without it, so the daemon calls them all directly.
"""

from __future__ import annotations

from collections.abc import Callable


class ChannelClosed(Exception):
    """The peer closed the connection or the network broke it."""


class Channel:
    """One connection, message by message."""

    __slots__ = ()

    #: The remote address, for logs and authentication (``ip:port`` or a socket path).
    peer: str
    #: Attachment frames arrive as plain binary messages, told apart from binary JSON messages
    #: only by a declaration awaiting them (WebSocket); otherwise they arrive as
    #: :class:`~schedd.protocol.attachments.Blob` (TCP's typed frames).
    untagged_blobs = False

    async def receive(self) -> bytes | str:
        """The next whole message. Raises :class:`ChannelClosed` or ``ProtocolError``."""
        raise NotImplementedError

    async def send(self, data: bytes) -> None:
        """Send one whole message (JSON bytes). Raises :class:`ChannelClosed`."""
        raise NotImplementedError

    async def aclose(self) -> None:
        """Close the connection (idempotent, never raises)."""
        raise NotImplementedError

    # -- optional capabilities, with the behaviour of a channel that lacks them ----------------

    async def send_many(self, messages: list[bytes]) -> None:
        """Send each of ``messages`` as :meth:`send` would, in order (a channel may write them
        at once: the daemon's sender hands it everything queued meanwhile). Default: one
        :meth:`send` each."""
        for data in messages:
            await self.send(data)

    def receive_nowait(self) -> bytes | str | None:
        """The next message if it has already arrived, else ``None``, without reading or
        yielding. The daemon uses it to find the run of a node's ``accept``s and ``result``s
        already received and record them in one script call. Default: ``None`` (nothing is
        ever at hand)."""
        return None

    def write_nowait(self, data: bytes) -> bool:
        """Write one message at once without waiting, when no send is in progress: ``True``
        when it is on its way (what a short write left waits for the next send, see
        :attr:`write_pending`), ``False`` when nothing was written (use :meth:`send`). A
        session's ``post`` uses it while its sender is idle. Default: ``False``."""
        return False

    @property
    def write_pending(self) -> bool:
        """Whether a short :meth:`write_nowait` left bytes that wait for the next send
        (``send_many([])`` sends just them). Default: ``False``."""
        return False

    def set_inline(self, consume: Callable[[bytes | str], bool] | None) -> None:
        """Offer arriving messages to ``consume`` before ``receive`` returns them (``True``:
        it handled the message, which ``receive`` never returns). Only a channel read by a
        readiness hub calls it. Default: never called."""

    def set_control(self, allow: Callable[[], bool] | None) -> None:
        """Call ``allow()`` for every control frame (WebSocket ping or pong) the peer sends; a
        ping it refuses gets no pong. Default: never called (the channel has no control
        frames)."""
