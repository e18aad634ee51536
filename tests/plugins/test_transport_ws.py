from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
import trio
import trio_websocket
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Request,
    TextMessage,
)

from schedd.config import Config, converter
from schedd.errors import ConfigError
from schedd.plugin_manager import PluginManager
from schedd.plugins import transport_ws
from schedd.plugins.transport_ws import WebSocketSettings
from schedd.protocol.wsframes import encode_message
from schedd.sdk.connect import ConnectFailed, open_channel
from schedd.transport.channel import ChannelClosed
from tests.plugins import FakeApp, make_tls_files, start

PLUGIN = "transport_ws"


def app_for(listen: str = "127.0.0.1:0", **kwargs: Any) -> FakeApp:
    options = {key: kwargs.pop(key) for key in ("tls_cert", "tls_key", "path") if key in kwargs}
    return FakeApp({PLUGIN: WebSocketSettings(listen=listen, **options)}, **kwargs)


def address(url: str) -> tuple[str, int]:
    host, _, port = url.split("://", 1)[1].split("/", 1)[0].rpartition(":")
    return host, int(port)


async def raw_websocket(url: str, target: str = "/") -> tuple[trio.SocketStream, WSConnection]:
    """A client socket after the upgrade, for sending frames by hand."""
    stream = await trio.open_tcp_stream(*address(url))
    ws = WSConnection(ConnectionType.CLIENT)
    await stream.send_all(ws.send(Request(host="localhost", target=target)))
    while True:
        ws.receive_data(await stream.receive_some(65536))
        if any(isinstance(event, AcceptConnection) for event in ws.events()):
            return stream, ws


async def read_all(stream: trio.SocketStream) -> bytes:
    data = b""
    while chunk := await stream.receive_some(65536):
        data += chunk
    return data


async def test_round_trip_reports_the_real_port() -> None:
    app = app_for()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            url = await start(nursery, transport_ws.serve, app, PLUGIN)
            assert url.startswith("ws://127.0.0.1:")
            assert address(url)[1] != 0
            assert app.checked == [(PLUGIN, "127.0.0.1")]
            async with open_channel(url) as channel:
                for index in range(50):
                    await channel.send(b'{"n": %d}' % index)
                for index in range(50):
                    # the SDK sends text, so the daemon answers in text
                    assert await channel.receive() == f'{{"n": {index}}}'
                assert channel.peer == url.split("://")[1]
            assert app.received[0] == '{"n": 0}'
            assert app.peers[0].startswith("127.0.0.1:")
            nursery.cancel_scope.cancel()
    assert app.closed and "1000" in app.closed[0]  # the client's close frame was seen


async def test_both_ends_give_wsproto_only_the_handshake_heads_of_a_plain_exchange(
        monkeypatch: pytest.MonkeyPatch) -> None:
    fed: list[tuple[bool, bytes | None]] = []
    real = WSConnection.receive_data

    def spy(self: WSConnection, data: bytes | None) -> None:
        fed.append((self.client, data))
        real(self, data)

    monkeypatch.setattr(WSConnection, "receive_data", spy)
    app = app_for()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            url = await start(nursery, transport_ws.serve, app, PLUGIN)
            async with open_channel(url) as channel:
                for index in range(20):
                    await channel.send(b'{"n": %d}' % index)
                    assert await channel.receive() == f'{{"n": {index}}}'
                # the request's head to the server's wsproto, the response's to the client's
                assert [client for client, _ in fed] == [False, True]
                assert all(data is not None and data.endswith(b"\r\n\r\n") for _, data in fed)
            nursery.cancel_scope.cancel()


async def test_text_and_binary_are_answered_in_kind() -> None:
    app = app_for()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            url = await start(nursery, transport_ws.serve, app, PLUGIN)
            async with trio_websocket.open_websocket_url(url) as ws:
                await ws.send_message(b'{"binary": true}')
                assert await ws.get_message() == b'{"binary": true}'
                await ws.send_message('{"text": "你好"}')
                assert await ws.get_message() == '{"text": "你好"}'
                await ws.ping(b"are you there")  # answered while the daemon is in receive()
            nursery.cancel_scope.cancel()
    assert app.received == [b'{"binary": true}', '{"text": "你好"}']


