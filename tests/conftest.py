from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator, Iterator

import pytest

from schedd.redis_process import REDIS_SERVER, RedisServer


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
    """The size asked of every ``os.read`` that schedd.sdk.connect tries (read_when_ready),
    including any that would fail: a read tried before input came shows up here."""
    tried: list[int] = []
    real_read = os.read

    def counting_read(fd: int, size: int) -> bytes:
        tried.append(size)
        return real_read(fd, size)

    monkeypatch.setattr("schedd.sdk.connect.os.read", counting_read)
    return tried
