"""What opening a channel to a daemon needs whatever the event loop: the URL rules, the
WebSocket upgrade (sans-io, over any byte stream) and :class:`ConnectFailed`.

:mod:`schedd.sdk.connect` states the rules; the trio shell there and the asyncio shell
(:mod:`schedd.sdk.aio_channel`) both open their channels with these.
"""

from __future__ import annotations

import ssl
from collections.abc import Awaitable, Callable
from typing import Final, NoReturn
from urllib.parse import parse_qsl, urlencode, urlsplit

import anyio
import attrs
import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, RejectConnection, RejectData, Request
from wsproto.utilities import RemoteProtocolError

from schedd.protocol.wsframes import HeadSplitter, handshake_events
from schedd.transport.channel import ChannelClosed

__all__ = ["BROKEN", "SUPPORTED_SCHEMES", "ConnectFailed", "Target", "parse_url", "reason",
           "websocket_handshake"]

SUPPORTED_SCHEMES: Final = ("ws", "wss", "tcp", "tls")
_DEFAULT_PORTS: Final = {"ws": 80, "wss": 443}
_TRUE: Final = frozenset({"1", "true", "yes"})
_FALSE: Final = frozenset({"0", "false", "no"})
_REJECT_BODY_SHOWN: Final = 200  # bytes of an HTTP refusal's body quoted in ConnectFailed


BROKEN: Final = (
    trio.BrokenResourceError, trio.ClosedResourceError,
    anyio.BrokenResourceError, anyio.ClosedResourceError,
)
"""What a broken or closed byte stream raises, under trio or anyio."""


class ConnectFailed(ChannelClosed):
    """No channel could be opened: the host is unknown, unreachable, refused or too slow, its
    certificate was not accepted, or it refused the WebSocket upgrade."""


@attrs.frozen
class Target:
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


def parse_url(url: str, ssl_context: ssl.SSLContext | None) -> Target:
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
    return Target(
        url=url,
        scheme=scheme,
        host=host,
        port=port if port is not None else _DEFAULT_PORTS[scheme],
        resource=resource,
        ssl_context=ssl_context if secure else None,
    )


def reason(exc: BaseException) -> str:
    """The most telling message in an exception and its causes."""
    while isinstance(exc, BROKEN) and exc.__cause__ is not None:
        exc = exc.__cause__
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate not accepted: {exc.verify_message}"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def _refused(target: Target, status: int, body: bytes) -> NoReturn:
    text = body[:_REJECT_BODY_SHOWN].decode("utf-8", "replace").strip()
    detail = f": {text}" if text else ""
    raise ConnectFailed(
        f"cannot connect to {target.url}: the server refused the WebSocket upgrade "
        f"(HTTP {status}){detail}"
    )


async def websocket_handshake(
    send: Callable[[bytes], Awaitable[object]], receive: Callable[[], Awaitable[bytes]],
    target: Target,
) -> tuple[WSConnection, bytes | None]:
    """Send the upgrade request with ``send`` and read the answer with ``receive`` (``b""`` at
    the end of the stream): the open connection and the bytes that followed the response (for
    the channel to read first; see handshake_events), or ConnectFailed."""
    ws = WSConnection(ConnectionType.CLIENT)
    status = 0
    body = bytearray()
    head = HeadSplitter()
    try:
        await send(ws.send(Request(host=target.host_header, target=target.resource)))
        while True:
            data = bytes(await receive())
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
    except (*BROKEN, anyio.EndOfStream) as exc:
        raise ConnectFailed(f"cannot connect to {target.url}: {reason(exc)}") from exc


