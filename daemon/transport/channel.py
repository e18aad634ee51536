"""What a transport gives the daemon for one connection: a channel of whole messages.

Rules of this module: a transport only moves frames. It turns its connection into a
:class:`Channel` (one ``receive`` = one complete message, one ``send`` = one message) and hands
it to ``App.serve_channel``; everything about the protocol (handshake, auth, limits, routing)
happens in the core. Transport failures are mapped to two exceptions, mirroring trio's split:
:class:`ChannelClosed` when the peer or the network ended the connection, and
:class:`~schedd.errors.ProtocolError` (code ``E_TOO_LARGE``/``E_MALFORMED``) when the peer sent
a frame the transport cannot accept (the core replies with an error and closes).
"""

from __future__ import annotations

from typing import Protocol


class ChannelClosed(Exception):
    """The peer closed the connection or the network broke it."""


class Channel(Protocol):
    """One connection, message by message.

    A transport's channel may also offer ``receive_nowait() -> bytes | str | None``: the next
    message if it has already arrived, else ``None``, without reading or yielding. The daemon
    uses it, where present, to find a node's ``result`` right behind its ``accept`` and record
    both in one script call (``schedd.session``). And ``write_nowait(data) -> bool`` with
    ``write_pending``: write a message at once without waiting when no send is in progress
    (``False``: nothing was written), keeping what a short write left for the next send; a
    session's ``post`` uses it while its sender is idle. The channels of ``schedd.sdk.connect``
    have both.
    """

    @property
    def peer(self) -> str:
        """The remote address, for logs and authentication (``ip:port`` or a socket path)."""
        ...

    async def receive(self) -> bytes | str:
        """The next whole message. Raises :class:`ChannelClosed` or ``ProtocolError``."""
        ...

    async def send(self, data: bytes) -> None:
        """Send one whole message (JSON bytes). Raises :class:`ChannelClosed`."""
        ...

    async def aclose(self) -> None:
        """Close the connection (idempotent, never raises)."""
        ...
