"""open_channel's failures and limits under asyncio and trio alike, against small servers
written with anyio in the test (so the same server runs on either event loop)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel
import pytest
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    Pong,
    Request,
    TextMessage,
)

from schedd.errors import ProtocolError
from schedd.protocol.framing import encode_frame
from schedd.sdk import ConnectFailed, open_channel
from schedd.sdk.connect import SUPPORTED_SCHEMES
from schedd.transport.channel import ChannelClosed
from tests.sdk import closed_port_url

pytestmark = pytest.mark.anyio

Serve = Callable[[anyio.abc.SocketStream], Awaitable[None]]


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@asynccontextmanager
async def server(serve: Serve) -> AsyncIterator[int]:
    """Serve each connection with ``serve`` on a loopback port (yielded) until the block ends."""
    async with anyio.create_task_group() as tg:
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
        tg.start_soon(listener.serve, serve)
        try:
            yield listener.extra(anyio.abc.SocketAttribute.local_port)
        finally:
            tg.cancel_scope.cancel()


async def upgraded(stream: anyio.abc.SocketStream) -> WSConnection:
    """The server side of a WebSocket upgrade."""
    ws = WSConnection(ConnectionType.SERVER)
    while True:
        ws.receive_data(await stream.receive())
        if any(isinstance(event, Request) for event in ws.events()):
            await stream.send(ws.send(AcceptConnection()))
            return ws


async def silent(stream: anyio.abc.SocketStream) -> None:
    await anyio.sleep_forever()


@pytest.mark.parametrize("scheme", SUPPORTED_SCHEMES)
async def test_refused_is_connect_failed(scheme: str, anyio_backend: str) -> None:
    url = closed_port_url().replace("tcp://", f"{scheme}://")
    why = "Connection refused" if anyio_backend == "asyncio" else "all attempts to connect"
    message = f"cannot connect to {url}: {why}"
    with anyio.fail_after(10), pytest.raises(ConnectFailed, match=message):
        async with open_channel(url):
            pass


@pytest.mark.parametrize("scheme", ["ws", "tls"])
async def test_silence_is_connect_failed_at_the_deadline(scheme: str) -> None:
    with anyio.fail_after(10):
        async with server(silent) as port:
            with pytest.raises(ConnectFailed, match=r"no answer within 0\.3 s"):
                async with open_channel(f"{scheme}://127.0.0.1:{port}", connect_timeout=0.3):
                    pass


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (encode_frame(b"{}"), "not a WebSocket server"),
        (b"HTTP/1.1 403 Forbidden\r\nContent-Length: 4\r\n\r\nnope", r"\(HTTP 403\): nope"),
        (b"", "not a WebSocket server"),  # wsproto: the response ended before its head did
    ],
)
async def test_a_failed_upgrade_is_connect_failed(answer: bytes, message: str) -> None:
    async def serve(stream: anyio.abc.SocketStream) -> None:
        await stream.receive()
        if answer:
            await stream.send(answer)
            await anyio.sleep_forever()
        await stream.aclose()

    with anyio.fail_after(10):
        async with server(serve) as port:
            with pytest.raises(ConnectFailed, match=message):
                async with open_channel(f"ws://127.0.0.1:{port}"):
                    pass


async def test_frames_both_ways_then_the_peer_closes() -> None:
    async def serve(stream: anyio.abc.SocketStream) -> None:
        data = await stream.receive()
        await stream.send(data + data)  # two frames in one write
        await stream.aclose()

    with anyio.fail_after(10):
        async with server(serve) as port, open_channel(f"tcp://127.0.0.1:{port}") as channel:
            await channel.send(b'{"a":1}')
            assert [await channel.receive(), await channel.receive()] == [b'{"a":1}'] * 2
            with pytest.raises(ChannelClosed):
                await channel.receive()
            await channel.aclose()
            await channel.aclose()  # idempotent
            with pytest.raises(ChannelClosed):
                await channel.send(b"{}")


async def test_a_frame_over_the_limit_is_e_too_large() -> None:
    async def serve(stream: anyio.abc.SocketStream) -> None:
        await stream.send(encode_frame(b"x" * 5000))
        await anyio.sleep_forever()

    with anyio.fail_after(10):
        url = "tcp://127.0.0.1:{}"
        async with server(serve) as port, open_channel(url.format(port), max_frame=1024) as channel:
            for _ in range(2):  # and again: the stream cannot be trusted any more
                with pytest.raises(ProtocolError) as caught:
                    await channel.receive()
                assert caught.value.code == "E_TOO_LARGE"


async def test_websocket_messages_pings_limits_and_close() -> None:
    seen: list[Any] = []

    async def serve(stream: anyio.abc.SocketStream) -> None:
        ws = await upgraded(stream)
        await stream.send(
            ws.send(TextMessage(data="small")) + ws.send(Ping(b"hi"))
            + ws.send(BytesMessage(data=b"part", message_finished=False))
            + ws.send(BytesMessage(data=b"s", message_finished=True))
        )
        while True:
            try:
                data = await stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                return
            ws.receive_data(data)
            for event in ws.events():
                seen.append(event)
                if isinstance(event, BytesMessage):  # the client's message: now a large one
                    await stream.send(ws.send(TextMessage(data="y" * 5000)))

    with anyio.fail_after(10):
        async with server(serve) as port:
            async with open_channel(f"ws://127.0.0.1:{port}/", max_frame=1024) as channel:
                assert await channel.receive() == "small"
                assert await channel.receive() == b"parts"  # the ping was answered first
                await channel.send(b"{}")
                with pytest.raises(ProtocolError) as caught:
                    await channel.receive()
                assert caught.value.code == "E_TOO_LARGE"
            while len(seen) < 3:  # the close frame is sent as the block ends
                await anyio.sleep(0.01)
    assert isinstance(seen[0], Pong) and seen[0].payload == b"hi"
    assert isinstance(seen[1], BytesMessage)  # binary in, binary out
    assert seen[2].code == 1009  # the close after E_TOO_LARGE


async def test_an_invalid_websocket_frame_is_e_malformed() -> None:
    async def serve(stream: anyio.abc.SocketStream) -> None:
        await upgraded(stream)
        await stream.send(b"\xf1\x02{}")  # RSV bits set: no extension was negotiated
        await anyio.sleep_forever()

    with anyio.fail_after(10):
        async with server(serve) as port, open_channel(f"ws://127.0.0.1:{port}/") as channel:
            with pytest.raises(ProtocolError) as caught:
                await channel.receive()
            assert caught.value.code == "E_MALFORMED"


async def test_the_peers_close_ends_receive_and_send_and_one_close_answers_it() -> None:
    seen: list[Any] = []

    async def serve(stream: anyio.abc.SocketStream) -> None:
        ws = await upgraded(stream)
        await stream.send(ws.send(CloseConnection(code=1001, reason="bye")))
        with suppress(anyio.EndOfStream, anyio.BrokenResourceError):
            while True:
                ws.receive_data(await stream.receive())
                seen.extend(ws.events())

    with anyio.fail_after(10):
        async with server(serve) as port, open_channel(f"ws://127.0.0.1:{port}/") as channel:
            with pytest.raises(ChannelClosed, match="closed the connection: 1001 \\(bye\\)"):
                await channel.receive()
            with pytest.raises(ChannelClosed):
                await channel.send(b"{}")
            async with anyio.create_task_group() as closing:  # two at once: one close
                closing.start_soon(channel.aclose)
                closing.start_soon(channel.aclose)
            while not seen:
                await anyio.sleep(0.01)
    assert [type(event) for event in seen] == [CloseConnection]  # the reply to the peer's close


@pytest.mark.parametrize("scheme", ["tcp", "ws"])
async def test_concurrent_sends_stay_whole_and_a_send_many_stays_together(scheme: str) -> None:
    """Tasks send at once with no lock of their own (the SDK's Link takes none): every message
    arrives whole, and the frames of one ``send_many`` (a message and its attachments) arrive
    one behind the other."""
    from schedd.protocol.attachments import Blob
    from schedd.protocol.framing import FrameDecoder

    tasks, rounds = 8, 20
    expected = tasks * rounds * 3
    got: list[bytes] = []
    arrived = anyio.Event()

    async def serve(stream: anyio.abc.SocketStream) -> None:
        ws = await upgraded(stream) if scheme == "ws" else None
        decoder = FrameDecoder(1 << 20, 1 << 20)
        while len(got) < expected:
            data = await stream.receive()
            if ws is None:
                got.extend(bytes(frame) for frame in decoder.feed(data))
                continue
            ws.receive_data(data)
            for event in ws.events():
                assert isinstance(event, TextMessage | BytesMessage) and event.message_finished
                got.append(event.data.encode() if isinstance(event.data, str)
                           else bytes(event.data))
        arrived.set()
        await anyio.sleep_forever()

    async def sender(channel: Any, task: int) -> None:
        for n in range(rounds):
            json = b'{"t":%d,"n":%d,"pad":"%s"}' % (task, n, b"x" * (n * 97 % 3000))
            await channel.send_many([json, Blob(b"%d.%d" % (task, n) * 50)])
            await channel.send(b'{"alone":%d,"n":%d}' % (task, n))
            await channel.send_many([])  # nothing to send: nothing arrives
            await anyio.lowlevel.checkpoint()

    with anyio.fail_after(20):
        async with server(serve) as port, open_channel(f"{scheme}://127.0.0.1:{port}") as channel:
            async with anyio.create_task_group() as tg:
                for task in range(tasks):
                    tg.start_soon(sender, channel, task)
            await arrived.wait()
    assert len(got) == expected
    for index, frame in enumerate(got):
        if frame.startswith(b'{"t":'):
            head = frame.split(b',"pad"')[0]
            task, n = (int(part.split(b":")[1]) for part in head[1:].split(b","))
            assert got[index + 1] == b"%d.%d" % (task, n) * 50  # its attachment, right behind
    alone = [frame for frame in got if frame.startswith(b'{"alone"')]
    assert len(alone) == tasks * rounds
    for task in range(tasks):  # one task's sends arrive in the order it made them
        mine = [frame for frame in alone if frame.startswith(b'{"alone":%d,' % task)]
        assert mine == [b'{"alone":%d,"n":%d}' % (task, n) for n in range(rounds)]
