"""The readiness hub, and the channels reading through it (schedd.transport.readiness)."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest
import trio
from wsproto import WSConnection
from wsproto.events import BytesMessage, CloseConnection, Event, Ping, Pong, TextMessage

from schedd.errors import ProtocolError
from schedd.protocol.framing import encode_frame
from schedd.transport import RECEIVE_SIZE, StreamChannel, WebSocketChannel
from schedd.transport.channel import ChannelClosed
from schedd.transport.readiness import ReadinessHub
from tests.polling import until
from tests.websockets import open_websockets


@asynccontextmanager
async def running_hub() -> AsyncIterator[ReadinessHub]:
    hub = ReadinessHub()
    async with trio.open_nursery() as nursery:
        await nursery.start(hub.serve)
        yield hub
        nursery.cancel_scope.cancel()
    assert not hub.running and hub.watched == 0


def socket_pair() -> tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    return a, b


async def test_watch_needs_a_running_hub() -> None:
    a, b = socket_pair()
    with a, b, pytest.raises(RuntimeError, match="not running"):
        ReadinessHub().watch(a.fileno(), lambda flags: None)


async def test_one_call_per_arrival_not_while_input_stays_unread() -> None:
    a, b = socket_pair()
    c, d = socket_pair()
    calls = {"a": 0, "c": 0}
    async with running_hub() as hub:
        hub.watch(a.fileno(), lambda flags: calls.__setitem__("a", calls["a"] + 1))
        hub.watch(c.fileno(), lambda flags: calls.__setitem__("c", calls["c"] + 1))
        assert hub.watched == 2
        b.send(b"x")
        await until(lambda: calls["a"] == 1, timeout=5)
        # a's input stays unread; two more rounds of the hub (for c) do not report a again
        for expected in (1, 2):
            d.send(b"y")
            await until(lambda expected=expected: calls["c"] == expected, timeout=5)  # type: ignore[misc]
        assert calls["a"] == 1
        b.send(b"more")  # a new arrival is reported again
        await until(lambda: calls["a"] == 2, timeout=5)
        hub.unwatch(a.fileno())
        hub.unwatch(a.fileno())  # twice: ignored
        hub.unwatch(12345)  # never watched: ignored
        b.send(b"unwatched")
        d.send(b"z")
        await until(lambda: calls["c"] == 3, timeout=5)
        assert calls["a"] == 2 and hub.watched == 1
    for s in (a, b, c, d):
        s.close()


async def test_a_failing_callback_is_logged_and_unwatched_the_others_go_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    a, b = socket_pair()
    c, d = socket_pair()
    seen: list[str] = []

    def broken(flags: int) -> None:
        raise ValueError("boom")

    async with running_hub() as hub:
        hub.watch(a.fileno(), broken)
        hub.watch(c.fileno(), lambda flags: seen.append("c"))
        with caplog.at_level(logging.ERROR, "schedd.transport.readiness"):
            b.send(b"x")
            await until(lambda: hub.watched == 1, timeout=5)
        assert f"readiness callback for descriptor {a.fileno()} failed" in caplog.text
        assert "boom" in caplog.text
        d.send(b"y")
        await until(lambda: seen == ["c"], timeout=5)
    for s in (a, b, c, d):
        s.close()


async def test_unwatch_after_close_is_ignored() -> None:
    a, b = socket_pair()
    async with running_hub() as hub:
        hub.watch(a.fileno(), lambda flags: None)
        fd = a.fileno()
        a.close()
        hub.unwatch(fd)
        assert hub.watched == 0
    b.close()


# -- StreamChannel through the hub ------------------------------------------------------------


@asynccontextmanager
async def hub_channel(max_frame: int = 1 << 20) -> AsyncIterator[
        tuple[ReadinessHub, StreamChannel, trio.SocketStream]]:
    """A channel read through a running hub, and the peer's raw stream."""
    a, b = socket_pair()
    async with running_hub() as hub:
        ours = trio.SocketStream(trio.socket.from_stdlib_socket(a))
        peer = trio.SocketStream(trio.socket.from_stdlib_socket(b))
        channel = StreamChannel(ours, "peer", max_frame, hub=hub)
        assert hub.watched == 1
        try:
            yield hub, channel, peer
        finally:
            async with trio.open_nursery() as closing:  # together: each waits for the other
                closing.start_soon(channel.aclose)
                closing.start_soon(peer.aclose)
        assert hub.watched == 0  # aclose unwatched it


