from __future__ import annotations

import socket
import ssl
from pathlib import Path

import pytest
import trio
import trio.testing

from schedd.errors import ProtocolError
from schedd.plugins import transport_tcp, transport_ws
from schedd.plugins.transport_tcp import TcpSettings
from schedd.plugins.transport_ws import WebSocketSettings
from schedd.sdk.connect import (
    SUPPORTED_SCHEMES,
    ConnectFailed,
    _parse_url,
    open_channel,
)
from schedd.transport.channel import ChannelClosed
from schedd.transport.sockets import format_address
from tests.plugins import FakeApp, make_tls_files, start


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
