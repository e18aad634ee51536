"""One conformance suite for every kind of channel (in the spirit of trio's
``check_two_way_stream``): what :class:`schedd.transport.Channel` promises, checked the same way
for each channel the daemon serves and the SDK dials.

Kinds: the stream channel over TCP and the WebSocket channel, each with its daemon side read
with trio or through a running readiness hub. Every check runs in both directions: from the
daemon's side (the WebSocket server) to the SDK's (the client), and back.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing
from wsproto.events import Ping

from schedd.errors import ProtocolError
from schedd.transport import (
    Channel,
    ChannelClosed,
    ReadinessHub,
    StreamChannel,
    WebSocketChannel,
)
from schedd.transport.readiness import available
from tests.websockets import open_websockets

KINDS = ["tcp", "tcp+hub", "websocket", "websocket+hub"]
MAX_FRAME = 4096


def as_bytes(message: bytes | str) -> bytes:
    return message.encode() if isinstance(message, str) else message


async def _tcp_streams() -> tuple[trio.SocketStream, trio.SocketStream]:
    """(accepted, dialled): both ends of a loopback TCP connection."""
    [listener] = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listener.socket.getsockname()[1]
    dialled = await trio.open_tcp_stream("127.0.0.1", port)
    accepted = await listener.accept()
    await listener.aclose()
    return accepted, dialled


@asynccontextmanager
async def channel_pair(kind: str, max_frame: int) -> AsyncIterator[tuple[Channel, Channel]]:
    """(the daemon's side, the SDK's side) of one connection of ``kind``; closed at the end."""
    async with trio.open_nursery() as nursery:
        hub = None
        if kind.endswith("+hub"):
            if not available():
                pytest.skip("no readiness hub on this platform")
            hub = ReadinessHub()
            await nursery.start(hub.serve)
        accepted, dialled = await _tcp_streams()
        daemon: Channel
        sdk: Channel
        if kind.startswith("tcp"):
            daemon = StreamChannel(accepted, "sdk", max_frame, hub=hub)
            sdk = StreamChannel(dialled, "daemon", max_frame)
        else:
            server_ws, client_ws = open_websockets()
            daemon = WebSocketChannel(accepted, server_ws, "sdk", max_frame, hub=hub)
            sdk = WebSocketChannel(dialled, client_ws, "daemon", max_frame, leftover=b"")
        try:
            yield daemon, sdk
        finally:
            async with trio.open_nursery() as closing:  # each waits for the other's close
                closing.start_soon(daemon.aclose)
                closing.start_soon(sdk.aclose)
            nursery.cancel_scope.cancel()


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(params=["daemon-to-sdk", "sdk-to-daemon"])
def direction(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@asynccontextmanager
async def ends(kind: str, direction: str,
               max_frame: int = MAX_FRAME) -> AsyncIterator[tuple[Channel, Channel]]:
    """(writer, reader) of a connection of ``kind``, in ``direction``."""
    with trio.fail_after(10):
        async with channel_pair(kind, max_frame) as (daemon, sdk):
            yield (daemon, sdk) if direction == "daemon-to-sdk" else (sdk, daemon)


async def test_messages_arrive_whole_and_in_order(kind: str, direction: str) -> None:
    messages = [b'{"n": %d, "pad": "%s"}' % (i, b"x" * (i * 37 % 500)) for i in range(200)]
    async with ends(kind, direction) as (writer, reader), trio.open_nursery() as nursery:
        async def send_all() -> None:
            for data in messages:
                await writer.send(data)

        nursery.start_soon(send_all)
        assert [as_bytes(await reader.receive()) for _ in messages] == messages


async def test_a_message_of_max_frame_bytes_arrives_across_reads(kind: str,
                                                                 direction: str) -> None:
    max_frame = 3 * 65536 + 123  # more than one read of the socket
    big = b'"' + b"y" * (max_frame - 2) + b'"'
    async with ends(kind, direction, max_frame) as (writer, reader), \
            trio.open_nursery() as nursery:
        nursery.start_soon(writer.send, big)
        assert as_bytes(await reader.receive()) == big
        await writer.send(b"{}")
        assert as_bytes(await reader.receive()) == b"{}"


async def test_a_message_over_max_frame_is_refused_and_sending_still_works(
    kind: str, direction: str,
) -> None:
    async with ends(kind, direction) as (writer, reader), trio.open_nursery() as nursery:
        await writer.send(b"z" * (MAX_FRAME + 1))
        for _ in range(2):  # and every later receive says the same
            with pytest.raises(ProtocolError) as caught:
                await reader.receive()
            assert caught.value.code == "E_TOO_LARGE"
        await reader.send(b'{"type": "error"}')  # the refusal can be answered
        assert as_bytes(await writer.receive()) == b'{"type": "error"}'
        nursery.start_soon(reader.aclose)
        with pytest.raises(ChannelClosed):
            await writer.receive()
        await writer.aclose()


async def test_closing_one_end(kind: str, direction: str) -> None:
    async with ends(kind, direction) as (closer, peer), trio.open_nursery() as nursery:
        await closer.send(b'{"last": 1}')
        nursery.start_soon(closer.aclose)
        # the peer gets what was sent before the close, then the end
        assert as_bytes(await peer.receive()) == b'{"last": 1}'
        with pytest.raises(ChannelClosed) as caught:
            await peer.receive()
        assert not isinstance(caught.value, ProtocolError)
        await peer.aclose()
        await closer.aclose()  # idempotent
        # the closed end refuses both ways with ChannelClosed, and write_nowait writes nothing
        with pytest.raises(ChannelClosed):
            await closer.send(b"{}")
        with pytest.raises(ChannelClosed):
            await closer.receive()
        assert not closer.write_nowait(b"{}")


async def test_send_many_sends_in_order(kind: str, direction: str) -> None:
    async with ends(kind, direction) as (writer, reader):
        await writer.send_many([b'{"n": 1}', b'{"n": 2}', b'{"n": 3}'])
        await writer.send_many([])  # nothing
        await writer.send(b'{"n": 4}')
        got = [as_bytes(await reader.receive()) for _ in range(4)]
        assert got == [b'{"n": 1}', b'{"n": 2}', b'{"n": 3}', b'{"n": 4}']


async def test_write_nowait_writes_at_once_and_a_short_write_goes_first(
    kind: str, direction: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    real_write = os.write
    async with ends(kind, direction) as (writer, reader):
        assert writer.write_nowait(b'{"n": 1}')
        assert not writer.write_pending
        assert as_bytes(await reader.receive()) == b'{"n": 1}'
        monkeypatch.setattr("schedd.transport.sockets.os.write",
                            lambda fd, data: real_write(fd, data[:4]))
        assert writer.write_nowait(b'{"n": 2}')
        assert writer.write_pending
        assert not writer.write_nowait(b'{"n": 3}')  # nothing overtakes the rest
        monkeypatch.undo()
        await writer.send(b'{"n": 3}')  # the rest first
        assert not writer.write_pending
        assert [as_bytes(await reader.receive()) for _ in range(2)] == [b'{"n": 2}', b'{"n": 3}']


async def test_receive_nowait_hands_out_only_what_arrived(kind: str, direction: str) -> None:
    async with ends(kind, direction) as (writer, reader):
        assert reader.receive_nowait() is None
        await writer.send_many([b'{"n": 1}', b'{"n": 2}', b'{"n": 3}'])  # one write
        assert as_bytes(await reader.receive()) == b'{"n": 1}'
        rest = [reader.receive_nowait(), reader.receive_nowait()]
        assert [as_bytes(m) for m in rest if m is not None] == [b'{"n": 2}', b'{"n": 3}']
        assert reader.receive_nowait() is None


async def test_inline_consumer_takes_what_arrives_while_a_receive_waits(
    kind: str, direction: str,
) -> None:
    consumed: list[bytes] = []

    def consume(message: bytes | str) -> bool:
        if as_bytes(message).startswith(b'{"skip"'):
            consumed.append(as_bytes(message))
            return True
        return False

    async with ends(kind, direction) as (writer, reader), trio.open_nursery() as nursery:
        reader.set_inline(consume)
        received: list[bytes] = []

        async def receive_one() -> None:
            received.append(as_bytes(await reader.receive()))

        nursery.start_soon(receive_one)
        await trio.testing.wait_all_tasks_blocked()
        await writer.send(b'{"skip": 1}')
        await trio.testing.wait_all_tasks_blocked()
        await writer.send(b'{"keep": 1}')
    # only the daemon's side read by a hub offers messages inline
    inline = kind.endswith("+hub") and direction == "sdk-to-daemon"
    assert consumed == ([b'{"skip": 1}'] if inline else [])
    assert received == [b'{"keep": 1}' if inline else b'{"skip": 1}']


async def test_control_frames_are_offered_to_the_control_hook(kind: str,
                                                              direction: str) -> None:
    calls: list[None] = []

    def allow() -> bool:
        calls.append(None)
        return True

    async with ends(kind, direction) as (writer, reader):
        reader.set_control(allow)
        if isinstance(writer, WebSocketChannel):
            await writer._send_event(Ping(b"p"))
        await writer.send(b"{}")
        assert as_bytes(await reader.receive()) == b"{}"
        # a WebSocket ping is offered; a channel without control frames never calls the hook
        assert len(calls) == (1 if isinstance(writer, WebSocketChannel) else 0)


class _Minimal(Channel):
    """A channel of the base class's required members only."""

    def __init__(self) -> None:
        self.peer = "minimal"
        self.sent: list[bytes] = []

    async def receive(self) -> bytes | str:
        raise ChannelClosed

    async def send(self, data: bytes) -> None:
        self.sent.append(data)

    async def aclose(self) -> None:
        pass


async def test_the_base_class_defaults_are_those_of_a_channel_without_the_capability() -> None:
    channel = _Minimal()
    hook: Callable[[bytes | str], bool] = lambda message: True  # noqa: E731
    channel.set_inline(hook)
    channel.set_control(lambda: True)
    assert channel.receive_nowait() is None
    assert channel.write_nowait(b"{}") is False
    assert channel.write_pending is False
    await channel.send_many([b"1", b"2"])
    assert channel.sent == [b"1", b"2"]
