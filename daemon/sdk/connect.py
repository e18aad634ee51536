"""Open a :class:`~schedd.transport.Channel` to a daemon from a URL.

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
- **Channels.** Under trio they are :mod:`schedd.transport`'s
  (:class:`~schedd.transport.StreamChannel`, :class:`~schedd.transport.WebSocketChannel`), the
  same the daemon's transports serve, with their fast paths: see there for messages, limits,
  errors and closing. Under asyncio they are :mod:`schedd.sdk.aio_channel`'s, on anyio byte
  streams, with the same framing, limits and errors (they share the sans-io layers). The
  running event loop chooses (``sniffio``), per call.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import sniffio
import trio
from wsproto import WSConnection

from schedd.protocol.attachments import SDK_MAX_ATTACHMENT
from schedd.protocol.framing import DEFAULT_MAX_FRAME
from schedd.sdk._target import (
    BROKEN,
    SUPPORTED_SCHEMES,
    ConnectFailed,
    Target,
    parse_url,
    reason,
    websocket_handshake,
)
from schedd.sdk.aio_channel import open_anyio
from schedd.transport.channel import Channel
from schedd.transport.sockets import RECEIVE_SIZE, peer_address
from schedd.transport.stream import StreamChannel
from schedd.transport.websocket import WebSocketChannel

__all__ = ["SUPPORTED_SCHEMES", "ConnectFailed", "open_channel"]

_parse_url = parse_url


async def _websocket_handshake(
    stream: trio.abc.Stream, target: Target
) -> tuple[WSConnection, bytes | None]:
    """The WebSocket upgrade over a trio stream (see :func:`websocket_handshake`)."""

    async def receive() -> bytes:
        return bytes(await stream.receive_some(RECEIVE_SIZE))

    return await websocket_handshake(stream.send_all, receive, target)


async def _connect_stream(target: Target) -> trio.abc.Stream:
    """TCP connect and, for wss/tls, the TLS handshake."""
    try:
        stream: trio.abc.Stream = await trio.open_tcp_stream(target.host, target.port)
    except OSError as exc:
        raise ConnectFailed(f"cannot connect to {target.url}: {reason(exc)}") from exc
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
    except BROKEN as exc:
        await trio.aclose_forcefully(ssl_stream)
        raise ConnectFailed(f"cannot connect to {target.url}: {reason(exc)}") from exc
    except BaseException:
        await trio.aclose_forcefully(ssl_stream)
        raise
    return ssl_stream


async def _open_trio(target: Target, max_frame: int) -> StreamChannel | WebSocketChannel:
    stream = await _connect_stream(target)
    try:
        peer = peer_address(stream)
        if not target.websocket:
            return StreamChannel(stream, peer, max_frame, max_blob=SDK_MAX_ATTACHMENT)
        ws, leftover = await _websocket_handshake(stream, target)
        return WebSocketChannel(stream, ws, peer, max_frame, leftover=leftover,
                                max_blob=SDK_MAX_ATTACHMENT)
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

    Works under trio and under asyncio (see the module rules, "Channels").

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
    opener = _open_trio if sniffio.current_async_library() == "trio" else open_anyio
    channel: Channel | None = None
    with anyio.move_on_after(connect_timeout):
        channel = await opener(target, max_frame)
    if channel is None:
        raise ConnectFailed(f"cannot connect to {url}: no answer within {connect_timeout:g} s")
    try:
        yield channel
    finally:
        await channel.aclose()
