"""A scripted fake daemon for the SDK tests: a trio TCP or WebSocket server speaking the protocol.

Each test plays the daemon's side of a connection message by message (``peer.recv(Submit)``,
``peer.send(Accepted(...))``), so the SDK is tested against docs/protocol.md itself, including
drops, duplicates and misbehaviour a real daemon would not produce on demand. The fake answers
the SDK's ``ping`` by itself (the SDK pings to confirm results and to keep connections alive)
and, unless asked, skips the node's ``heartbeat``.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from functools import partial
from typing import Any, TypeVar

import trio
import trio_websocket

from schedd.protocol import (
    DEFAULT_MAX_FRAME,
    BatchElement,
    Error,
    FrameDecoder,
    Heartbeat,
    Hello,
    Message,
    Ping,
    Pong,
    Welcome,
    decode,
    encode,
    encode_frame,
    is_batch,
    split_batch,
)

M = TypeVar("M", bound=Message)


class FakePeer:
    """One connection accepted by the fake daemon; the test speaks for the daemon.

    The transport is TCP (``stream`` is the socket stream) or WebSocket (``ws``).
    """

    def __init__(
        self,
        stream: trio.SocketStream | None = None,
        ws: trio_websocket.WebSocketConnection | None = None,
    ) -> None:
        self._stream = stream
        self._ws = ws
        self.received: list[Message] = []
        #: how many messages each frame the SDK sent held (1: a frame of one message)
        self.frames: list[int] = []
        self.closed = trio.Event()
        self.pinged = trio.Event()  # set at the SDK's first ping
        # False: pings are not answered here but received by the test (recv(Ping)), which
        # answers them in its own order (the daemon's pong follows everything sent before).
        self.auto_pong = True
        self._inbox_send, self._inbox = trio.open_memory_channel[Message](math.inf)
        self._send_lock = trio.StrictFIFOLock()

    @property
    def stream(self) -> trio.SocketStream:
        assert self._stream is not None, "not a TCP connection"
        return self._stream

    async def send(self, message: Message) -> None:
        await self.send_raw(encode(message))

    async def send_raw(self, payload: bytes) -> None:
        async with self._send_lock:
            if self._ws is not None:
                await self._ws.send_message(payload.decode("utf-8", "replace"))
            else:
                await self.stream.send_all(encode_frame(payload))

    async def recv(self, expect: type[M], *, skip: tuple[type[Message], ...] = (Heartbeat,)) -> M:
        """The next message that is not one of ``skip``; it must be an ``expect``."""
        while True:
            message = await self.recv_any(expect.TYPE)
            if isinstance(message, skip) and not isinstance(message, expect):
                continue
            assert isinstance(message, expect), f"expected {expect.TYPE}, got {message!r}"
            return message

    async def recv_any(self, waiting_for: str = "a message") -> Message:
        """The next message the SDK sent (pings excluded: they are answered)."""
        try:
            return await self._inbox.receive()
        except trio.EndOfChannel:
            raise AssertionError(f"connection closed while waiting for {waiting_for}") from None

    async def handshake(
        self, role: str = "client", *, heartbeat_interval: float = 1.0, principal: str = "app",
        max_batch: int = 0,
    ) -> Hello:
        hello = await self.recv(Hello)
        assert hello.role == role
        assert hello.version == 1
        await self.send(
            Welcome(
                instance="fake-a",
                version=1,
                heartbeat_interval=heartbeat_interval,
                principal=principal,
                max_batch=max_batch,
                ref=hello.ref,
            )
        )
        return hello

    async def refuse(self, code: str, message: str = "") -> None:
        """Refuse the handshake with ``code`` and close, as the daemon does."""
        hello = await self.recv(Hello)
        await self.send(Error(code=code, message=message, ref=hello.ref))
        await self.close()

    async def close(self) -> None:
        if self._ws is not None:
            await self._ws.aclose()
        else:
            await self.stream.aclose()

    async def read_loop(self) -> None:
        try:
            async for payload in self._payloads():
                if is_batch(payload):  # an array frame: its messages in order
                    items = split_batch(payload, 1 << 16)
                    self.frames.append(len(items))
                    for item in items:
                        assert isinstance(item, BatchElement)
                        self._take(decode(item.data))
                    continue
                self.frames.append(1)
                if not await self._take_one(decode(payload)):
                    return
        finally:
            self._inbox_send.close()
            self.closed.set()

    def _take(self, message: Message) -> None:
        self.received.append(message)
        self._inbox_send.send_nowait(message)

    async def _take_one(self, message: Message) -> bool:
        """One message of its own frame; False when the connection is gone."""
        self.received.append(message)
        if isinstance(message, Ping) and self.auto_pong:
            self.pinged.set()
            try:
                await self.send(Pong(ref=message.ref))
            except (
                trio.BrokenResourceError,
                trio.ClosedResourceError,
                trio_websocket.ConnectionClosed,
            ):
                return False
            return True
        self._inbox_send.send_nowait(message)
        return True

    async def _payloads(self) -> AsyncIterator[bytes | str]:
        if self._ws is not None:
            while True:
                try:
                    yield await self._ws.get_message()
                except trio_websocket.ConnectionClosed:
                    return
        decoder = FrameDecoder(DEFAULT_MAX_FRAME)
        while True:
            try:
                data = await self.stream.receive_some(65536)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return
            if not data:
                return
            for frame in decoder.feed(data):
                yield frame


class FakeDaemon:
    """Accepts connections on loopback; :meth:`accept` hands each to the test.

    ``websocket=False``: raw TCP (``tcp://``); ``True``: WebSocket (``ws://``).
    """

    def __init__(self, websocket: bool = False) -> None:
        self.websocket = websocket
        self.port = 0
        self.peers: list[FakePeer] = []
        self._send, self._receive = trio.open_memory_channel[FakePeer](math.inf)

    @property
    def connections(self) -> int:
        return len(self.peers)

    @property
    def url(self) -> str:
        if self.websocket:
            return f"ws://127.0.0.1:{self.port}/"
        return f"tcp://127.0.0.1:{self.port}"

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        if self.websocket:
            async with trio.open_nursery() as nursery:
                server = await nursery.start(
                    partial(trio_websocket.serve_websocket, self._handle_ws, "127.0.0.1", 0, None)
                )
                self.port = server.port
                task_status.started()
            return
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, stream: trio.SocketStream) -> None:
        await self._run(FakePeer(stream=stream))

    async def _handle_ws(self, request: trio_websocket.WebSocketRequest) -> None:
        await self._run(FakePeer(ws=await request.accept()))

    async def _run(self, peer: FakePeer) -> None:
        self.peers.append(peer)
        self._send.send_nowait(peer)
        await peer.read_loop()

    async def accept(self) -> FakePeer:
        return await self._receive.receive()


async def start_fake_daemon(nursery: trio.Nursery, *, websocket: bool = False) -> FakeDaemon:
    daemon = FakeDaemon(websocket)
    await nursery.start(daemon.serve)
    return daemon


def closed_port_url() -> str:
    """A tcp:// URL nobody listens on (connection refused)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"tcp://127.0.0.1:{port}"


def fields(message: Message) -> dict[str, Any]:
    """A message's fields without ``ref`` (generated by the SDK), for comparisons."""
    import attrs

    result = attrs.asdict(message, recurse=False)
    result.pop("ref", None)
    return result