async def test_fragmented_messages_are_joined() -> None:
    app = app_for()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            url = await start(nursery, transport_ws.serve, app, PLUGIN)
            stream, ws = await raw_websocket(url)
            parts = [b'{"a":', b" 1,", b' "b": 2}']
            data = b"".join(
                ws.send(BytesMessage(data=part, message_finished=index == len(parts) - 1))
                for index, part in enumerate(parts)
            )
            await stream.send_all(data)
            await app.wait_until(lambda: bool(app.received))
            assert app.received == [b'{"a": 1, "b": 2}']
            await stream.aclose()
            nursery.cancel_scope.cancel()


async def test_path_is_configurable_and_other_paths_get_404() -> None:
    app = app_for(path="/nodes")
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            url = await start(nursery, transport_ws.serve, app, PLUGIN)
            assert url.endswith("/nodes")
            async with open_channel(url + "?client=1") as channel:
                await channel.send(b"{}")
                assert await channel.receive() == "{}"
            base = url.removesuffix("/nodes")
            with pytest.raises(ConnectFailed, match=r"refused the WebSocket upgrade \(HTTP 404\)"):
                async with open_channel(base + "/other"):
                    pass
            nursery.cancel_scope.cancel()


async def test_oversize_message_is_too_large() -> None:
    app = app_for(max_frame=1024)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            url = await start(nursery, transport_ws.serve, app, PLUGIN)
            async with open_channel(url) as channel:
                await channel.send(b'"' + b"x" * 2000 + b'"')
                # the session's error reaches the peer, then the close with 1009 (Too Big)
                error = orjson.loads(await channel.receive())
                assert error["code"] == "E_TOO_LARGE"
                with pytest.raises(ChannelClosed, match="1009"):
                    await channel.receive()
            nursery.cancel_scope.cancel()
    assert [exc.code for exc in app.errors] == ["E_TOO_LARGE"]


async def test_text_limit_counts_utf8_bytes() -> None:
    """Text is measured in UTF-8 bytes, as the TCP transport measures frames."""
    app = app_for(max_frame=1024)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            url = await start(nursery, transport_ws.serve, app, PLUGIN)
            async with open_channel(url) as channel:  # sends text
                await channel.send(orjson.dumps("é" * 500))  # 1002 bytes
                assert orjson.loads(await channel.receive()) == "é" * 500
                await channel.send(orjson.dumps("é" * 600))  # 602 characters, 1202 bytes
                error = orjson.loads(await channel.receive())
                assert error["code"] == "E_TOO_LARGE"
                with pytest.raises(ChannelClosed, match="1009"):
                    await channel.receive()
            nursery.cancel_scope.cancel()


async def test_invalid_utf8_text_is_malformed_and_closes_the_connection() -> None:
    app = app_for()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            url = await start(nursery, transport_ws.serve, app, PLUGIN)
            stream, ws = await raw_websocket(url)
            # a masked text frame whose payload is not UTF-8 (encode_message does not check)
            await stream.send_all(encode_message(b"\xff\xfe", text=True, masked=True))
            ws.receive_data(await read_all(stream))
            events = list(ws.events())
            texts = [orjson.loads(e.data) for e in events if isinstance(e, TextMessage)]
            assert [text["code"] for text in texts] == ["E_MALFORMED"]
            [close] = [e for e in events if isinstance(e, CloseConnection)]
            assert close.code == 1007  # Invalid frame payload data
            assert not app.received
            await stream.aclose()
            nursery.cancel_scope.cancel()
    assert [exc.code for exc in app.errors] == ["E_MALFORMED"]


