from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import orjson
import pytest
import trio

from schedd.config import Config, converter
from schedd.errors import ConfigError
from schedd.plugin_manager import PluginManager
from schedd.plugins import transport_tcp
from schedd.plugins.transport_tcp import TcpSettings
from schedd.sdk.connect import ConnectFailed, open_channel
from schedd.transport.channel import ChannelClosed
from tests.plugins import FakeApp, make_tls_files, start

PLUGIN = "transport_tcp"


def app_for(listen: str = "127.0.0.1:0", **kwargs: Any) -> FakeApp:
    tls = {key: kwargs.pop(key) for key in ("tls_cert", "tls_key") if key in kwargs}
    return FakeApp({PLUGIN: TcpSettings(listen=listen, **tls)}, **kwargs)


def address(url: str) -> tuple[str, int]:
    host, _, port = url.split("://", 1)[1].rpartition(":")
    return host, int(port)


async def read_frame(stream: trio.SocketStream) -> bytes | None:
    """One frame's payload, or None at end of stream."""
    buffer = b""
    while True:
        if len(buffer) >= 4:
            (size,) = struct.unpack(">I", buffer[:4])
            if len(buffer) >= 4 + size:
                return buffer[4 : 4 + size]
        data = await stream.receive_some(65536)
        if not data:
            return None
        buffer += data


async def test_round_trip_reports_the_real_port() -> None:
    app = app_for()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            url = await start(nursery, transport_tcp.serve, app, PLUGIN)
            assert url.startswith("tcp://127.0.0.1:")
            assert address(url)[1] != 0
            assert app.checked == [(PLUGIN, "127.0.0.1")]
            async with open_channel(url) as channel:
                for index in range(50):
                    await channel.send(b'{"n": %d}' % index)
                for index in range(50):
                    assert await channel.receive() == b'{"n": %d}' % index
                local = channel.peer
            assert local == url.split("://")[1]
            assert app.peers[0].startswith("127.0.0.1:")
            nursery.cancel_scope.cancel()


async def test_frames_split_and_joined_arbitrarily() -> None:
    app = app_for()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            url = await start(nursery, transport_tcp.serve, app, PLUGIN)
            stream = await trio.open_tcp_stream(*address(url))
            frames = b"".join(struct.pack(">I", 3) + b"%03d" % n for n in range(20))
            for index in range(0, len(frames), 5):  # cuts across headers and bodies
                await stream.send_all(frames[index : index + 5])
            for n in range(20):
                assert await read_frame_exact(stream, 7) == struct.pack(">I", 3) + b"%03d" % n
            await stream.aclose()
            nursery.cancel_scope.cancel()


