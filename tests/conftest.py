from __future__ import annotations

import functools
import inspect
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Iterator
from typing import Any

import pytest
import trio

from schedd.devtools.redis_process import REDIS_SERVER, RedisServer

# -- a cancelled test fails ---------------------------------------------------------------------
#
# pytest-trio runs a test inside a nursery that it cancels on the way out, so a trio.Cancelled
# escaping the test's body (a scope the test does not own cancelled it, and everything after
# that point was skipped) is absorbed there and the test counts as passed. Here it fails.


def _fail_if_cancelled(
    test: Callable[..., Awaitable[None]],
) -> Callable[..., Awaitable[None]]:
    @functools.wraps(test)
    async def guarded(*args: Any, **kwargs: Any) -> None:
        try:
            await test(*args, **kwargs)
        except trio.Cancelled as exc:
            raise AssertionError(
                "trio.Cancelled escaped the test: a cancel scope it does not own cancelled its "
                "body, so the rest of the test did not run"
            ) from exc

    return guarded


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    # before pytest-trio's wrapper (a hookwrapper too) replaces the test function with its runner
    test = getattr(item, "obj", None)
    inner = getattr(getattr(test, "hypothesis", None), "inner_test", None)
    if inspect.iscoroutinefunction(inner):
        test.hypothesis.inner_test = _fail_if_cancelled(inner)  # type: ignore[union-attr]
    elif inspect.iscoroutinefunction(test):
        item.obj = _fail_if_cancelled(test)  # type: ignore[attr-defined]
    yield


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One redis-server for the session, on a free port; tests flush it before use."""
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed (CI installs it; see .ci/run)")
    with RedisServer() as server:
        yield server


def _flush(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
        sock.sendall(b"FLUSHALL\r\n")
        assert sock.recv(16).startswith(b"+OK")


@pytest.fixture(params=["memory", "redis"])
def store_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """A store URL for each backend: the embedded store and a real redis-server, flushed."""
    if request.param == "memory":
        yield "memory://"
        return
    server: RedisServer = request.getfixturevalue("redis_server")
    _flush(server.port)
    yield server.url


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[object]:
    from schedd.store import open_store

    async with open_store(store_url) as opened:
        yield opened


@pytest.fixture
def socket_reads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The size asked of every ``os.read`` that schedd.transport.sockets tries (read_when_ready),
    including any that would fail: a read tried before input came shows up here."""
    tried: list[int] = []
    real_read = os.read

    def counting_read(fd: int, size: int) -> bytes:
        tried.append(size)
        return real_read(fd, size)

    monkeypatch.setattr("schedd.transport.sockets.os.read", counting_read)
    return tried
