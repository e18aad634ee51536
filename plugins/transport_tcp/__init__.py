"""The raw TCP transport: length-prefixed JSON frames, optionally inside TLS.

Rules of this plugin:

- Settings ``[plugins.transport_tcp]``: ``listen`` (default ``127.0.0.1:8766``), ``tls_cert`` and
  ``tls_key`` (both or neither); see :mod:`schedd.transport.listener` for what they accept and
  the order of start-up. The URL reported to ``app.listening`` is ``tcp://…`` or ``tls://…``.
- Each accepted connection becomes a :class:`~schedd.transport.StreamChannel` with
  ``app.limits.max_frame``, read when the connection arrives, so a reload applies to new
  connections. With TLS, the TLS handshake must end within ``app.limits.handshake_timeout``
  seconds or the connection is dropped. The channel goes to ``app.serve_channel``, and when that
  returns the connection is closed gracefully (the peer gets what was sent last).
- A plain (not TLS) connection is read by the app's readiness hub (``app.readiness``, see
  :mod:`schedd.transport.readiness`): its task reads the sockets that have input and hands a node's
  unchanged heartbeat to the session inline, without a task switch per message.
- Framing is :mod:`schedd.protocol.framing`'s: a frame header declaring more than
  ``max_frame`` bytes (or zero) makes ``receive`` raise ``ProtocolError`` as soon as the header is
  read; the body is never waited for. An attachment frame (type byte ``0x00``) may carry up to
  ``app.limits.max_attachment`` bytes after its type byte.
"""

from __future__ import annotations

from typing import Final

import attrs
import trio

from schedd.api import (
    LISTEN_DOC,
    TLS_CERT_DOC,
    TLS_KEY_DOC,
    Daemon,
    Service,
    StreamChannel,
    check_tls_pair,
    existing_file,
    handshake_timed_out,
    hookimpl,
    serve_transport,
    setting,
    valid_listen,
)

__all__ = ["PLUGIN_NAME", "TcpSettings", "schedd_plugin_config", "schedd_services", "serve"]

PLUGIN_NAME: Final = "transport_tcp"


@attrs.frozen
class TcpSettings:
    """``[plugins.transport_tcp]``: where the TCP transport listens, and its TLS files."""

    listen: str = setting("127.0.0.1:8766", LISTEN_DOC, valid_listen)
    tls_cert: str = setting("", TLS_CERT_DOC, existing_file)
    tls_key: str = setting("", TLS_KEY_DOC, existing_file)

    def __attrs_post_init__(self) -> None:
        check_tls_pair(self.tls_cert, self.tls_key)


@hookimpl
def schedd_plugin_config() -> type:
    """Declare :class:`TcpSettings`."""
    return TcpSettings


@hookimpl
def schedd_services(app: Daemon) -> list[Service]:
    """The listener."""
    return [serve]


async def _serve_connection(app: Daemon, stream: trio.abc.Stream, peer: str) -> None:
    limits = app.limits
    if isinstance(stream, trio.SSLStream):
        with trio.move_on_after(limits.handshake_timeout) as handshake:
            await stream.do_handshake()
        if handshake.cancelled_caught:
            handshake_timed_out()  # as a missing hello: counts toward the throttle
            return  # the guard closes the stream
    channel = StreamChannel(stream, peer, limits.max_frame, hub=app.readiness,
                            max_blob=limits.max_attachment)
    try:
        await app.serve_channel(channel)
    finally:
        await channel.aclose()


async def serve(
    app: Daemon, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """Listen on ``listen`` and hand every connection to ``app.serve_channel``; never returns."""
    settings: TcpSettings = app.plugin_config(PLUGIN_NAME)
    await serve_transport(
        app,
        PLUGIN_NAME,
        listen=settings.listen,
        tls_cert=settings.tls_cert,
        tls_key=settings.tls_key,
        schemes=("tcp", "tls"),
        https_compatible=False,
        handler=_serve_connection,
        task_status=task_status,
    )
