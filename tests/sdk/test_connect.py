from __future__ import annotations

import os
import socket
import ssl
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, Ping, Pong, Request, TextMessage

from schedd.channel import Channel, ChannelClosed
from schedd.errors import ProtocolError
from schedd.plugins import transport_tcp, transport_ws
from schedd.plugins.transport_tcp import TcpSettings
from schedd.plugins.transport_ws import WebSocketSettings
from schedd.protocol.framing import encode_frame
from schedd.sdk.connect import (
    RECEIVE_SIZE,
    SUPPORTED_SCHEMES,
    ConnectFailed,
    StreamChannel,
    WebSocketChannel,
    _parse_url,
    format_address,
    open_channel,
    read_when_ready,
)
from tests.plugins import FakeApp, make_tls_files, start
from tests.websockets import websocket_channels


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def transports(max_frame: int = 4096) -> FakeApp:
    return FakeApp(
        {
            "transport_ws": WebSocketSettings(listen="127.0.0.1:0"),
            "transport_tcp": TcpSettings(listen="127.0.0.1:0"),
        },
        max_frame=max_frame,
    )


# ---------------------------------------------------------------------------------------------
# URLs
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://localhost:8765", "unsupported URL scheme in 'http://localhost:8765'; supported: "
         "ws://, wss://, tcp://, tls://"),
        ("localhost:8765", "unsupported URL scheme"),
        ("tcp://localhost", "needs a port: tcp://host:port"),
        ("tls://localhost:1/path", "a tls:// URL has no path or query"),
        ("tcp://:8766", "names no host"),
        ("tcp://localhost:99999", "invalid URL"),
        ("ws://localhost?insecure=1", "insecure=1 applies to wss:// and tls:// only"),
        ("wss://localhost?insecure=perhaps", "insecure must be 1 or 0"),
    ],
)  # fmt: skip
async def test_bad_urls_are_value_errors(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("?", r"\?").replace("(", r"\(")):
        async with open_channel(url):
            pass


def test_supported_schemes() -> None:
    assert SUPPORTED_SCHEMES == ("ws", "wss", "tcp", "tls")


def test_url_parts() -> None:
    ws = _parse_url("ws://example.org/nodes?x=1&insecure=0", None)
    assert (ws.host, ws.port, ws.resource, ws.host_header) == (
        "example.org",
        80,
        "/nodes?x=1",
        "example.org",
    )
    wss = _parse_url("wss://[::1]:8443?insecure=1", None)
    assert (wss.host, wss.port, wss.resource, wss.host_header) == ("::1", 8443, "/", "[::1]:8443")
    assert wss.ssl_context is not None and wss.ssl_context.verify_mode == ssl.CERT_NONE
    tls = _parse_url("TLS://db.local:9/", None)
    assert tls.scheme == "tls" and tls.ssl_context is not None
    assert tls.ssl_context.verify_mode == ssl.CERT_REQUIRED and tls.ssl_context.check_hostname
    assert _parse_url("tcp://127.0.0.1:1", None).ssl_context is None
    context = ssl.create_default_context()
    assert _parse_url("tls://h:1", context).ssl_context is context
    with pytest.raises(ValueError, match="either ssl_context or insecure=1"):
        _parse_url("tls://h:1?insecure=1", context)


def test_format_address() -> None:
    assert format_address(("10.0.0.7", 53122)) == "10.0.0.7:53122"
    assert format_address(("::1", 8765, 0, 0)) == "[::1]:8765"
    assert format_address("/run/schedd.sock") == "/run/schedd.sock"


# ---------------------------------------------------------------------------------------------
# Failing to connect
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", SUPPORTED_SCHEMES)
async def test_refused_is_connect_failed(scheme: str) -> None:
    url = f"{scheme}://127.0.0.1:{free_port()}"
    with trio.fail_after(10), pytest.raises(ConnectFailed) as caught:
        async with open_channel(url):
            pass
    assert isinstance(caught.value, ChannelClosed)
    assert str(caught.value).startswith(f"cannot connect to {url}: ")


@pytest.mark.parametrize("scheme", ["ws", "tls"])
async def test_silence_is_connect_failed_at_the_deadline(scheme: str) -> None:
    # A listener that never accepts: the kernel completes the TCP connect, nothing answers.
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    try:
        with trio.fail_after(10), pytest.raises(ConnectFailed, match=r"no answer within 0\.3 s"):
            async with open_channel(f"{scheme}://127.0.0.1:{port}", connect_timeout=0.3):
                pass
    finally:
        for listener in listeners:
            await listener.aclose()


async def test_websocket_to_a_tcp_port_and_tcp_to_a_websocket_port() -> None:
    app = transports()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            ws_url = await start(nursery, transport_ws.serve, app, "transport_ws")
            tcp_url = await start(nursery, transport_tcp.serve, app, "transport_tcp")
            with pytest.raises(ConnectFailed, match="not a WebSocket server"):
                async with open_channel(tcp_url.replace("tcp://", "ws://")):
                    pass
            async with open_channel(ws_url.replace("ws://", "tcp://")) as channel:
                await channel.send(b"{}")
                with pytest.raises(ProtocolError) as caught:  # "HTTP/1.1 400" is no frame
                    await channel.receive()
                assert caught.value.code == "E_TOO_LARGE"
            nursery.cancel_scope.cancel()