async def test_frames_come_through_the_hub_in_order() -> None:
    async with hub_channel() as (hub, channel, peer):
        with trio.fail_after(5):
            await peer.send_all(b"".join(encode_frame(b"m%d" % n) for n in range(3)))
            assert [await channel.receive() for _ in range(3)] == [b"m0", b"m1", b"m2"]
            # split across arrivals, cut inside the header and the body
            frame = encode_frame(b"split")
            for cut in (frame[:2], frame[2:6], frame[6:]):
                await peer.send_all(cut)
                await trio.sleep(0.01)
            assert await channel.receive() == b"split"
            big = bytes(range(256)) * 2000  # several full reads, with no new arrival between
            assert len(big) > 3 * RECEIVE_SIZE
            async with trio.open_nursery() as nursery:
                nursery.start_soon(peer.send_all, encode_frame(big))
                assert await channel.receive() == big
        assert hub.calls > 0


@asynccontextmanager
async def hub_pair(kind: str) -> AsyncIterator[tuple[
        StreamChannel | WebSocketChannel, trio.SocketStream, Callable[[str], bytes],
        Callable[[str], bytes | str]]]:
    """``hub_channel`` (``"tcp"``) or ``hub_websocket`` (``"ws"``), with how the peer puts a
    text on the wire and what ``receive`` returns for it."""
    if kind == "tcp":
        async with hub_channel() as (_, channel, peer):
            yield channel, peer, lambda text: encode_frame(text.encode()), str.encode
    else:
        async with hub_websocket() as (_, ws_channel, peer, ws):
            yield ws_channel, peer, lambda text: ws.send(TextMessage(data=text)), str


@pytest.mark.parametrize("kind", ["tcp", "ws"])
async def test_the_inline_consumer_takes_messages_in_order_and_refuses_to_receive(
    kind: str,
) -> None:
    offered: list[bytes | str] = []

    async with hub_pair(kind) as (channel, peer, wire, item):
        def consume(message: bytes | str) -> bool:
            offered.append(message)
            if message == item("raise"):
                raise RuntimeError("consumer broke")
            return message.startswith(item("beat"))  # type: ignore[arg-type]

        channel.set_inline(consume)
        with trio.fail_after(5):
            received: list[bytes | str] = []

            async def receive(count: int) -> None:
                for _ in range(count):
                    received.append(await channel.receive())

            async with trio.open_nursery() as nursery:
                nursery.start_soon(receive, 2)
                await trio.sleep(0.01)  # parked in receive: the hub reads
                await peer.send_all(wire("beat1") + wire("beat2"))
                await until(lambda: offered == [item("beat1"), item("beat2")], timeout=5)
                assert received == []
                await peer.send_all(wire("beat3") + wire("other") + wire("beat4"))
            # beat3 consumed; "other" refused, so it and what follows it go to receive
            assert offered == [item(text) for text in ("beat1", "beat2", "beat3", "other")]
            assert received == [item("other"), item("beat4")]
            async with trio.open_nursery() as nursery:
                nursery.start_soon(receive, 1)
                await trio.sleep(0.01)
                await peer.send_all(wire("raise"))
            assert received[-1] == item("raise")  # a consumer that raises does not lose it


async def test_consumer_exception_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    def consume(frame: bytes) -> bool:
        raise RuntimeError("consumer broke")

    async with hub_channel() as (_, channel, peer):
        channel.set_inline(consume)
        with trio.fail_after(5), caplog.at_level(logging.ERROR, "schedd.transport.sockets"):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(peer.send_all, encode_frame(b"x"))
                assert await channel.receive() == b"x"
        assert "inline consumer failed on a message from peer" in caplog.text


async def test_input_that_comes_while_nobody_receives_waits_unread(
    socket_reads: list[int],
) -> None:
    async with hub_channel() as (hub, channel, peer):
        with trio.fail_after(5):
            with trio.move_on_after(0.02):
                await channel.receive()  # parks, then is cancelled: nothing is lost
            tried = len(socket_reads)
            calls = hub.calls
            await peer.send_all(encode_frame(b"later"))
            await until(lambda: hub.calls > calls, timeout=5)
            assert len(socket_reads) == tried  # the hub did not read for nobody
            assert await channel.receive() == b"later"


