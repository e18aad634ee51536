"""The WebSocket transport: one JSON message per WebSocket message, optionally over TLS (wss).

Rules of this plugin:

- Settings ``[plugins.transport_ws]``: ``listen`` (default ``127.0.0.1:8765``), ``path``
  (default ``/``), ``tls_cert`` and ``tls_key`` (both or neither); see
  :mod:`schedd.transport.listener` for what they accept and the order of start-up. The URL
  reported to ``app.listening`` is ``ws://…`` or ``wss://…`` (with the path when it is not ``/``).
- The WebSocket protocol is wsproto's: this plugin answers the HTTP upgrade
  (:func:`accept_upgrade`) and serves the connection as a
  :class:`~schedd.transport.WebSocketChannel`, the channel the SDK's clients use, read by
  ``app.readiness`` on a plain connection (docs/architecture.md, "Reading connections").
  The opening handshake (TLS, then the HTTP upgrade) must end within
  ``app.limits.handshake_timeout`` seconds, read when the connection arrives. An upgrade
  request for another path is answered HTTP 404, a request that is not a WebSocket upgrade (or
  not HTTP) HTTP 400; anything that never completes an upgrade is closed at the handshake
  timeout, a failed handshake for the throttle of :mod:`schedd.admission`. The query string is
  ignored. No extension (compression) or subprotocol is accepted.
- The channel is limited to ``app.limits.max_frame`` bytes per message (UTF-8 bytes for text)
  and goes to ``app.serve_channel``. An oversize message or a broken frame (bad UTF-8 text...)
  reaches the session as ``E_TOO_LARGE`` or ``E_MALFORMED``; the session answers with an
  ``error`` and the connection closes with code 1009 (Message Too Big) or the parser's code.
- Text and binary messages are both accepted; the daemon answers in the kind the peer last sent
  (text until the peer's first message). A binary message may be an attachment, up to
  ``app.limits.max_attachment`` bytes (schedd.protocol.attachments).
"""

from __future__ import annotations

import logging
from contextlib import suppress
from typing import Any, Final

import attrs
import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, RejectConnection, RejectData, Request
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from schedd.api import (
    LISTEN_DOC,
    RECEIVE_SIZE,
    TLS_CERT_DOC,
    TLS_KEY_DOC,
    Daemon,
    HeadSplitter,
    InvalidSetting,
    Service,
    WebSocketChannel,
    check_tls_pair,
    close_stream,
    existing_file,
    handshake_events,
    handshake_timed_out,
    hookimpl,
    read_when_ready,
    serve_transport,
    setting,
    valid_listen,
)

__all__ = [
    "PLUGIN_NAME",
    "WebSocketSettings",
    "accept_upgrade",
    "schedd_plugin_config",
    "schedd_services",
    "serve",
]

log = logging.getLogger(__name__)

PLUGIN_NAME: Final = "transport_ws"
NOT_FOUND_BODY: Final = b"no schedd endpoint here\n"


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
def schedd_services(app: Daemon) -> list[Service]:
    """The listener."""
    return [serve]


async def accept_upgrade(
    stream: trio.abc.Stream, path: str, peer: str,
) -> tuple[WSConnection, bytes | None] | None:
    """Read the HTTP upgrade request from ``stream`` and answer it.

    Returns the open connection and the bytes that came after the request (frames a client
    sent early: ``WebSocketChannel(..., leftover=...)`` reads them first), or ``None`` once the
    request was refused (HTTP 404 for another path, 400 for anything that is not a WebSocket
    upgrade) or the peer left without one. The caller bounds the time and closes the stream
    after a refusal.
    """
    ws = WSConnection(ConnectionType.SERVER)
    sock = stream.socket if isinstance(stream, trio.SocketStream) else None
    head = HeadSplitter()
    while True:
        if sock is not None:
            data = await read_when_ready(sock, RECEIVE_SIZE)
        else:
            data = bytes(await stream.receive_some(RECEIVE_SIZE))
        try:  # wsproto gets the request's head only: it would drop what follows
            for event, leftover in handshake_events(ws, head, data):
                if not isinstance(event, Request):
                    continue
                if event.target.partition("?")[0] != path:
                    log.debug("%s: WebSocket upgrade for %r refused: not %r", peer, event.target,
                              path)
                    await stream.send_all(_not_found(ws))
                    return None
                await stream.send_all(ws.send(AcceptConnection()))
                return ws, leftover
        except RemoteProtocolError as exc:
            log.debug("%s: not a WebSocket upgrade: %s", peer, exc)
            if isinstance(exc.event_hint, RejectConnection):
                with suppress(LocalProtocolError):  # too far gone for an HTTP answer
                    await stream.send_all(ws.send(exc.event_hint))  # 400
            return None
        if not data:
            return None


def _not_found(ws: WSConnection) -> bytes:
    headers = [(b"content-type", b"text/plain; charset=utf-8"),
               (b"content-length", str(len(NOT_FOUND_BODY)).encode())]
    return ws.send(RejectConnection(status_code=404, headers=headers, has_body=True)) + ws.send(
        RejectData(data=NOT_FOUND_BODY, body_finished=True))


async def _serve_connection(app: Daemon, path: str, stream: trio.abc.Stream, peer: str) -> None:
    limits = app.limits
    upgraded: tuple[WSConnection, bytes | None] | None = None
    with trio.move_on_after(limits.handshake_timeout) as handshake:
        if isinstance(stream, trio.SSLStream):
            await stream.do_handshake()
        upgraded = await accept_upgrade(stream, path, peer)
    if upgraded is None:
        if handshake.cancelled_caught:
            handshake_timed_out()
        await close_stream(stream)
        return
    ws, leftover = upgraded
    channel = WebSocketChannel(stream, ws, peer, limits.max_frame, hub=app.readiness,
                               leftover=leftover, max_blob=limits.max_attachment)
    try:
        await app.serve_channel(channel)
    finally:
        await channel.aclose()


async def serve(
    app: Daemon, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """Listen on ``listen`` and hand every connection to ``app.serve_channel``; never returns."""
    settings: WebSocketSettings = app.plugin_config(PLUGIN_NAME)
    path = settings.path

    async def handler(app: Daemon, stream: trio.abc.Stream, peer: str) -> None:
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