async def test_untrusted_certificate_is_connect_failed(tmp_path: Path) -> None:
    tls = make_tls_files(tmp_path)
    app = FakeApp(
        {"transport_ws": WebSocketSettings(listen="127.0.0.1:0", tls_cert=tls.cert,
                                           tls_key=tls.key)}
    )  # fmt: skip
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            url = await start(nursery, transport_ws.serve, app, "transport_ws")
            with pytest.raises(ConnectFailed, match="certificate not accepted"):
                async with open_channel(url):
                    pass
            wrong_name = url.replace("127.0.0.1", "localhost")  # the cert names both: fine
            async with open_channel(wrong_name, ssl_context=tls.client_context) as channel:
                await channel.send(b"{}")
                assert await channel.receive() == "{}"
            nursery.cancel_scope.cancel()


# ---------------------------------------------------------------------------------------------
# Using and closing a channel
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("plugin", ["transport_ws", "transport_tcp"])
async def test_the_callers_exception_comes_out_as_it_was(plugin: str) -> None:
    app = transports()
    serve = transport_ws.serve if plugin == "transport_ws" else transport_tcp.serve
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            url = await start(nursery, serve, app, plugin)
            with pytest.raises(KeyError, match="mine"):
                async with open_channel(url) as channel:
                    await channel.send(b"{}")
                    raise KeyError("mine")
            nursery.cancel_scope.cancel()


@pytest.mark.parametrize("plugin", ["transport_ws", "transport_tcp"])
async def test_closed_channel_raises_channel_closed(plugin: str) -> None:
    app = transports()
    serve = transport_ws.serve if plugin == "transport_ws" else transport_tcp.serve
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            url = await start(nursery, serve, app, plugin)
            async with open_channel(url) as channel:
                await channel.aclose()
                await channel.aclose()  # idempotent
                with pytest.raises(ChannelClosed):
                    await channel.send(b"{}")
                with pytest.raises(ChannelClosed):
                    await channel.receive()
            # the daemon saw the end of the connection, not an error
            await app.wait_until(lambda: bool(app.closed))
            assert app.errors == []
            nursery.cancel_scope.cancel()


@pytest.mark.parametrize("plugin", ["transport_ws", "transport_tcp"])
async def test_daemon_closing_is_channel_closed_after_its_last_message(plugin: str) -> None:
    app = transports(max_frame=1024)
    serve = transport_ws.serve if plugin == "transport_ws" else transport_tcp.serve
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            url = await start(nursery, serve, app, plugin)
            async with open_channel(url) as channel:
                await channel.send(b"x" * 5000)  # the fake daemon answers with an error, closes
                assert b"E_TOO_LARGE" in str(await channel.receive()).encode()
                with pytest.raises(ChannelClosed) as caught:
                    await channel.receive()
                assert not isinstance(caught.value, ConnectFailed)
            nursery.cancel_scope.cancel()


async def test_client_max_frame_applies_to_what_the_daemon_sends() -> None:
    app = transports(max_frame=1 << 20)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            url = await start(nursery, transport_tcp.serve, app, "transport_tcp")
            async with open_channel(url, max_frame=2048) as channel:
                await channel.send(b"y" * 4096)  # echoed back: too large for this client
                with pytest.raises(ProtocolError) as caught:
                    await channel.receive()
                assert caught.value.code == "E_TOO_LARGE"
            nursery.cancel_scope.cancel()


async def test_cancelled_connect_leaves_nothing_open() -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    try:
        with trio.fail_after(10):
            with trio.move_on_after(0.1) as scope:
                async with open_channel(f"ws://127.0.0.1:{port}"):
                    pass
            assert scope.cancelled_caught
    finally:
        for listener in listeners:
            await listener.aclose()


def test_websocket_channel_needs_an_open_connection() -> None:
    with pytest.raises(ValueError, match="not open"):
        WebSocketChannel(None, WSConnection(ConnectionType.CLIENT), "peer", 1024)  # type: ignore[arg-type]


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="this machine has no IPv6 loopback")
@pytest.mark.parametrize("plugin", ["transport_ws", "transport_tcp"])
async def test_ipv6_listen_and_url(plugin: str) -> None:
    settings = {
        "transport_ws": WebSocketSettings(listen="[::1]:0"),
        "transport_tcp": TcpSettings(listen="[::1]:0"),
    }
    app = FakeApp(dict(settings))
    serve = transport_ws.serve if plugin == "transport_ws" else transport_tcp.serve
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            url = await start(nursery, serve, app, plugin)
            assert url.split("://")[1].startswith("[::1]:")
            assert app.checked == [(plugin, "::1")]
            async with open_channel(url) as channel:
                await channel.send(b"{}")
                assert await channel.receive() in (b"{}", "{}")
                assert channel.peer.startswith("[::1]:")
            assert app.peers[0].startswith("[::1]:")
            nursery.cancel_scope.cancel()


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
    monkeypatch.setattr("schedd.sdk.connect.os.write", short_write)
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
    monkeypatch.setattr("schedd.sdk.connect.os.write",
                        lambda fd, data: real_write(fd, data[:3]))
    assert sender.write_nowait(b'{"first": "message"}') and sender.write_pending
    assert not sender.write_nowait(b'{"second": "message"}')  # the rest goes first
    monkeypatch.setattr("schedd.sdk.connect.os.write", _would_block)
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
    monkeypatch.setattr("schedd.sdk.connect.os.write",
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