async def test_end_of_stream_and_bad_frames_through_the_hub() -> None:
    async with hub_channel() as (_, channel, peer):
        with trio.fail_after(5):
            await peer.send_all(encode_frame(b"last") + encode_frame(b"cut")[:5])
            await peer.send_eof()
            assert await channel.receive() == b"last"
            for _ in range(2):  # and again on every later call
                with pytest.raises(ChannelClosed, match="closed the connection in the middle"):
                    await channel.receive()
    async with hub_channel(max_frame=10) as (_, channel, peer):
        with trio.fail_after(5):
            await peer.send_all(encode_frame(b"ok"))
            assert await channel.receive() == b"ok"
            await peer.send_all(encode_frame(b"x" * 11))
            for _ in range(2):
                with pytest.raises(ProtocolError) as info:
                    await channel.receive()
                assert info.value.code == "E_TOO_LARGE"
            await channel.send(b"an error still goes out")


async def test_the_end_that_came_with_the_last_data_is_not_missed() -> None:
    # The hub sees data and the peer's end in one event while nobody receives; the read that
    # follows returns less than asked for, yet the end is still to be read (no new event).
    async with hub_channel() as (hub, channel, peer):
        with trio.fail_after(5):
            # both before the hub can run: one event
            os.write(peer.socket.fileno(), encode_frame(b"cut")[:5])
            peer.socket.shutdown(socket.SHUT_WR)
            await until(lambda: hub.calls > 0, timeout=5)
            with pytest.raises(ChannelClosed, match="in the middle of a frame"):
                await channel.receive()


async def close_while_receiving(hub: ReadinessHub, channel: StreamChannel | WebSocketChannel,
                                ) -> None:
    """Close ``channel`` while a task waits in its ``receive``: that task is woken."""
    async with trio.open_nursery() as nursery:

        async def close_soon() -> None:
            await trio.sleep(0.01)
            await channel.aclose()

        nursery.start_soon(close_soon)
        with pytest.raises(ChannelClosed, match="the channel was closed"):
            await channel.receive()
    assert hub.watched == 0
    with pytest.raises(ChannelClosed):
        await channel.receive()


async def test_closing_wakes_a_waiting_receive() -> None:
    async with hub_channel() as (hub, channel, _):
        with trio.fail_after(5):
            await close_while_receiving(hub, channel)


async def test_without_a_running_hub_the_channel_reads_with_trio() -> None:
    a, b = socket_pair()
    hub = ReadinessHub()
    ours = trio.SocketStream(trio.socket.from_stdlib_socket(a))
    peer = trio.SocketStream(trio.socket.from_stdlib_socket(b))
    channel = StreamChannel(ours, "peer", 1024, hub=hub)
    assert hub.watched == 0
    with trio.fail_after(5):
        await peer.send_all(encode_frame(b"plain"))
        assert await channel.receive() == b"plain"
    await channel.aclose()
    await peer.aclose()


# -- WebSocketChannel through the hub ---------------------------------------------------------


@asynccontextmanager
async def hub_websocket(max_frame: int = 1 << 20) -> AsyncIterator[
        tuple[ReadinessHub, WebSocketChannel, trio.SocketStream, WSConnection]]:
    """A server-side WebSocket channel read through a running hub; the peer's raw stream and
    its wsproto connection (to send frames by hand and see what the channel sent)."""
    a, b = socket_pair()
    server_ws, client_ws = open_websockets()
    async with running_hub() as hub:
        ours = trio.SocketStream(trio.socket.from_stdlib_socket(a))
        peer = trio.SocketStream(trio.socket.from_stdlib_socket(b))
        channel = WebSocketChannel(ours, server_ws, "peer", max_frame, hub=hub)
        assert hub.watched == 1
        try:
            yield hub, channel, peer, client_ws
        finally:
            async with trio.open_nursery() as closing:  # together: each waits for the other
                closing.start_soon(channel.aclose)
                closing.start_soon(peer.aclose)
        assert hub.watched == 0  # aclose unwatched it


async def peer_events(peer: trio.SocketStream, ws: WSConnection, count: int) -> list[Event]:
    """The next ``count`` events the peer's side sees."""
    events: list[Event] = []
    while len(events) < count:
        data = await peer.receive_some(RECEIVE_SIZE)
        ws.receive_data(data or None)
        events.extend(ws.events())
    return events