async def test_garbage_and_broken_handlers_do_not_stop_the_listener() -> None:
    app = app_for()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            url = await start(nursery, transport_ws.serve, app, PLUGIN)
            async with open_channel(url) as survivor:
                garbage = await trio.open_tcp_stream(*address(url))
                await garbage.send_all(b"\x16\x03\x01\x02\x00\x01\x00garbage\r\n\r\n")
                assert (await read_all(garbage)).startswith(b"HTTP/1.1 400 ")
                await garbage.aclose()
                plain_http = await trio.open_tcp_stream(*address(url))
                await plain_http.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                assert (await read_all(plain_http)).startswith(b"HTTP/1.1 400 ")
                await plain_http.aclose()
                async with open_channel(url) as crashing:
                    await crashing.send(b"crash")
                    with pytest.raises(ChannelClosed):
                        await crashing.receive()
                await survivor.send(b"still here")
                assert await survivor.receive() == "still here"
            nursery.cancel_scope.cancel()


async def test_handshake_timeout_drops_silent_peers() -> None:
    app = app_for(handshake_timeout=0.2)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            url = await start(nursery, transport_ws.serve, app, PLUGIN)
            silent = await trio.open_tcp_stream(*address(url))
            assert await silent.receive_some(100) == b""
            await silent.aclose()
            assert app.served == 0
            nursery.cancel_scope.cancel()


async def test_wss_round_trip(tmp_path: Path) -> None:
    tls = make_tls_files(tmp_path)
    app = app_for(tls_cert=tls.cert, tls_key=tls.key)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            url = await start(nursery, transport_ws.serve, app, PLUGIN)
            assert url.startswith("wss://127.0.0.1:")
            async with open_channel(url, ssl_context=tls.client_context) as channel:
                await channel.send(b'{"secret": 1}')
                assert await channel.receive() == '{"secret": 1}'
            async with open_channel(url + "?insecure=1") as channel:
                await channel.send(b"{}")
                assert await channel.receive() == "{}"
            nursery.cancel_scope.cancel()


async def test_non_loopback_listen_without_tokens_does_not_start() -> None:
    app = app_for("0.0.0.0:0")
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            with pytest.raises(ConfigError, match="not loopback"):
                await nursery.start(transport_ws.serve, app)
    assert app.urls == {}


async def test_non_loopback_listen_with_tokens_starts() -> None:
    app = app_for("0.0.0.0:0", tokens=True)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            url = await start(nursery, transport_ws.serve, app, PLUGIN)
            assert url.startswith("ws://0.0.0.0:")
            async with open_channel(f"ws://127.0.0.1:{address(url)[1]}") as channel:
                await channel.send(b"{}")
                assert await channel.receive() == "{}"
            nursery.cancel_scope.cancel()


# ---------------------------------------------------------------------------------------------
# Settings
# ---------------------------------------------------------------------------------------------


def load_errors(table: dict[str, Any]) -> list[str]:
    config = Config(plugins=(PLUGIN,), plugin_tables={PLUGIN: table})
    with pytest.raises(ConfigError) as caught:
        PluginManager.load(config, extra={PLUGIN: transport_ws})
    return caught.value.errors


def test_defaults_load_through_the_entry_point() -> None:
    manager = PluginManager.load(Config(plugins=(PLUGIN,)))
    assert manager.plugin_config(PLUGIN) == WebSocketSettings()
    assert WebSocketSettings().listen == "127.0.0.1:8765"
    assert WebSocketSettings().path == "/"


def test_settings_errors_are_reported_together(tmp_path: Path) -> None:
    missing = str(tmp_path / "cert.pem")
    errors = load_errors({"listen": "localhost", "path": "nodes", "tls_cert": missing})
    assert sorted(errors) == [
        "$.plugins.transport_ws.listen: expected host:port, e.g. 127.0.0.1:8765, [::1]:8765 or "
        "0.0.0.0:8765, got 'localhost'",
        "$.plugins.transport_ws.path: expected a URL path starting with /, got 'nodes'",
        f"$.plugins.transport_ws.tls_cert: no such file: {missing!r}",
    ]


