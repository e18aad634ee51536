"""Throw-away redis-server processes: a port taken between picking and binding is picked again."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from schedd.devtools import redis_process
from schedd.devtools.redis_process import REDIS_SERVER, PortTaken, RedisServer

pytestmark = pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed")


@pytest.fixture
def taken() -> Iterator[int]:
    """A loopback port another socket listens on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def _ping(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
        sock.sendall(b"PING\r\n")
        return sock.recv(16)


def test_a_picked_port_found_taken_is_picked_again(
    taken: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    picks = iter([taken, taken])  # the server's port, then its --cluster-port stand-in
    real = redis_process.free_port
    monkeypatch.setattr(redis_process, "free_port", lambda: next(picks, None) or real())
    server = RedisServer(extra_args=["--cluster-port", str(redis_process.free_port())])
    assert server.port == taken
    with server:
        assert server.port != taken
        assert server.extra_args[1] != str(taken)
        assert _ping(server.port).startswith(b"+PONG")


def test_a_port_the_caller_chose_is_not_changed(taken: int) -> None:
    server = RedisServer(port=taken)
    with pytest.raises(PortTaken, match="Address already in use"):
        server.start()
    assert server.port == taken


def test_a_port_another_redis_server_holds_is_taken() -> None:
    """The other server answers on the port, but it is not this one's process."""
    with RedisServer() as first:
        second = RedisServer(port=first.port)
        with pytest.raises(PortTaken, match="Address already in use"):
            second.start()
        assert second.proc is not None and second.proc.poll() is not None


def test_start_while_running_is_one_process() -> None:
    server = RedisServer()
    with server:
        assert server.proc is not None
        pid = server.proc.pid
        server.start()
        assert server.proc.pid == pid
    with pytest.raises(OSError):
        _ping(server.port)  # stopped: nothing left listening


def test_other_start_failures_say_so() -> None:
    server = RedisServer(extra_args=["--maxmemory-policy", "no-such-policy"])
    with pytest.raises(RuntimeError, match=f"port {server.port} exited with"):
        server.start()


def test_free_port_never_repeats() -> None:
    ports = [redis_process.free_port() for _ in range(200)]
    assert len(set(ports)) == len(ports)