async def test_websocket_messages_come_through_the_hub_in_order() -> None:
    async with hub_websocket() as (hub, channel, peer, ws):
        with trio.fail_after(5):
            await peer.send_all(b"".join(ws.send(TextMessage(data=f"m{n}")) for n in range(3)))
            assert [await channel.receive() for _ in range(3)] == ["m0", "m1", "m2"]
            # one message in two frames, the first cut in two arrivals; then a binary one
            data = ws.send(TextMessage(data="frag", message_finished=False))
            for cut in (data[:3], data[3:], ws.send(TextMessage(data="ment"))):
                await peer.send_all(cut)
                await trio.sleep(0.01)
            assert await channel.receive() == "fragment"
            await peer.send_all(ws.send(BytesMessage(data=b"\x00\x01")))
            assert await channel.receive() == b"\x00\x01"
            big = bytes(range(256)) * 2000  # several full reads, with no new arrival between
            assert len(big) > 3 * RECEIVE_SIZE
            async with trio.open_nursery() as nursery:
                nursery.start_soon(peer.send_all, ws.send(BytesMessage(data=big)))
                assert await channel.receive() == big
        assert hub.calls > 0


async def test_websocket_pings_are_answered_even_when_every_message_is_taken_inline() -> None:
    async with hub_websocket() as (_, channel, peer, ws):
        channel.set_inline(lambda message: True)
        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(channel.receive)  # never returns: all is taken inline
                await trio.sleep(0.01)
                await peer.send_all(ws.send(TextMessage(data="beat"))
                                    + ws.send(Ping(payload=b"are you there")))
                [pong] = await peer_events(peer, ws, 1)
                assert isinstance(pong, Pong) and pong.payload == b"are you there"
                nursery.cancel_scope.cancel()


async def test_websocket_close_from_the_peer_is_answered_and_ends_receive() -> None:
    async with hub_websocket() as (_, channel, peer, ws):
        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:

                async def receive_until_closed() -> None:
                    assert await channel.receive() == "last"
                    with pytest.raises(ChannelClosed, match="closed the connection: 1001"):
                        await channel.receive()

                nursery.start_soon(receive_until_closed)
                await trio.sleep(0.01)
                await peer.send_all(ws.send(TextMessage(data="last"))
                                    + ws.send(CloseConnection(code=1001, reason="going away")))
                [answer] = await peer_events(peer, ws, 1)
                assert isinstance(answer, CloseConnection) and answer.code == 1001
    async with hub_websocket() as (_, channel, peer, ws):
        with trio.fail_after(5):
            await peer.send_eof()  # no close frame
            for _ in range(2):  # and again on every later call
                with pytest.raises(ChannelClosed, match="without a WebSocket close"):
                    await channel.receive()


async def test_websocket_closing_wakes_a_waiting_receive() -> None:
    async with hub_websocket() as (hub, channel, peer, ws):
        with trio.fail_after(5):
            await close_while_receiving(hub, channel)
            [close] = await peer_events(peer, ws, 1)
            assert isinstance(close, CloseConnection) and close.code == 1000


async def test_websocket_messages_behind_the_handshake_come_first() -> None:
    # the client's first message came in the same read as its upgrade request
    a, b = socket_pair()
    server_ws, client = open_websockets()
    server_ws.receive_data(client.send(TextMessage(data="early")))
    async with running_hub() as hub:
        ours = trio.SocketStream(trio.socket.from_stdlib_socket(a))
        channel = WebSocketChannel(ours, server_ws, "peer", 1024, hub=hub)
        with trio.fail_after(5):
            os.write(b.fileno(), client.send(TextMessage(data="later")))
            assert await channel.receive() == "early"
            assert await channel.receive() == "later"
        await channel.aclose()
    b.close()


@pytest.mark.parametrize("kind", ["tcp", "ws"])
async def test_a_failure_while_taking_input_ends_the_input_instead_of_hanging(
    kind: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with hub_pair(kind) as (channel, peer, wire, _):

        def broken_take(data: bytes) -> None:
            raise RuntimeError("parser bug")

        monkeypatch.setattr(type(channel), "_take", lambda self, data: broken_take(data))
        with trio.fail_after(5), caplog.at_level(logging.ERROR, "schedd.transport.sockets"):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(peer.send_all, wire("anything"))
                with pytest.raises(ChannelClosed, match="reading failed: RuntimeError"):
                    await channel.receive()
        assert "reading from peer failed" in caplog.text
        monkeypatch.undo()