def test_tls_key_without_cert(tmp_path: Path) -> None:
    tls = make_tls_files(tmp_path)
    [error] = load_errors({"tls_key": tls.key})
    assert "tls_key is set but tls_cert is not" in error
    settings = converter.structure(
        {"listen": "[::1]:0", "tls_cert": tls.cert, "tls_key": tls.key}, WebSocketSettings
    )
    assert settings.listen == "[::1]:0"


async def test_plain_connections_are_read_only_when_input_is_there(
    socket_reads: list[int],
) -> None:
    # a node's connection is idle between heartbeats: the transport waits for input, then reads
    # (the readiness hub), instead of trying a read that fails first
    app = app_for()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            url = await start(nursery, transport_ws.serve, app, PLUGIN)
            # a client that reads with trio's own receive_some: only the daemon counts
            stream, ws = await raw_websocket(url)

            async def round_trip(index: int) -> None:
                await stream.send_all(ws.send(TextMessage(data=f'{{"n": {index}}}')))
                while True:
                    ws.receive_data(await stream.receive_some(65536))
                    texts = [e.data for e in ws.events() if isinstance(e, TextMessage)]
                    if texts:
                        assert texts == [f'{{"n": {index}}}']
                        return

            await round_trip(0)
            handshake_reads = len(socket_reads)
            assert handshake_reads >= 2  # the upgrade request and the message
            for index in range(1, 4):
                await trio.sleep(0.05)  # idle, as between heartbeats
                await round_trip(index)
            # one read per message: none was tried before the input came
            assert len(socket_reads) == handshake_reads + 3
            await stream.aclose()
            nursery.cancel_scope.cancel()


async def test_an_upgrade_request_split_across_reads() -> None:
    app = app_for()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            url = await start(nursery, transport_ws.serve, app, PLUGIN)
            stream = await trio.open_tcp_stream(*address(url))
            ws = WSConnection(ConnectionType.CLIENT)
            request = ws.send(Request(host="localhost", target="/"))
            for cut in (request[:10], request[10:40], request[40:]):
                await stream.send_all(cut)
                await trio.sleep(0.02)
            events: list[object] = []
            while not events:
                ws.receive_data(await stream.receive_some(65536))
                events.extend(ws.events())
            assert isinstance(events[0], AcceptConnection)
            await stream.send_all(ws.send(TextMessage(data='{"after": 1}')))
            await app.wait_until(lambda: bool(app.received))
            assert app.received == ['{"after": 1}']
            await stream.aclose()
            nursery.cancel_scope.cancel()


async def test_a_peer_that_leaves_during_the_upgrade_is_answered_and_closed() -> None:
    app = app_for()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            url = await start(nursery, transport_ws.serve, app, PLUGIN)
            stream = await trio.open_tcp_stream(*address(url))
            await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\nUpgr")
            await stream.send_eof()
            # half a request, then the end: a Bad Request, and the connection is closed
            assert (await read_all(stream)).startswith(b"HTTP/1.1 400 ")
            await stream.aclose()
            assert app.served == 0
            async with open_channel(url) as channel:  # the listener goes on
                await channel.send(b"{}")
                assert await channel.receive() == "{}"
            nursery.cancel_scope.cancel()


async def test_not_found_has_a_body_that_says_so() -> None:
    app = app_for(path="/nodes")
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            url = await start(nursery, transport_ws.serve, app, PLUGIN)
            stream = await trio.open_tcp_stream(*address(url))
            ws = WSConnection(ConnectionType.CLIENT)
            await stream.send_all(ws.send(Request(host="localhost", target="/elsewhere")))
            reply = await read_all(stream)
            assert reply.startswith(b"HTTP/1.1 404 ")
            assert reply.endswith(b"\r\n\r\nno schedd endpoint here\n")
            await stream.aclose()
            nursery.cancel_scope.cancel()
