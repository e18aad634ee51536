"""The transport layer: channels of whole messages over sockets, shared by the daemon's transports
and the SDK.

Rules of this package:

- A :class:`Channel` moves whole messages; its optional capabilities have defaults in the base
  class, so the daemon calls them directly. :class:`StreamChannel` (length-prefixed frames over
  TCP/TLS) and :class:`WebSocketChannel` (either end of a WebSocket) are the channels of both
  ends: the daemon's transports serve them, the SDK dials them (:mod:`schedd.sdk.connect`).
- Neither channel runs a background task, so a channel holds no nursery and may be closed from
  any task. Given a running :class:`ReadinessHub`, a plain socket is read by the hub's task while
  someone waits in ``receive`` (closing the channel unwatches it).
- A message over ``max_frame`` bytes raises :class:`~schedd.errors.ProtocolError`
  ``E_TOO_LARGE`` from ``receive`` (a TCP frame as soon as its 4-byte header is read, a
  WebSocket message as soon as the part received goes over); a TCP frame of length 0 or a broken
  WebSocket frame (bad opcode, invalid UTF-8 text...) raises ``E_MALFORMED``. After either, every
  later ``receive`` raises the same, while ``send`` still works, so the caller can send an
  ``error`` before closing. The end of the connection, whoever caused it, raises
  :class:`ChannelClosed` (after every message that arrived before it was returned). ``send`` is
  safe from several tasks at once. ``aclose`` is idempotent, never raises, and closes gracefully
  within a bounded time (:func:`close_stream`).
- The sans-io parts (the codec, TCP framing, the WebSocket frame splitter and handshake helpers)
  live in :mod:`schedd.protocol`, free of trio; this package is their trio shell.
- :mod:`schedd.transport.listener` is what the daemon's transports share to listen: settings,
  binding, admission at accept and the per-connection guard.

``__all__`` is what a transport plugin needs: the channels, what builds them (the handshake
helpers, the socket reads, graceful closing, the peer's address) and the listener's settings,
binding and admission (:func:`serve_transport`, :func:`handshake_timed_out`).
"""

from __future__ import annotations

from schedd.protocol.wsframes import HeadSplitter, handshake_events
from schedd.transport.channel import Channel, ChannelClosed
from schedd.transport.listener import (
    LISTEN_DOC,
    TLS_CERT_DOC,
    TLS_KEY_DOC,
    ConnectionHandler,
    check_tls_pair,
    existing_file,
    handshake_timed_out,
    parse_listen,
    serve_transport,
    valid_listen,
)
from schedd.transport.readiness import ReadinessHub
from schedd.transport.sockets import (
    RECEIVE_SIZE,
    close_stream,
    peer_address,
    read_when_ready,
)
from schedd.transport.stream import StreamChannel
from schedd.transport.websocket import WebSocketChannel

__all__ = [
    "LISTEN_DOC",
    "RECEIVE_SIZE",
    "TLS_CERT_DOC",
    "TLS_KEY_DOC",
    "Channel",
    "ChannelClosed",
    "ConnectionHandler",
    "HeadSplitter",
    "ReadinessHub",
    "StreamChannel",
    "WebSocketChannel",
    "check_tls_pair",
    "close_stream",
    "existing_file",
    "handshake_events",
    "handshake_timed_out",
    "parse_listen",
    "peer_address",
    "read_when_ready",
    "serve_transport",
    "valid_listen",
]
