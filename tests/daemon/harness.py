"""Run an App in-process over in-memory channels, and speak the protocol to it raw."""

from __future__ import annotations

import socket
import tempfile
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from schedd import protocol as p
from schedd.app import App
from schedd.config import load_config
from schedd.plugin_manager import PluginManager
from schedd.store import open_store
from schedd.transport import StreamChannel, WebSocketChannel
from schedd.transport.channel import Channel, ChannelClosed
from tests.websockets import websocket_channels


class MemoryChannel(Channel):
    """One end of an in-process connection (only the base class's optional capabilities)."""

    def __init__(self, send: trio.MemorySendChannel[bytes], recv: trio.MemoryReceiveChannel[bytes],
                 peer: str) -> None:
        self._send, self._recv, self.peer = send, recv, peer

    async def receive(self) -> bytes | str:
        try:
            return await self._recv.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise ChannelClosed from None

    async def send(self, data: bytes) -> None:
        try:
            await self._send.send(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise ChannelClosed from None

    async def aclose(self) -> None:
        await self._send.aclose()
        await self._recv.aclose()


def channel_pair(peer: str = "127.0.0.1:40000") -> tuple[MemoryChannel, MemoryChannel]:
    a_send, b_recv = trio.open_memory_channel[bytes](1000)
    b_send, a_recv = trio.open_memory_channel[bytes](1000)
    return MemoryChannel(a_send, a_recv, peer), MemoryChannel(b_send, b_recv, "daemon")


class Peer:
    """The far end of a connection, speaking raw protocol messages."""

    def __init__(self, channel: MemoryChannel) -> None:
        self.channel = channel

    async def send(self, message: p.Message | dict[str, Any] | bytes) -> None:
        if isinstance(message, bytes):
            await self.channel.send(message)
        elif isinstance(message, dict):
            import orjson

            await self.channel.send(orjson.dumps(message))
        else:
            await self.channel.send(p.encode(message))

    async def recv(self) -> p.Message:
        with trio.fail_after(5):
            return p.decode(await self.channel.receive())

    async def expect(self, kind: type[Any]) -> Any:
        message = await self.recv()
        assert isinstance(message, kind), f"expected {kind.__name__}, got {message!r}"
        return message

    async def closed(self) -> bool:
        with trio.fail_after(5):
            try:
                while True:
                    await self.channel.receive()
            except ChannelClosed:
                return True


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


class Daemon:
    def __init__(self, app: App, nursery: trio.Nursery) -> None:
        self.app = app
        self.nursery = nursery

    async def connect(self, role: str | None = None, token: str | None = None,
                      peer: str = "127.0.0.1:40000") -> Peer:
        ours, theirs = channel_pair(peer)
        self.nursery.start_soon(self.app.serve_channel, theirs)
        conn = Peer(ours)
        if role is not None:
            await conn.send(p.Hello(role=role, version=p.PROTOCOL_VERSION, token=token))  # type: ignore[arg-type]
            await conn.expect(p.Welcome)
        return conn

    async def node(self, *pools: str, capacity: int = 1, node_id: str | None = None,
                   token: str | None = None) -> tuple[Peer, p.Registered]:
        conn = await self.connect("node", token)
        await conn.send(p.Register(node_id=node_id, capacity=capacity, pools=list(pools)))
        return conn, await conn.expect(p.Registered)


@asynccontextmanager
async def running_daemon(store_url: str = "memory://", toml: str = "",
                         tmp_path: Any = None, **env: str) -> AsyncIterator[Daemon]:
    # always an explicit file, so a ./sched.toml in the working directory is never read
    folder = Path(tmp_path) if tmp_path is not None else Path(tempfile.mkdtemp(prefix="schedd-"))
    path = folder / f"sched-{uuid.uuid4().hex[:6]}.toml"
    path.write_text(toml)
    config = load_config(path, env={"SCHEDD_REDIS__URL": store_url,
                                    "SCHEDD_PLUGINS__ENABLED": "[]", **env})
    plugins = PluginManager.load(config)
    async with open_store(config.redis.url) as store, trio.open_nursery() as nursery:
        app = App(config, plugins, store, config_path=path)
        await nursery.start(app.serve)
        yield Daemon(app, nursery)
        nursery.cancel_scope.cancel()