async def read_frame_exact(stream: trio.SocketStream, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = await stream.receive_some(size - len(data))
        assert chunk
        data += chunk
    return data


async def test_concurrent_sends_are_not_interleaved() -> None:
    app = app_for(max_frame=1 << 20)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            url = await start(nursery, transport_tcp.serve, app, PLUGIN)
            async with open_channel(url) as channel:
                payloads = {bytes([65 + n]) * 200_000 for n in range(5)}
                got: set[bytes | str] = set()

                async def receive_all() -> None:
                    for _ in payloads:
                        got.add(await channel.receive())

                async with trio.open_nursery() as tasks:
                    tasks.start_soon(receive_all)  # echoes must be read while sending
                    for payload in payloads:
                        tasks.start_soon(channel.send, payload)
                assert got == payloads
            nursery.cancel_scope.cancel()


async def test_oversize_header_is_too_large_and_the_error_reaches_the_peer() -> None:
    app = app_for(max_frame=1024)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            url = await start(nursery, transport_tcp.serve, app, PLUGIN)
            stream = await trio.open_tcp_stream(*address(url))
            # the header alone, over max_frame and over what an attachment frame may carry
            # (max_attachment + its type byte: within that, its type byte would decide)
            await stream.send_all(struct.pack(">I", app.limits.max_attachment + 2))
            error = await read_frame(stream)
            assert error is not None
            assert orjson.loads(error)["code"] == "E_TOO_LARGE"
            assert await read_frame(stream) is None  # then the daemon closes
            assert [exc.code for exc in app.errors] == ["E_TOO_LARGE"]
            await stream.aclose()
            nursery.cancel_scope.cancel()


async def test_oversize_body_still_lets_the_error_through() -> None:
    # The peer sends a whole oversize frame: the daemon must not reset the connection on the
    # unread body before the peer has read the error.
    app = app_for(max_frame=1024)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            url = await start(nursery, transport_tcp.serve, app, PLUGIN)
            async with open_channel(url) as channel:
                await channel.send(b"x" * 200_000)
                assert orjson.loads(await channel.receive())["code"] == "E_TOO_LARGE"
                with pytest.raises(ChannelClosed):
                    await channel.receive()
            nursery.cancel_scope.cancel()


async def test_empty_frame_is_malformed() -> None:
    app = app_for()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            url = await start(nursery, transport_tcp.serve, app, PLUGIN)
            stream = await trio.open_tcp_stream(*address(url))
            await stream.send_all(struct.pack(">I", 0))
            error = await read_frame(stream)
            assert error is not None and orjson.loads(error)["code"] == "E_MALFORMED"
            await stream.aclose()
            nursery.cancel_scope.cancel()


async def test_garbage_and_broken_handlers_do_not_stop_the_listener() -> None:
    app = app_for()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            url = await start(nursery, transport_tcp.serve, app, PLUGIN)
            async with open_channel(url) as survivor:
                garbage = await trio.open_tcp_stream(*address(url))
                await garbage.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                assert await read_frame(garbage) is not None  # an error, then the close
                await garbage.aclose()
                cut = await trio.open_tcp_stream(*address(url))
                await cut.send_all(struct.pack(">I", 10) + b"abc")  # then vanish mid-frame
                await cut.aclose()
                async with open_channel(url) as crashing:
                    await crashing.send(b"crash")
                    with pytest.raises(ChannelClosed):
                        await crashing.receive()
                await survivor.send(b"still here")
                assert await survivor.receive() == b"still here"
            async with open_channel(url) as later:
                await later.send(b"new")
                assert await later.receive() == b"new"
            nursery.cancel_scope.cancel()
    assert any("middle of a frame" in reason for reason in app.closed)


async def test_tls_round_trip(tmp_path: Path) -> None:
    tls = make_tls_files(tmp_path)
    app = app_for(tls_cert=tls.cert, tls_key=tls.key)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            url = await start(nursery, transport_tcp.serve, app, PLUGIN)
            assert url.startswith("tls://127.0.0.1:")
            async with open_channel(url, ssl_context=tls.client_context) as channel:
                await channel.send(b'{"secret": 1}')
                assert await channel.receive() == b'{"secret": 1}'
            with pytest.raises(ConnectFailed, match="certificate not accepted"):
                async with open_channel(url):  # the system's trust store knows no test CA
                    pass
            async with open_channel(url + "?insecure=1") as channel:
                await channel.send(b"{}")
                assert await channel.receive() == b"{}"
            nursery.cancel_scope.cancel()


async def test_tls_handshake_timeout_drops_silent_peers(tmp_path: Path) -> None:
    tls = make_tls_files(tmp_path)
    app = app_for(tls_cert=tls.cert, tls_key=tls.key, handshake_timeout=0.2)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            url = await start(nursery, transport_tcp.serve, app, PLUGIN)
            silent = await trio.open_tcp_stream(*address(url))
            assert await silent.receive_some(100) == b""  # closed without a word
            await silent.aclose()
            assert app.served == 0
            nursery.cancel_scope.cancel()


async def test_non_loopback_listen_without_tokens_does_not_start() -> None:
    app = app_for("0.0.0.0:0")
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            with pytest.raises(ConfigError, match="not loopback"):
                await nursery.start(transport_tcp.serve, app)
    assert app.urls == {}


async def test_address_in_use_is_a_config_error() -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            url = await start(nursery, transport_tcp.serve, app_for(), PLUGIN)
            taken = url.split("://")[1]
            with pytest.raises(ConfigError, match=r"\$\.plugins\.transport_tcp\.listen: cannot"):
                await nursery.start(transport_tcp.serve, app_for(taken))
            nursery.cancel_scope.cancel()


# ---------------------------------------------------------------------------------------------
# Settings
# ---------------------------------------------------------------------------------------------


def load_errors(table: dict[str, Any]) -> list[str]:
    config = Config(plugins=(PLUGIN,), plugin_tables={PLUGIN: table})
    with pytest.raises(ConfigError) as caught:
        PluginManager.load(config)  # through the installed entry point
    return caught.value.errors


def test_defaults_load_through_the_entry_point() -> None:
    manager = PluginManager.load(Config(plugins=(PLUGIN,)))
    assert manager.plugin_config(PLUGIN) == TcpSettings()
    assert TcpSettings().listen == "127.0.0.1:8766"


@pytest.mark.parametrize(
    ("listen", "message"),
    [
        ("8766", "expected host:port"),
        (":8766", "expected host:port"),
        ("localhost:http", "port must be a number from 0 to 65535"),
        ("127.0.0.1:65536", "port must be a number from 0 to 65535"),
        ("::1:8766", "IPv6 address in brackets"),
        ("[::g]:8766", "not a bracketed IPv6 address"),
        ("300.1.2.3:8766", "not an IPv4 address"),
        ("bad host:8766", "not a host name or address"),
    ],
)
def test_bad_listen_is_reported_with_its_path(listen: str, message: str) -> None:
    errors = load_errors({"listen": listen})
    assert len(errors) == 1
    assert errors[0].startswith("$.plugins.transport_tcp.listen: ")
    assert message in errors[0]


@pytest.mark.parametrize("listen", ["127.0.0.1:0", "[::1]:8766", "0.0.0.0:1", "db-1.local:9"])
def test_good_listen(listen: str) -> None:
    assert converter.structure({"listen": listen}, TcpSettings).listen == listen


def test_tls_files_are_checked(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.pem")
    errors = load_errors({"tls_cert": missing, "tls_key": missing, "colour": "red"})
    assert f"$.plugins.transport_tcp.tls_cert: no such file: {missing!r}" in errors
    assert f"$.plugins.transport_tcp.tls_key: no such file: {missing!r}" in errors
    assert any(
        line.startswith("$.plugins.transport_tcp.colour: unknown setting") for line in errors
    )


def test_tls_cert_without_key(tmp_path: Path) -> None:
    tls = make_tls_files(tmp_path)
    [error] = load_errors({"tls_cert": tls.cert})
    assert error == (
        "$.plugins.transport_tcp: tls_cert is set but tls_key is not: set both for TLS, or neither"
    )


def test_tls_files_that_do_not_load(tmp_path: Path) -> None:
    tls = make_tls_files(tmp_path)
    [error] = load_errors({"tls_cert": tls.key, "tls_key": tls.cert})  # swapped
    assert "do not load as a certificate and its key" in error
    settings = converter.structure({"tls_cert": tls.cert, "tls_key": tls.key}, TcpSettings)
    assert settings.tls_key == tls.key
