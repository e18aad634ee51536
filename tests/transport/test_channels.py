"""The channels of schedd.transport over real sockets: sending, reading, writes without waiting."""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio
import trio.testing
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, Ping, Pong, Request, TextMessage

from schedd.protocol.framing import encode_frame
from schedd.transport import (
    RECEIVE_SIZE,
    StreamChannel,
    WebSocketChannel,
    read_when_ready,
)
from schedd.transport.channel import Channel, ChannelClosed
from tests.websockets import websocket_channels


def test_websocket_channel_needs_an_open_connection() -> None:
    with pytest.raises(ValueError, match="not open"):
        WebSocketChannel(None, WSConnection(ConnectionType.CLIENT), "peer", 1024)  # type: ignore[arg-type]


async def _tcp_pair() -> tuple[trio.SocketStream, trio.SocketStream]:
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = listener.socket.getsockname()[1]
    client = await trio.open_tcp_stream("127.0.0.1", port)
    server = await listener.accept()
    await listener.aclose()
    return client, server


async def test_stream_channel_reads_frames_then_sees_the_peer_close() -> None:
    ours, theirs = await _tcp_pair()
    channel = StreamChannel(ours, "peer", 1024)
    await theirs.send_all(encode_frame(b"one") + encode_frame(b"two"))
    assert await channel.receive() == b"one"
    assert await channel.receive() == b"two"
    await theirs.aclose()
    with pytest.raises(ChannelClosed, match="closed the connection"):
        await channel.receive()
    await channel.aclose()


async def test_stream_channel_reset_by_the_peer_is_channel_closed() -> None:
    ours, theirs = await _tcp_pair()
    channel = StreamChannel(ours, "peer", 1024)
    # SO_LINGER 0: close() sends a RST, so the read fails with ECONNRESET
    theirs.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    await theirs.aclose()
    with pytest.raises(ChannelClosed, match="lost"):
        await channel.receive()
    await channel.aclose()


async def test_stream_channel_closed_while_a_task_waits_to_read() -> None:
    ours, theirs = await _tcp_pair()
    channel = StreamChannel(ours, "peer", 1024)
    async with trio.open_nursery() as nursery:
        async def read() -> None:
            with pytest.raises(ChannelClosed):
                await channel.receive()
        nursery.start_soon(read)
        await trio.sleep(0.05)
        await channel.aclose()
    await theirs.aclose()


async def test_stream_channel_send_many_writes_whole_frames_in_order() -> None:
    ours, theirs = await _tcp_pair()
    sender, receiver = StreamChannel(ours, "a", 1024), StreamChannel(theirs, "b", 1024)
    await sender.send_many([b"one", b"two", b"three"])
    await sender.send(b"four")
    assert [await receiver.receive() for _ in range(4)] == [b"one", b"two", b"three", b"four"]
    await receiver.aclose()
    await sender.aclose()
    with pytest.raises(ChannelClosed):
        await sender.send_many([b"late"])


async def test_read_when_ready_waits_for_input_instead_of_trying_first(
    socket_reads: list[int],
) -> None:
    ours, theirs = await _tcp_pair()
    async with trio.open_nursery() as nursery:
        got: list[bytes] = []

        async def read() -> None:
            got.append(await read_when_ready(ours.socket, 3))
            got.append(await read_when_ready(ours.socket, RECEIVE_SIZE))

        nursery.start_soon(read)
        await trio.testing.wait_all_tasks_blocked()
        assert got == []
        assert socket_reads == []  # parked in wait_readable: no read tried before input came
        await theirs.send_all(b"hello")
    assert got == [b"hel", b"lo"]
    assert socket_reads == [3, RECEIVE_SIZE]  # one read per call, none tried before input came
    await theirs.aclose()
    assert await read_when_ready(ours.socket, RECEIVE_SIZE) == b""
    await ours.aclose()
    with pytest.raises(trio.ClosedResourceError):
        await read_when_ready(ours.socket, RECEIVE_SIZE)


async def test_read_when_ready_reset_by_the_peer_is_broken() -> None:
    ours, theirs = await _tcp_pair()
    theirs.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    await theirs.aclose()
    with pytest.raises(trio.BrokenResourceError):
        await read_when_ready(ours.socket, RECEIVE_SIZE)
    await ours.aclose()


