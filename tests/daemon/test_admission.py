"""Connection floods over the real transports: the failed-handshake throttle, the connection
caps, and WebSocket control frames counted toward the message rate (schedd.admission)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
import pytest
import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    CloseConnection,
    Ping,
    Request,
    TextMessage,
)

from schedd import protocol as p
from schedd.admission import MAX_TRACKED, Admission, address_of
from schedd.config import LimitsSection
from schedd.sdk.connect import ConnectFailed, open_channel
from schedd.transport.channel import ChannelClosed
from tests.daemon.harness import Daemon, running_daemon
from tests.polling import until

TRANSPORTS = ["tcp", "ws"]
TOKENS = '[auth]\nclient_tokens = ["good"]\nnode_tokens = ["node"]\n'


@asynccontextmanager
async def daemon_on(tmp_path: Any, limits: str = "", auth: str = TOKENS
                    ) -> AsyncIterator[Daemon]:
    """An in-process daemon serving both transports on free loopback ports."""
    toml = f"{auth}[limits]\n{limits}\n"
    async with running_daemon(toml=toml, tmp_path=tmp_path, **{
            "SCHEDD_PLUGINS__ENABLED": '["transport_ws", "transport_tcp"]',
            "SCHEDD_PLUGINS__TRANSPORT_WS__LISTEN": "127.0.0.1:0",
            "SCHEDD_PLUGINS__TRANSPORT_TCP__LISTEN": "127.0.0.1:0"}) as d:
        yield d


def url_of(d: Daemon, transport: str) -> str:
    return d.app.listeners["transport_ws" if transport == "ws" else "transport_tcp"]


async def hello(url: str, token: str | None = "good") -> dict[str, Any] | None:
    """Connect, say hello as a client; the daemon's answer, or ``None`` when the connection was
    closed (or reset) before any answer."""
    try:
        async with open_channel(url, connect_timeout=5) as channel:
            await channel.send(orjson.dumps({"type": "hello", "role": "client", "version":
                                             p.PROTOCOL_VERSION, "token": token}))
            answer: dict[str, Any] = orjson.loads(await channel.receive())
            return answer
    except (ConnectFailed, ChannelClosed):
        return None


@asynccontextmanager
async def welcomed(url: str) -> AsyncIterator[None]:
    """A client connection past its handshake, held open for the block."""
    async with open_channel(url, connect_timeout=5) as channel:
        await channel.send(orjson.dumps({"type": "hello", "role": "client", "version":
                                         p.PROTOCOL_VERSION, "token": "good"}))
        assert orjson.loads(await channel.receive())["type"] == "welcome"
        yield


# -- the failed-handshake throttle -------------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_wrong_tokens_from_one_address_are_throttled_then_let_in_again(
    tmp_path: Any, transport: str, caplog: pytest.LogCaptureFixture,
) -> None:
    limits = ("max_failed_handshakes = 3\nfailed_handshake_window = 60\n"
              "failed_handshake_backoff = 0.5\n")
    with trio.fail_after(30):
        async with daemon_on(tmp_path, limits) as d:
            url = url_of(d, transport)
            for _ in range(3):
                answer = await hello(url, token="guess")
                assert answer is not None and answer["code"] == p.E_AUTH
            await until(lambda: d.app.admission.pending == 0)
            caplog.clear()
            # backing off: every connection from the address is reset before its handshake,
            # one with the right token too (nothing is known of it before its hello)
            for token in ("guess", "good", "guess"):
                assert await hello(url, token=token) is None
            assert d.app.admission.open == 0
            refusals = [r for r in caplog.records if r.levelno >= logging.WARNING]
            assert not refusals, "no line per refused connection"  # once, when it began
            await trio.sleep(0.6)  # the back-off is over
            answer = await hello(url)
            assert answer is not None and answer["type"] == "welcome"


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_silent_connections_count_as_failed_handshakes(
    tmp_path: Any, transport: str,
) -> None:
    limits = ("max_failed_handshakes = 2\nhandshake_timeout = 0.2\n"
              "failed_handshake_backoff = 60\n")
    with trio.fail_after(30):
        async with daemon_on(tmp_path, limits) as d:
            url = url_of(d, transport)
            host, port = url.split("://")[1].split(":")
            for _ in range(2):  # connect, say nothing; the daemon closes at the timeout
                stream = await trio.open_tcp_stream(host, int(port))
                while await stream.receive_some(4096):
                    pass
                await stream.aclose()
            await until(lambda: d.app.admission.pending == 0)
            assert await hello(url) is None


async def test_a_failed_handshake_is_logged_once_per_back_off(
    caplog: pytest.LogCaptureFixture,
) -> None:
    admission = Admission(lambda: LimitsSection(max_failed_handshakes=2,
                                                failed_handshake_backoff=10))
    with caplog.at_level(logging.INFO, logger="schedd.admission"):
        for _ in range(2):
            ticket = admission.admit("10.0.0.1:1000", 0.0)
            assert ticket is not None
            ticket.handshake_ended(0.0, failed=True)
            ticket.release()
        for n in range(1000):
            assert admission.admit(f"10.0.0.1:{2000 + n}", 1.0) is None
        assert admission.admit("10.0.0.2:1000", 1.0) is not None  # another address is let in
        assert admission.admit("10.0.0.1:1000", 10.5) is not None  # the back-off is over
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2, lines
    assert "refusing its connections for 10s" in lines[0]
    assert "back-off over (1000 connection(s) refused during it)" in lines[1]


def test_failures_outside_the_window_start_it_again() -> None:
    admission = Admission(lambda: LimitsSection(max_failed_handshakes=2,
                                                failed_handshake_window=5))
    admission.failed("10.0.0.1", 0.0)
    admission.failed("10.0.0.1", 6.0)  # the first is out of the window
    assert admission.admit("10.0.0.1:1", 6.5) is not None
    admission.failed("10.0.0.1", 7.0)
    assert admission.admit("10.0.0.1:2", 7.5) is None


def test_the_failure_table_is_bounded_by_address_count() -> None:
    admission = Admission(lambda: LimitsSection())
    for n in range(MAX_TRACKED + 500):  # a peer cycling through source addresses
        admission.failed(f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}", 0.0)
    assert len(admission.failures) == MAX_TRACKED


def test_an_ipv6_address_counts_as_its_64() -> None:
    assert address_of("[2001:db8:1:2:aaaa::1]:4000") == address_of("[2001:db8:1:2::9]:5000")
    assert address_of("[2001:db8:1:3::1]:4000") != address_of("[2001:db8:1:2::1]:4000")
    assert address_of("192.0.2.1:4000") == "192.0.2.1"


# -- connection caps ---------------------------------------------------------------------------


@pytest.mark.parametrize("cap", ["max_connections", "max_connections_per_address"])
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_connection_over_the_cap_is_refused_until_one_closes(
    tmp_path: Any, transport: str, cap: str,
) -> None:
    with trio.fail_after(30):
        async with daemon_on(tmp_path, f"{cap} = 2\n") as d:
            url = url_of(d, transport)
            async with welcomed(url):
                async with welcomed(url):
                    assert await hello(url) is None  # the third: reset at accept
                    assert d.app.admission.open == 2
                await until(lambda: d.app.admission.open == 1)
                answer = await hello(url)
                assert answer is not None and answer["type"] == "welcome"


async def test_a_reload_applies_new_caps_to_the_next_connections(tmp_path: Any) -> None:
    with trio.fail_after(30):
        async with daemon_on(tmp_path, "max_connections_per_address = 1\n") as d:
            url = url_of(d, "tcp")
            async with welcomed(url):
                assert await hello(url) is None
                assert d.app.config_path is not None
                d.app.config_path.write_text(f"{TOKENS}[limits]\nmax_connections_per_address = 2\n")
                d.app.reload()  # what SIGHUP does
                answer = await hello(url)
                assert answer is not None and answer["type"] == "welcome"


@pytest.mark.parametrize("cap", ["max_pending_handshakes", "max_pending_handshakes_per_address"])
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_connections_still_in_their_handshake_are_capped(
    tmp_path: Any, transport: str, cap: str,
) -> None:
    with trio.fail_after(30):
        async with daemon_on(tmp_path, f"{cap} = 1\n") as d:
            url = url_of(d, transport)
            host, port = url.split("://")[1].split(":")
            silent = await trio.open_tcp_stream(host, int(port))  # holds the one pending slot
            await until(lambda: d.app.admission.pending == 1)
            assert await hello(url) is None
            await silent.aclose()
            await until(lambda: d.app.admission.pending == 0)
            async with welcomed(url):  # past its handshake: no longer pending
                answer = await hello(url)
                assert answer is not None and answer["type"] == "welcome"


# -- WebSocket control frames ------------------------------------------------------------------


async def test_websocket_pings_count_toward_the_message_rate(tmp_path: Any) -> None:
    with trio.fail_after(30):
        async with daemon_on(tmp_path, "max_messages_per_second = 5\n") as d:
            host, port = url_of(d, "ws").split("://")[1].split(":")
            stream = await trio.open_tcp_stream(host, int(port))
            ws = WSConnection(ConnectionType.CLIENT)
            await stream.send_all(ws.send(Request(host="127.0.0.1", target="/")))
            ws.receive_data(await stream.receive_some(65536))
            assert any(isinstance(e, AcceptConnection) for e in ws.events())
            await stream.send_all(ws.send(TextMessage(data=orjson.dumps({
                "type": "hello", "role": "client", "version": p.PROTOCOL_VERSION,
                "token": "good"}).decode())))
            await stream.send_all(b"".join(ws.send(Ping(b"%d" % n)) for n in range(40)))
            codes, pongs, closed = [], 0, None
            while data := await stream.receive_some(65536):
                ws.receive_data(data)
                for event in ws.events():
                    if isinstance(event, TextMessage):
                        message = orjson.loads(event.data)
                        if message["type"] == "error":
                            codes.append(message["code"])
                    elif isinstance(event, CloseConnection):
                        closed = event.code
                    else:
                        pongs += 1
            assert codes and set(codes) == {p.E_RATE}
            assert pongs < 40  # the pings over the rate got none
            assert closed is not None  # closed as after any ten violations
