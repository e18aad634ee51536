from __future__ import annotations

import os
import secrets
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
import trio.testing

from schedd import systemd


class Listener:
    """The systemd side: a datagram socket that collects notifications."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def messages(self) -> list[str]:
        found = []
        while True:
            try:
                found.append(self.sock.recv(4096).decode())
            except BlockingIOError:
                return found


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def listener(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clean_env: None
) -> Iterator[Listener]:
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.setblocking(False)
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        yield Listener(sock)


@pytest.fixture
def abstract_listener(monkeypatch: pytest.MonkeyPatch, clean_env: None) -> Iterator[Listener]:
    name = f"schedd-test-{os.getpid()}-{secrets.token_hex(4)}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.setblocking(False)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        yield Listener(sock)


# --- notify -----------------------------------------------------------------------------------


def test_not_under_systemd(clean_env: None) -> None:
    assert systemd.notify("READY=1") is False
    assert systemd.ready("up") is False
    assert systemd.watchdog_interval() is None


def test_notify_path_socket(listener: Listener) -> None:
    assert systemd.notify("READY=1", "STATUS=hello") is True
    assert listener.messages() == ["READY=1\nSTATUS=hello"]


def test_notify_abstract_socket(abstract_listener: Listener) -> None:
    assert systemd.notify("WATCHDOG=1") is True
    assert abstract_listener.messages() == ["WATCHDOG=1"]


def test_notify_nothing_listening(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone.sock"))
    assert systemd.notify("READY=1") is False


def test_notify_unsupported_address(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", "vsock:2:1234")
    assert systemd.notify("READY=1") is False


def test_helpers(listener: Listener) -> None:
    assert systemd.ready("listening on ws://127.0.0.1:8765")
    assert systemd.status("3 nodes\n2 jobs")
    assert systemd.stopping("draining")
    assert systemd.extend_timeout(1.5)
    assert systemd.reloading()
    ready, status, stopping, extend, reloading = listener.messages()
    assert ready == "READY=1\nSTATUS=listening on ws://127.0.0.1:8765"
    assert status == "STATUS=3 nodes 2 jobs"  # a newline would start a new assignment
    assert stopping == "STOPPING=1\nSTATUS=draining"
    assert extend == "EXTEND_TIMEOUT_USEC=1500000"
    first, second = reloading.split("\n")
    assert first == "RELOADING=1"
    key, value = second.split("=")
    assert key == "MONOTONIC_USEC"
    assert abs(int(value) - time.monotonic_ns() // 1000) < 10_000_000  # CLOCK_MONOTONIC, µs


# --- watchdog_interval ------------------------------------------------------------------------


def test_watchdog_interval(monkeypatch: pytest.MonkeyPatch, clean_env: None) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "10000000")
    assert systemd.watchdog_interval() == 5.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert systemd.watchdog_interval() == 5.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))
    assert systemd.watchdog_interval() is None


@pytest.mark.parametrize("usec", ["", "0", "-5", "ten"])
def test_watchdog_interval_off(usec: str, monkeypatch: pytest.MonkeyPatch, clean_env: None) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", usec)
    assert systemd.watchdog_interval() is None


def test_watchdog_pid_not_a_number(monkeypatch: pytest.MonkeyPatch, clean_env: None) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")
    monkeypatch.setenv("WATCHDOG_PID", "self")
    assert systemd.watchdog_interval() is None


# --- serve_watchdog ---------------------------------------------------------------------------


async def test_serve_watchdog_returns_without_watchdog(clean_env: None) -> None:
    async def check() -> bool:
        raise AssertionError("not called without a watchdog")

    with trio.fail_after(1):
        async with trio.open_nursery() as nursery:
            await nursery.start(systemd.serve_watchdog, check)


async def test_serve_watchdog_pings_while_healthy(
    listener: Listener, monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.testing.MockClock
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "2000000")  # ping every second
    healthy = True
    calls = 0

    async def check() -> bool:
        nonlocal calls
        calls += 1
        await trio.sleep(0.1)
        return healthy

    async with trio.open_nursery() as nursery:
        await nursery.start(systemd.serve_watchdog, check)
        await trio.sleep(4.5)  # pings at 0.1, 1.1, 2.1, 3.1, 4.1
        assert listener.messages() == ["WATCHDOG=1"] * 5
        healthy = False
        await trio.sleep(3)
        assert listener.messages() == []
        healthy = True
        await trio.sleep(2)
        assert listener.messages() == ["WATCHDOG=1"] * 2
        nursery.cancel_scope.cancel()
    assert calls == 10


async def test_serve_watchdog_withholds_on_error_and_timeout(
    listener: Listener, monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.testing.MockClock
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "2000000")
    mode = "raise"

    async def check() -> bool:
        if mode == "raise":
            raise ConnectionError("redis down")
        if mode == "hang":
            await trio.sleep_forever()
        return True

    async with trio.open_nursery() as nursery:
        await nursery.start(systemd.serve_watchdog, check)
        await trio.sleep(3.5)
        assert listener.messages() == []
        mode = "hang"
        await trio.sleep(3)
        assert listener.messages() == []
        mode = "ok"
        await trio.sleep(2)
        assert listener.messages() == ["WATCHDOG=1"] * 2
        nursery.cancel_scope.cancel()


async def test_serve_watchdog_keeps_cadence_with_slow_check(
    listener: Listener, monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.testing.MockClock
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "2000000")
    stamps: list[float] = []

    async def check() -> bool:
        await trio.sleep(0.9)
        stamps.append(trio.current_time())
        return True

    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        await nursery.start(systemd.serve_watchdog, check)
        await trio.sleep(3.95)
        nursery.cancel_scope.cancel()
    assert [round(stamp - start, 3) for stamp in stamps] == [0.9, 1.9, 2.9, 3.9]
    assert len(listener.messages()) == 4
