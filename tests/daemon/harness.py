"""Run an App in-process over in-memory channels, and speak the protocol to it raw.

The harness itself is public, in :mod:`schedd.testing`; this module adds the connections over a
real socket with each transport's channel.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio

from schedd import testing
from schedd.testing import DaemonHarness, MemoryChannel, Peer, channel_pair
from schedd.transport import StreamChannel, WebSocketChannel
from tests.websockets import websocket_channels

__all__ = ["Daemon", "MemoryChannel", "Peer", "channel_pair", "running_daemon", "wire_channels"]

#: the harness's name in the project's tests
Daemon = DaemonHarness


@asynccontextmanager
async def running_daemon(store_url: str = "memory://", toml: str = "",
                         tmp_path: Any = None, **env: str) -> AsyncIterator[Daemon]:
    """:func:`schedd.testing.running_daemon` with no plugin unless ``SCHEDD_PLUGINS__ENABLED``."""
    async with testing.running_daemon(
        store_url, toml, tmp_path, env={"SCHEDD_PLUGINS__ENABLED": "[]", **env}
    ) as daemon:
        yield daemon


def wire_channels(
    d: Daemon, transport: str = "tcp", peer: str = "127.0.0.1:40001",
) -> tuple[StreamChannel | WebSocketChannel, StreamChannel | WebSocketChannel]:
    """(the daemon's side read through its readiness hub, the peer's side) of a connection
    over a real socket, with the TCP transport's channel or the WebSocket transport's."""
    if transport == "tcp":
        ours, theirs = socket.socketpair()
        return (StreamChannel(trio.SocketStream(trio.socket.from_stdlib_socket(theirs)), peer,
                              1 << 20, hub=d.app.readiness),
                StreamChannel(trio.SocketStream(trio.socket.from_stdlib_socket(ours)), "daemon",
                              1 << 20))
    return websocket_channels(d.app.readiness)
