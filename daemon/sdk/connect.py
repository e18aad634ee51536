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
- **Channels** are :mod:`schedd.transport`'s (:class:`~schedd.transport.StreamChannel`,
  :class:`~schedd.transport.WebSocketChannel`), the same the daemon's transports serve: see
  there for messages, limits, errors and closing.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Final, NoReturn
from urllib.parse import parse_qsl, urlencode, urlsplit

import attrs
import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, RejectConnection, RejectData, Request
from wsproto.utilities import RemoteProtocolError

from schedd.protocol.framing import DEFAULT_MAX_FRAME
from schedd.protocol.wsframes import HeadSplitter, handshake_events
from schedd.transport.channel import Channel, ChannelClosed
from schedd.transport.sockets import RECEIVE_SIZE, peer_address
from schedd.transport.stream import StreamChannel
from schedd.transport.websocket import WebSocketChannel

__all__ = ["SUPPORTED_SCHEMES", "ConnectFailed", "open_channel"]

SUPPORTED_SCHEMES: Final = ("ws", "wss", "tcp", "tls")
_DEFAULT_PORTS: Final = {"ws": 80, "wss": 443}
_TRUE: Final = frozenset({"1", "true", "yes"})
_FALSE: Final = frozenset({"0", "false", "no"})
_REJECT_BODY_SHOWN: Final = 200  # bytes of an HTTP refusal's body quoted in ConnectFailed


class ConnectFailed(ChannelClosed):
    """No channel could be opened: the host is unknown, unreachable, refused or too slow, its
    certificate was not accepted, or it refused the WebSocket upgrade."""


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
