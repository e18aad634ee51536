"""The WebSocket transport: one JSON message per WebSocket message, optionally over TLS (wss).

Rules of this plugin:

- Settings ``[plugins.transport_ws]``: ``listen`` (default ``127.0.0.1:8765``), ``path``
  (default ``/``), ``tls_cert`` and ``tls_key`` (both or neither); see
  :mod:`schedd.plugins._listener` for what they accept and the order of start-up. The URL
  reported to ``app.listening`` is ``ws://…`` or ``wss://…`` (with the path when it is not ``/``).
- The WebSocket protocol is trio-websocket's (``wrap_server_stream`` on the shared listener). A
  plain TCP connection is given to it as a :class:`~schedd.sdk.connect.ReadyReadStream`, which
  waits for input before reading (a node's connection is idle between heartbeats).
  The opening handshake (TLS, then the HTTP upgrade) must end within
  ``app.limits.handshake_timeout`` seconds, read when the connection arrives; an upgrade request
  for another path is answered HTTP 404; anything else that never completes an upgrade is closed
  at the handshake timeout. The query string is ignored.
- An accepted connection becomes a :class:`TrioWebSocketChannel` limited to
  ``app.limits.max_frame`` and goes to ``app.serve_channel``; an oversize message closes the
  connection with code 1009 (Message Too Big), surfaced to the session as ``E_TOO_LARGE``.
- Text and binary messages are both accepted; the daemon answers in the kind the peer last sent
  (text until the peer's first message).
"""

from __future__ import annotations

from typing import Any, Final

import attrs
import trio
import trio_websocket

from schedd.channel import ChannelClosed
from schedd.config import InvalidSetting, setting
from schedd.errors import ProtocolError
from schedd.hookspecs import App, Service, hookimpl
from schedd.plugins._listener import (
    LISTEN_DOC,
    TLS_CERT_DOC,
    TLS_KEY_DOC,
    check_tls_pair,
    existing_file,
    serve_transport,
    valid_listen,
)
from schedd.protocol import E_TOO_LARGE
from schedd.sdk.connect import ReadyReadStream, close_stream

MESSAGE_TOO_BIG: Final = 1009  # RFC 6455 close code trio-websocket uses for oversize messages
CLOSE_TIMEOUT: Final = 1.0

__all__ = ["PLUGIN_NAME", "WebSocketSettings", "schedd_plugin_config", "schedd_services", "serve"]

PLUGIN_NAME: Final = "transport_ws"


def _valid_path(_instance: Any, _attribute: Any, value: str) -> None:
    if not value.startswith("/") or "?" in value or "#" in value or not value.isprintable():
        raise InvalidSetting(f"expected a URL path starting with /, got {value!r}")


@attrs.frozen
class WebSocketSettings:
    """``[plugins.transport_ws]``: where the WebSocket transport listens, and its TLS files."""

    listen: str = setting("127.0.0.1:8765", LISTEN_DOC, valid_listen)
    path: str = setting("/", "URL path of the endpoint; other paths get HTTP 404", _valid_path)
    tls_cert: str = setting("", TLS_CERT_DOC, existing_file)
    tls_key: str = setting("", TLS_KEY_DOC, existing_file)

    def __attrs_post_init__(self) -> None:
        check_tls_pair(self.tls_cert, self.tls_key)


@hookimpl
def schedd_plugin_config() -> type:
    """Declare :class:`WebSocketSettings`."""
    return WebSocketSettings


@hookimpl
def schedd_services(app: App) -> list[Service]:
    """The listener."""
    return [serve]


class TrioWebSocketChannel:
    """A :class:`~schedd.channel.Channel` over a trio-websocket server connection."""

    def __init__(self, conn: trio_websocket.WebSocketConnection, peer: str) -> None:
        self._conn = conn
        self.peer = peer
        self._binary = False  # answer in the kind the peer last sent: text until it sends bytes

    async def receive(self) -> bytes | str:
        try:
            message = await self._conn.get_message()
        except trio_websocket.ConnectionClosed as exc:
            if exc.reason is not None and exc.reason.code == MESSAGE_TOO_BIG:
                raise ProtocolError(E_TOO_LARGE, "message over the frame limit") from None
            raise ChannelClosed(str(exc.reason)) from None
        self._binary = isinstance(message, bytes | bytearray)
        return message

    async def send(self, data: bytes) -> None:
        try:
            await self._conn.send_message(data if self._binary else data.decode())
        except trio_websocket.ConnectionClosed as exc:
            raise ChannelClosed(str(exc.reason)) from None

    async def aclose(self) -> None:
        with trio.move_on_after(CLOSE_TIMEOUT):
            await self._conn.aclose()


async def _serve_connection(app: App, path: str, stream: trio.abc.Stream, peer: str) -> None:
    limits = app.limits
    async with trio.open_nursery() as nursery:
        conn: trio_websocket.WebSocketConnection | None = None
        with trio.move_on_after(limits.handshake_timeout):
            if isinstance(stream, trio.SSLStream):
                await stream.do_handshake()
            # Read idle connections the cheap way (see ReadyReadStream); not through TLS.
            ws_stream = ReadyReadStream(stream) if isinstance(stream, trio.SocketStream) else stream
            request = await trio_websocket.wrap_server_stream(
                nursery, ws_stream, message_queue_size=64, max_message_size=limits.max_frame)
            if request.path.partition("?")[0] != path:
                await request.reject(404, body=b"no schedd endpoint here")
            else:
                conn = await request.accept()
        if conn is None:
            await close_stream(stream)
            nursery.cancel_scope.cancel()
            return
        channel = TrioWebSocketChannel(conn, peer)
        try:
            await app.serve_channel(channel)
        finally:
            await channel.aclose()
            nursery.cancel_scope.cancel()


async def serve(app: App, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Listen on ``listen`` and hand every connection to ``app.serve_channel``; never returns."""
    settings: WebSocketSettings = app.plugin_config(PLUGIN_NAME)
    path = settings.path

    async def handler(app: App, stream: trio.abc.Stream, peer: str) -> None:
        await _serve_connection(app, path, stream, peer)

    await serve_transport(
        app,
        PLUGIN_NAME,
        listen=settings.listen,
        tls_cert=settings.tls_cert,
        tls_key=settings.tls_key,
        schemes=("ws", "wss"),
        https_compatible=True,
        handler=handler,
        task_status=task_status,
        url_path="" if path == "/" else path,
    )