async def test_stream_channel_sends_a_frame_in_one_write_without_the_stream(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ours, theirs = await _tcp_pair()
    sender, receiver = StreamChannel(ours, "a", 1024), StreamChannel(theirs, "b", 1024)

    async def no_send_all(data: bytes) -> None:
        raise AssertionError("the idle socket took the frame in one write")

    monkeypatch.setattr(ours, "send_all", no_send_all)
    await sender.send(b"one")
    await sender.send_many([b"two", b"three"])
    assert [await receiver.receive() for _ in range(3)] == [b"one", b"two", b"three"]
    await receiver.aclose()
    await sender.aclose()


async def test_stream_channel_write_to_a_reset_connection_is_channel_closed() -> None:
    ours, theirs = await _tcp_pair()
    sender = StreamChannel(ours, "a", 1024)
    theirs.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    await theirs.aclose()
    with pytest.raises(ChannelClosed):
        for _ in range(100):  # the first write may still be accepted; the reset follows
            await sender.send(b"x" * 1000)
            await trio.sleep(0.01)
    await sender.aclose()


async def _websocket_pair() -> tuple[WebSocketChannel, WebSocketChannel]:
    """Both ends of a WebSocket over a real TCP connection, the upgrade done in memory."""
    ours, theirs = await _tcp_pair()
    client, server = WSConnection(ConnectionType.CLIENT), WSConnection(ConnectionType.SERVER)
    server.receive_data(client.send(Request(host="localhost", target="/")))
    assert any(isinstance(event, Request) for event in server.events())
    client.receive_data(server.send(AcceptConnection()))
    assert any(isinstance(event, AcceptConnection) for event in client.events())
    return (WebSocketChannel(ours, client, "server", 1 << 20),
            WebSocketChannel(theirs, server, "client", 1 << 20))


async def test_websocket_channel_sends_in_one_write_and_reads_when_input_is_there(
    monkeypatch: pytest.MonkeyPatch, socket_reads: list[int],
) -> None:
    client, server = await _websocket_pair()

    async def no_send_all(data: bytes) -> None:
        raise AssertionError("the idle socket took the frame in one write")

    monkeypatch.setattr(client._stream, "send_all", no_send_all)
    for index in range(3):
        await client.send(b'{"n": %d}' % index)
        assert await server.receive() == f'{{"n": {index}}}'
    assert len(socket_reads) == 3  # one read per message on the server side, none tried early
    await server.send(b'{"back": 1}')
    assert await client.receive() == '{"back": 1}'
    monkeypatch.undo()
    await client.aclose()
    await server.aclose()


async def _stream_channel_pair() -> tuple[StreamChannel, StreamChannel]:
    ours, theirs = await _tcp_pair()
    return StreamChannel(ours, "a", 1024), StreamChannel(theirs, "b", 1024)


@pytest.mark.parametrize("make_pair", [_stream_channel_pair, _websocket_pair],
                         ids=["tcp", "websocket"])
@pytest.mark.parametrize("taken", [0, 3, None], ids=["nothing", "part", "would-block"])
async def test_channel_sends_what_one_write_left_before_anything_else(
    monkeypatch: pytest.MonkeyPatch, taken: int | None,
    make_pair: Callable[[], Awaitable[tuple[Channel, Channel]]],
) -> None:
    real_write = os.write
    writes: list[int] = []

    def short_write(fd: int, data: bytes) -> int:
        writes.append(len(data))
        if taken is None:
            raise BlockingIOError
        return real_write(fd, data[:taken]) if taken else 0

    sender, receiver = await make_pair()
    monkeypatch.setattr("schedd.transport.sockets.os.write", short_write)
    async with trio.open_nursery() as nursery:
        # two tasks at once: the second must not get between the parts of the first
        nursery.start_soon(sender.send, b'{"first": "message"}')
        nursery.start_soon(sender.send, b'{"second": "message"}')
    monkeypatch.undo()
    assert writes  # the one write was tried
    received = {await receiver.receive() for _ in range(2)}
    assert {m.encode() if isinstance(m, str) else m for m in received} == {
        b'{"first": "message"}', b'{"second": "message"}'}
    await receiver.aclose()
    await sender.aclose()


async def test_websocket_send_many_writes_whole_messages_in_order_in_one_write(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server, client = websocket_channels()

    async def no_send_all(data: bytes) -> None:
        raise AssertionError("the idle socket took the messages in one write")

    monkeypatch.setattr(server._stream, "send_all", no_send_all)
    await server.send_many([b'{"n": 1}', b'{"n": 2}', b'{"n": 3}'])
    assert [await client.receive() for _ in range(3)] == ['{"n": 1}', '{"n": 2}', '{"n": 3}']
    monkeypatch.undo()
    await client.aclose()
    with pytest.raises(ChannelClosed):
        await server.send_many([b"late"])
    await server.aclose()


async def test_stream_channel_receive_nowait_hands_out_only_what_arrived() -> None:
    sender, receiver = await _stream_channel_pair()
    assert receiver.receive_nowait() is None  # nothing read yet, and it does not read
    await sender.send_many([b"one", b"two"])
    assert await receiver.receive() == b"one"
    assert receiver.receive_nowait() == b"two"
    assert receiver.receive_nowait() is None
    await sender.send(b"three")
    assert await receiver.receive() == b"three"
    await receiver.aclose()
    await sender.aclose()


async def test_websocket_receive_nowait_leaves_a_message_behind_a_control_frame() -> None:
    client, server = await _websocket_pair()
    # one write: a message, a ping, a message, a message
    data = b"".join([client._event_bytes(event) for event in (
        TextMessage('{"n": 1}'), Ping(b"p"), TextMessage('{"n": 2}'), TextMessage('{"n": 3}'))])
    assert client._socket is not None
    assert os.write(client._socket.fileno(), data) == len(data)
    assert await server.receive() == '{"n": 1}'  # the pong went first
    # an answer still owed holds the messages back (receive answers before it returns one, so
    # put one there by hand)
    server._control.append(Pong(b"q"))
    assert server.receive_nowait() is None
    assert await server.receive() == '{"n": 2}'
    assert server.receive_nowait() == '{"n": 3}'
    assert server.receive_nowait() is None
    await server.send(b'{"back": 1}')
    assert await client.receive() == '{"back": 1}'  # behind the two pongs, which it took
    await client.aclose()
    await server.aclose()


@pytest.mark.parametrize("make_pair", [_stream_channel_pair, _websocket_pair],
                         ids=["tcp", "websocket"])
async def test_write_nowait_writes_a_message_at_once_unless_a_send_is_in_progress(
    make_pair: Callable[[], Awaitable[tuple[Any, Any]]],
) -> None:
    sender, receiver = await make_pair()
    assert sender.write_nowait(b'{"n": 1}') and not sender.write_pending
    assert await receiver.receive() in (b'{"n": 1}', '{"n": 1}')
    sender._send_lock.acquire_nowait()  # a send in progress (its rest not yet written)
    assert not sender.write_nowait(b'{"n": 2}')
    sender._send_lock.release()
    await _close_both(sender, receiver)
    assert not sender.write_nowait(b'{"n": 3}')  # closed: the usual send says why
    with pytest.raises(ChannelClosed):
        await sender.send(b'{"n": 3}')


async def _first_then_second(sender: Any, receiver: Any) -> None:
    """The receiver gets the first message whole, then the second; both channels closed."""
    received = [await receiver.receive() for _ in range(2)]
    assert [m.encode() if isinstance(m, str) else m for m in received] == [
        b'{"first": "message"}', b'{"second": "message"}']
    await _close_both(sender, receiver)


@pytest.mark.parametrize("make_pair", [_stream_channel_pair, _websocket_pair],
                         ids=["tcp", "websocket"])
async def test_what_a_short_write_nowait_left_goes_out_before_the_next_send(
    monkeypatch: pytest.MonkeyPatch, make_pair: Callable[[], Awaitable[tuple[Any, Any]]],
) -> None:
    real_write = os.write
    sender, receiver = await make_pair()
    monkeypatch.setattr("schedd.transport.sockets.os.write",
                        lambda fd, data: real_write(fd, data[:3]))
    assert sender.write_nowait(b'{"first": "message"}') and sender.write_pending
    assert not sender.write_nowait(b'{"second": "message"}')  # the rest goes first
    monkeypatch.setattr("schedd.transport.sockets.os.write", _would_block)
    assert not sender.write_nowait(b'{"second": "message"}')
    monkeypatch.undo()
    await sender.send_many([])  # just the rest
    assert not sender.write_pending
    assert sender.write_nowait(b'{"second": "message"}')
    await _first_then_second(sender, receiver)


@pytest.mark.parametrize("make_pair", [_stream_channel_pair, _websocket_pair],
                         ids=["tcp", "websocket"])
async def test_a_send_after_a_short_write_nowait_sends_the_rest_first(
    monkeypatch: pytest.MonkeyPatch, make_pair: Callable[[], Awaitable[tuple[Any, Any]]],
) -> None:
    real_write = os.write
    sender, receiver = await make_pair()
    monkeypatch.setattr("schedd.transport.sockets.os.write",
                        lambda fd, data: real_write(fd, data[:5]))
    assert sender.write_nowait(b'{"first": "message"}') and sender.write_pending
    monkeypatch.undo()
    await sender.send(b'{"second": "message"}')
    assert not sender.write_pending
    await _first_then_second(sender, receiver)


def _would_block(fd: int, data: bytes) -> int:
    raise BlockingIOError


async def _close_both(*channels: Any) -> None:
    async with trio.open_nursery() as nursery:  # each end's close waits for the other's
        for channel in channels:
            nursery.start_soon(channel.aclose)
