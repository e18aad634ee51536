"""WebSocket channels over a socket pair, for tests that need both ends without a listener."""

from __future__ import annotations

import socket

import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, Request

from schedd.transport import WebSocketChannel
from schedd.transport.readiness import ReadinessHub


def open_websockets(leftover: bytes = b"") -> tuple[WSConnection, WSConnection]:
    """A server and a client wsproto connection whose handshake is done (in memory).

    ``leftover``: bytes the client sent right behind its upgrade request (the server holds
    them, as if they came in the request's last read).
    """
    client, server = WSConnection(ConnectionType.CLIENT), WSConnection(ConnectionType.SERVER)
    server.receive_data(client.send(Request(host="localhost", target="/")))
    assert [type(event) for event in server.events()] == [Request]
    client.receive_data(server.send(AcceptConnection()))
    assert [type(event) for event in client.events()] == [AcceptConnection]
    if leftover:
        server.receive_data(leftover)
    return server, client


def websocket_channels(
    hub: ReadinessHub | None = None, max_frame: int = 1 << 20,
) -> tuple[WebSocketChannel, WebSocketChannel]:
    """(server side read through ``hub``, client side) over a connected socket pair."""
    ours, theirs = socket.socketpair()
    server_ws, client_ws = open_websockets()
    server = WebSocketChannel(trio.SocketStream(trio.socket.from_stdlib_socket(ours)), server_ws,
                              "peer", max_frame, hub=hub)
    # the client's wsproto was fed the response's head only, as _websocket_handshake does
    client = WebSocketChannel(trio.SocketStream(trio.socket.from_stdlib_socket(theirs)),
                              client_ws, "daemon", max_frame, leftover=b"")
    return server, client
