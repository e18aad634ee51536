"""RedisStore against real redis-server processes: replies, pipelining, cancellation, failure.

Tests that stop, hang or reconfigure Redis start a server of their own; the session server is only
ever flushed. Nothing here touches port 6379.
"""

from __future__ import annotations

import enum
import logging
import os
import random
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from schedd.devtools.redis_process import REDIS_SERVER, RedisServer, free_port
from schedd.errors import (
    ConfigError,
    StaleAttempt,
    StoreResponseError,
    StoreUnavailable,
)
from schedd.store.base import Arg
from schedd.store.redis_store import RedisStore, open_redis_store
from schedd.store.resp import _encode, _encode_each

pytestmark = [
    pytest.mark.redis_server,
    pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed"),
]

LOGGER = "schedd.store.redis_store"

# Spins inside Redis for ARGV[1] microseconds, then returns ARGV[2]: a command that is reliably
# "in flight" for a known time without needing DEBUG (disabled by default since Redis 7).
BUSY = """
local t = redis.call('TIME')
local start = t[1] * 1000000 + t[2]
repeat
  t = redis.call('TIME')
until t[1] * 1000000 + t[2] - start >= tonumber(ARGV[1])
return ARGV[2]
"""


@pytest.fixture
async def store(redis_server: RedisServer) -> AsyncIterator[RedisStore]:
    async with open_redis_store(redis_server.url) as opened:
        with trio.fail_after(10):
            await opened.execute("FLUSHALL")
        yield opened


@pytest.fixture
def own_server() -> Iterator[RedisServer]:
    """A server this test alone may stop, hang or reconfigure."""
    with RedisServer() as server:
        yield server


async def eventually(store: RedisStore, *args: Any, within: float = 5.0) -> Any:
    """Retry a command until Redis is back; fail if it is not within ``within`` seconds."""
    with trio.fail_after(within):
        while True:
            try:
                return await store.execute(*args)
            except StoreUnavailable:
                await trio.sleep(0.05)


# -- replies ---------------------------------------------------------------------------------


async def test_reply_types(store: RedisStore) -> None:
    with trio.fail_after(10):
        assert await store.execute("SET", "s", "v") == b"OK"
        assert await store.execute("GET", "s") == b"v"
        assert await store.execute("GET", "missing") is None
        assert await store.execute("INCRBY", "n", 41) == 41
        assert await store.execute("INCR", b"n") == 42
        assert await store.execute("SET", "f", 1.5) == b"OK"
        assert await store.execute("GET", "f") == b"1.5"
        assert await store.execute("SET", "u", "é") == b"OK"
        assert await store.execute("GET", "u") == "é".encode()
        assert await store.execute("RPUSH", "l", "a", "b") == 2
        assert await store.execute("LRANGE", "l", 0, -1) == [b"a", b"b"]
        assert await store.execute("LRANGE", "nothing", 0, -1) == []
        nested = await store.execute("EVAL", "return {1, 'two', {3, {'four'}}, {}}", 0)
        assert nested == [1, b"two", [3, [b"four"]], []]


async def test_error_reply_is_raised_and_connection_stays_usable(store: RedisStore) -> None:
    with trio.fail_after(10):
        with pytest.raises(StoreResponseError, match="unknown command"):
            await store.execute("NOSUCHCOMMAND", "x")
        await store.execute("SET", "s", "v")
        with pytest.raises(StoreResponseError, match="WRONGTYPE"):
            await store.execute("LPUSH", "s", "x")
        assert await store.execute("GET", "s") == b"v"


async def test_script_error_reply_maps_to_schedd_error(store: RedisStore) -> None:
    with trio.fail_after(10):
        with pytest.raises(StaleAttempt) as info:
            await store.execute(
                "EVAL", "return redis.error_reply('E_STALE_ATTEMPT job j attempt 1')", 0
            )
        assert info.value.message == "job j attempt 1"
        assert await store.execute("PING") == b"PONG"


async def test_unsendable_arguments_are_refused_before_sending(store: RedisStore) -> None:
    with trio.fail_after(10):
        with pytest.raises(TypeError):
            await store.execute("SET", "k", True)
        with pytest.raises(TypeError):
            await store.execute("SET", "k", None)  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            await store.execute()
        assert await store.execute("PING") == b"PONG"


def test_encoding_is_the_same_in_c_and_python() -> None:
    class Code(int, enum.Enum):
        X = 3

    cases: list[Sequence[Arg]] = [
        ("SET", b"k", 1, -7, 2.5, 0.1, 1e20, float("inf"), "é", "x" * 100_000),
        ["FCALL", "f", 0, Code.X],
    ]
    for args in cases:
        assert _encode(args) == _encode_each(args)
    assert _encode(["A", Code.X]) == b"*2\r\n$1\r\nA\r\n$1\r\n3\r\n"  # not "Code.X"
    with pytest.raises(TypeError, match="bool"):
        _encode(["SET", "k", False])


async def test_execute_many(store: RedisStore) -> None:
    with trio.fail_after(10):
        assert await store.execute_many([]) == []
        replies = await store.execute_many([("INCR", "c"), ("INCR", "c"), ("GET", "c")])
        assert replies == [1, 2, b"2"]
        # Written contiguously, so a transaction cannot swallow another caller's command.
        replies = await store.execute_many([("MULTI",), ("INCR", "t"), ("INCR", "t"), ("EXEC",)])
        assert replies == [b"OK", b"QUEUED", b"QUEUED", [1, 2]]


async def test_execute_many_raises_after_reading_every_reply(store: RedisStore) -> None:
    with trio.fail_after(10):
        with pytest.raises(StaleAttempt):
            await store.execute_many(
                [
                    ("SET", "before", 1),
                    ("EVAL", "return redis.error_reply('E_STALE_ATTEMPT j')", 0),
                    ("NOSUCHCOMMAND",),
                    ("SET", "after", 1),
                ]
            )
        assert await store.execute("MGET", "before", "after") == [b"1", b"1"]
        assert await store.execute("PING") == b"PONG"


# -- pipelining and cancellation ---------------------------------------------------------------


async def test_concurrent_callers_get_their_own_replies(store: RedisStore) -> None:
    results: dict[int, tuple[Any, Any, Any]] = {}

    async def caller(i: int) -> None:
        incr = await store.execute("INCRBY", f"k{i}", i)
        await store.execute("SET", f"s{i}", f"value-{i}")
        got = await store.execute("GET", f"s{i}")
        many = await store.execute_many([("GET", f"s{i}"), ("INCR", f"k{i}")])
        results[i] = (incr, got, many)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            for i in range(200):
                nursery.start_soon(caller, i)
    assert len(results) == 200
    for i, (incr, got, many) in results.items():
        assert incr == i
        assert got == f"value-{i}".encode()
        assert many == [f"value-{i}".encode(), i + 1]


async def test_cancelled_caller_does_not_desync_replies(store: RedisStore) -> None:
    late: list[Any] = []

    async def queued_behind(i: int) -> None:
        late.append((i, await store.execute("INCRBY", f"q{i}", i)))

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            with trio.move_on_after(0.05) as scope:
                # Still running inside Redis when the scope expires: its reply arrives later
                # and must be thrown away, not handed to the next caller in line.
                await store.execute("EVAL", BUSY, 0, 300_000, "stale")
            assert scope.cancelled_caught
            for i in range(1, 6):
                nursery.start_soon(queued_behind, i)
            assert await store.execute("ECHO", "mine") == b"mine"
        assert sorted(late) == [(i, i) for i in range(1, 6)]
        for i in range(20):
            assert await store.execute("ECHO", f"m{i}") == f"m{i}".encode()


async def test_random_cancellations_never_desync(store: RedisStore) -> None:
    rng = random.Random(7)
    answered = 0

    async def worker(w: int) -> None:
        nonlocal answered
        for i in range(40):
            token = f"{w}:{i}"
            # Zero cancels before the write, tiny values mostly after it: both paths get hit.
            with trio.move_on_after(rng.choice([0, 0.0001, 0.001, 0.01, 5])):
                if i % 5 == 0:
                    many = await store.execute_many([("ECHO", token), ("ECHO", f"{token}+")])
                    assert many == [token.encode(), f"{token}+".encode()]
                else:
                    assert await store.execute("ECHO", token) == token.encode()
                answered += 1

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            for w in range(50):
                nursery.start_soon(worker, w)
    assert answered > 0


async def test_caller_cancelled_before_sending_withdraws_its_command(store: RedisStore) -> None:
    with trio.fail_after(10):
        with trio.CancelScope() as scope:
            scope.cancel()
            await store.execute("SET", "withdrawn", 1)
        assert await store.execute("EXISTS", "withdrawn") == 0
        assert await store.execute("PING") == b"PONG"


# -- the caller writes on an idle connection ------------------------------------------------------


class _Writes:
    """os.write as redis_store calls it, recorded; ``limit`` caps what one write takes and
    ``fail`` raises instead of writing."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[tuple[str, bytes]] = []
        self.limit: int | None = None
        self.fail: OSError | None = None
        real = os.write

        def write(fd: int, data: bytes) -> int:
            self.calls.append((trio.lowlevel.current_task().name, bytes(data)))
            if self.fail is not None:
                raise self.fail
            return real(fd, data[: self.limit] if self.limit is not None else data)

        monkeypatch.setattr("schedd.store.redis_store.os.write", write)


async def test_a_command_on_an_idle_connection_is_written_by_its_caller(
        store: RedisStore, monkeypatch: pytest.MonkeyPatch) -> None:
    writes = _Writes(monkeypatch)
    with trio.fail_after(10):
        assert await store.execute("ECHO", "alone") == b"alone"
        assert await store.execute_many([("ECHO", "a"), ("ECHO", "b")]) == [b"a", b"b"]
    assert [data for _, data in writes.calls] == [
        _encode(("ECHO", "alone")), _encode(("ECHO", "a")) + _encode(("ECHO", "b"))]
    me = trio.lowlevel.current_task().name
    assert [name for name, _ in writes.calls] == [me, me], (me, writes.calls)


async def test_commands_behind_a_pending_one_go_to_the_writer(
        store: RedisStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """While a reply is outstanding, later callers queue for the writer, which sends what
    queued meanwhile in one write (pipelining), and every caller gets its own reply."""
    writes = _Writes(monkeypatch)
    got: dict[int, Any] = {}

    async def echo(i: int) -> None:
        got[i] = await store.execute("ECHO", f"e{i}")

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            # runs 300 ms inside Redis: pending all the while the echoes are made
            nursery.start_soon(store.execute, "EVAL", BUSY, 0, 300_000, "busy")
            await trio.testing.wait_all_tasks_blocked()
            assert len(writes.calls) == 1  # the first went out directly and is pending
            for i in range(20):
                nursery.start_soon(echo, i)
    assert got == {i: f"e{i}".encode() for i in range(20)}
    assert len(writes.calls) == 1  # the echoes went through the writer's stream
    assert await store.execute("ECHO", "idle again") == b"idle again"
    assert len(writes.calls) == 2


async def test_a_command_written_in_part_is_finished_by_the_writer(
        store: RedisStore, monkeypatch: pytest.MonkeyPatch) -> None:
    writes = _Writes(monkeypatch)
    writes.limit = 5  # "*2\r\n$" of an ECHO: the rest must follow before anything else
    got: dict[int, Any] = {}

    async def echo(i: int) -> None:
        got[i] = await store.execute("ECHO", f"part-{i}")

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            for i in range(10):
                nursery.start_soon(echo, i)
    assert got == {i: f"part-{i}".encode() for i in range(10)}
    assert len(writes.calls) == 1 and len(writes.calls[0][1]) > 5
    writes.limit = None
    assert await store.execute("ECHO", "whole") == b"whole"


@pytest.mark.parametrize("failure", [BlockingIOError(), BrokenPipeError(32, "Broken pipe")])
async def test_a_direct_write_that_fails_queues_for_the_writer(
        store: RedisStore, monkeypatch: pytest.MonkeyPatch, failure: OSError) -> None:
    """A direct write that would block, or finds the socket broken, leaves the command to the
    writer, whose stream waits, or finds out and drops the connection (failing the call)."""
    writes = _Writes(monkeypatch)
    writes.fail = failure
    with trio.fail_after(10):
        assert await store.execute("ECHO", "later") == b"later"
        assert await store.execute_many([("ECHO", "x")]) == [b"x"]
    assert len(writes.calls) == 2  # each tried once, then sent by the writer's stream


async def test_a_reply_larger_than_one_read_arrives_whole(store: RedisStore) -> None:
    big = os.urandom(300_000).hex()  # 600 kB: several reads of the socket
    with trio.fail_after(10):
        assert await store.execute("SET", "big", big) == b"OK"
        replies = await store.execute_many([("GET", "big"), ("ECHO", "after")])
    assert replies == [big.encode(), b"after"]


async def test_body_exception_propagates_unwrapped(redis_server: RedisServer) -> None:
    with trio.fail_after(10), pytest.raises(KeyError):
        async with open_redis_store(redis_server.url):
            raise KeyError("from the body")


# -- opening, failure and recovery -------------------------------------------------------------


async def test_open_fails_fast_when_nothing_listens() -> None:
    port = free_port()
    with trio.fail_after(10):
        started = trio.current_time()
        with pytest.raises(StoreUnavailable) as info:
            async with open_redis_store(f"redis://127.0.0.1:{port}/0"):
                pytest.fail("opened a store with no server")
        assert trio.current_time() - started < 1.0
    assert str(info.value) == f"cannot reach redis at 127.0.0.1:{port}: Connection refused"


async def test_redis_restart_fails_fast_then_recovers(
    own_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    address = f"127.0.0.1:{own_server.port}"
    with trio.fail_after(10):
        async with open_redis_store(own_server.url) as store:
            assert await store.execute("SET", "k", "v") == b"OK"
            # Opens the blocking connection now, so that recovery must replace a stale one.
            assert await store.execute_blocking("XREAD", "BLOCK", 10, "STREAMS", "s", "$") is None

            in_flight: list[BaseException] = []

            async def busy() -> None:
                try:
                    await store.execute("EVAL", BUSY, 0, 2_000_000, "never")
                except StoreUnavailable as exc:
                    in_flight.append(exc)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(busy)
                await trio.sleep(0.1)
                killed = trio.current_time()
                assert own_server.proc is not None
                own_server.proc.kill()
            assert trio.current_time() - killed < 1.0
            assert len(in_flight) == 1
            assert address in str(in_flight[0])

            started = trio.current_time()
            for _ in range(5):
                with pytest.raises(StoreUnavailable, match=address):
                    await store.execute("GET", "k")
                with pytest.raises(StoreUnavailable):
                    await store.execute_many([("GET", "k")])
                with pytest.raises(StoreUnavailable):
                    await store.execute_blocking("XREAD", "BLOCK", 100, "STREAMS", "s", "$")
            assert trio.current_time() - started < 1.0

            await trio.to_thread.run_sync(own_server.stop)
            await trio.to_thread.run_sync(own_server.start)
            assert await eventually(store, "PING") == b"PONG"
            # No persistence: the restarted server is empty, which proves it is a new one.
            assert await store.execute("GET", "k") is None
            assert await store.execute_blocking("XREAD", "BLOCK", 10, "STREAMS", "s", "$") is None

    records = [r for r in caplog.records if r.name == LOGGER]
    warnings = [r for r in records if r.levelno == logging.WARNING]
    infos = [r for r in records if r.levelno == logging.INFO]
    assert len(warnings) == 1
    assert address in warnings[0].getMessage()
    assert len(infos) == 1
    assert "reconnected" in infos[0].getMessage()


async def test_command_timeout_resets_the_connection() -> None:
    with RedisServer(extra_args=["--enable-debug-command", "yes"]) as server:
        with trio.fail_after(10):
            async with open_redis_store(server.url, command_timeout=0.5) as store:
                started = trio.current_time()
                with pytest.raises(StoreUnavailable, match="timed out"):
                    await store.execute("DEBUG", "SLEEP", 2)
                assert 0.4 < trio.current_time() - started < 1.5
                # Redis is still asleep: the reset connection cannot be back yet, so this fails
                # at once instead of waiting out another timeout.
                with pytest.raises(StoreUnavailable):
                    await store.execute("PING")
                assert await eventually(store, "PING") == b"PONG"
                assert await store.execute("SET", "k", "v") == b"OK"


async def test_command_timeout_fails_callers_queued_behind() -> None:
    with RedisServer(extra_args=["--enable-debug-command", "yes"]) as server:
        with trio.fail_after(10):
            async with open_redis_store(server.url, command_timeout=0.5) as store:
                errors: list[BaseException] = []

                async def call(*args: Any) -> None:
                    try:
                        await store.execute(*args)
                    except StoreUnavailable as exc:
                        errors.append(exc)

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(call, "DEBUG", "SLEEP", 2)
                    await trio.sleep(0.1)
                    nursery.start_soon(call, "PING")
                assert len(errors) == 2
                assert all("timed out" in str(exc) for exc in errors)
                assert await eventually(store, "PING") == b"PONG"


# -- the blocking connection -------------------------------------------------------------------


async def test_execute_blocking_returns_when_another_task_adds(store: RedisStore) -> None:
    with trio.fail_after(10):
        got: list[Any] = []

        async def reader() -> None:
            got.append(await store.execute_blocking("XREAD", "BLOCK", 5000, "STREAMS", "s", "$"))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            await trio.sleep(0.2)
            entry_id = await store.execute("XADD", "s", "*", "field", "value")
        assert got == [[[b"s", [[entry_id, [b"field", b"value"]]]]]]

        assert await store.execute_blocking("XREAD", "BLOCK", 50, "STREAMS", "s", "$") is None


async def test_execute_blocking_survives_cancellation(store: RedisStore) -> None:
    with trio.fail_after(10):
        with trio.move_on_after(0.2) as scope:
            await store.execute_blocking("XREAD", "BLOCK", 5000, "STREAMS", "first", "$")
        assert scope.cancelled_caught

        # Were the cancelled connection reused, its XREAD on "first" would still be blocking in
        # Redis ahead of this one and nothing below would answer within the deadline.
        got: list[Any] = []

        async def reader() -> None:
            got.append(
                await store.execute_blocking("XREAD", "BLOCK", 5000, "STREAMS", "second", "$")
            )

        with trio.fail_after(2):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(reader)
                await trio.sleep(0.2)
                entry_id = await store.execute("XADD", "second", "*", "f", "v")
        assert got == [[[b"second", [[entry_id, [b"f", b"v"]]]]]]


async def test_execute_blocking_error_reply(store: RedisStore) -> None:
    with trio.fail_after(10):
        await store.execute("SET", "notastream", "x")
        with pytest.raises(StoreResponseError, match="WRONGTYPE"):
            await store.execute_blocking("XREAD", "BLOCK", 10, "STREAMS", "notastream", "0")
        assert await store.execute_blocking("XREAD", "BLOCK", 10, "STREAMS", "s", "$") is None


async def test_execute_blocking_reports_a_killed_server(own_server: RedisServer) -> None:
    with trio.fail_after(10):
        async with open_redis_store(own_server.url) as store:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(trio.to_thread.run_sync, own_server.stop)
                with pytest.raises(StoreUnavailable, match=f"127.0.0.1:{own_server.port}"):
                    await store.execute_blocking("XREAD", "BLOCK", 5000, "STREAMS", "s", "$")
            await trio.to_thread.run_sync(own_server.start)
            await eventually(store, "PING")
            assert await store.execute_blocking("XREAD", "BLOCK", 10, "STREAMS", "s", "$") is None


# -- URLs --------------------------------------------------------------------------------------


async def test_auth_with_password(own_server: RedisServer) -> None:
    # RedisServer's readiness probe is an unauthenticated PING, which a server started with
    # --requirepass answers with NOAUTH; so the password is set once the server is up.
    port = own_server.port
    with trio.fail_after(10):
        async with open_redis_store(own_server.url) as plain:
            assert await plain.execute("CONFIG", "SET", "requirepass", "pw") == b"OK"

        async with open_redis_store(f"redis://:pw@127.0.0.1:{port}/0") as store:
            assert store.url == f"redis://:***@127.0.0.1:{port}/0"
            assert await store.execute("SET", "k", "v") == b"OK"
            assert await store.execute_blocking("XREAD", "BLOCK", 10, "STREAMS", "s", "$") is None

        async with open_redis_store(f"redis://default:pw@127.0.0.1:{port}/2") as store:
            assert store.url == f"redis://default:***@127.0.0.1:{port}/2"
            assert await store.execute("GET", "k") is None  # db 2, not 0

        with pytest.raises(StoreUnavailable, match="WRONGPASS"):
            async with open_redis_store(f"redis://:wrong@127.0.0.1:{port}/0"):
                pytest.fail("opened with a wrong password")
        with pytest.raises(StoreUnavailable, match="NOAUTH"):
            async with open_redis_store(f"redis://127.0.0.1:{port}/0"):
                pytest.fail("opened without a password")


async def test_unix_socket_and_db_selection(tmp_path: Path) -> None:
    sock = tmp_path / "redis.sock"
    with RedisServer(extra_args=["--unixsocket", str(sock), "--unixsocketperm", "700"]) as server:
        with trio.fail_after(10):
            async with open_redis_store(f"unix://{sock}?db=1") as store:
                assert store.url == f"unix://{sock}?db=1"
                assert await store.execute("SET", "k", "in-db-1") == b"OK"
                assert await store.execute_many([("GET", "k")]) == [b"in-db-1"]
            async with open_redis_store(f"redis://127.0.0.1:{server.port}/0") as tcp0:
                assert await tcp0.execute("GET", "k") is None
            async with open_redis_store(f"redis://127.0.0.1:{server.port}/1") as tcp1:
                assert await tcp1.execute("GET", "k") == b"in-db-1"


async def test_missing_unix_socket_fails_fast(tmp_path: Path) -> None:
    with trio.fail_after(10), pytest.raises(StoreUnavailable, match="No such file"):
        async with open_redis_store(f"unix://{tmp_path / 'absent.sock'}"):
            pytest.fail("opened a missing socket")


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[RedisServer, int, Path]]:
    """A server with a TLS port next to its plain one, using a fresh self-signed certificate."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost",
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        check=True,
        capture_output=True,
    )  # fmt: skip
    tls_port = free_port()
    server = RedisServer(
        extra_args=["--tls-port", str(tls_port), "--tls-cert-file", str(cert),
                    "--tls-key-file", str(key), "--tls-auth-clients", "no"]
    )  # fmt: skip
    try:
        server.start()
    except RuntimeError:
        server.stop()
        pytest.skip("redis-server was built without TLS")
    with server:  # started already: stops it on the way out
        yield server, tls_port, cert


async def test_tls(tls_server: tuple[RedisServer, int, Path]) -> None:
    _, port, cert = tls_server
    base = f"rediss://127.0.0.1:{port}/0"
    with trio.fail_after(10):
        async with open_redis_store(f"{base}?ssl_cert_reqs=none") as store:
            assert await store.execute("SET", "k", "v") == b"OK"
            assert await store.execute_many([("GET", "k")]) == [b"v"]
            assert await store.execute_blocking("XREAD", "BLOCK", 10, "STREAMS", "s", "$") is None
        async with open_redis_store(f"{base}?ssl_ca_certs={cert}") as store:
            assert await store.execute("GET", "k") == b"v"
        # Verification is on by default, and a self-signed certificate fails it.
        with pytest.raises(StoreUnavailable, match="CERTIFICATE_VERIFY_FAILED"):
            async with open_redis_store(base):
                pytest.fail("trusted a self-signed certificate")


def test_url_is_masked_and_validated() -> None:
    assert RedisStore("redis://u:secret@h:1/0").url == "redis://u:***@h:1/0"
    assert RedisStore("redis://h:1/0").url == "redis://h:1/0"
    assert (
        RedisStore("unix:///x.sock?db=2&password=secret").url == "unix:///x.sock?db=2&password=***"
    )
    assert RedisStore("rediss://:s@h:1/0?ssl_cert_reqs=none").url == (
        "rediss://:***@h:1/0?ssl_cert_reqs=none"
    )
    with pytest.raises(ConfigError, match="unsupported parameter"):
        RedisStore("redis://h:1/0?socket_timeout=3")
    with pytest.raises(ConfigError):
        RedisStore("http://h:1/0")


# -- closing -----------------------------------------------------------------------------------


async def test_aclose_inside_the_block_ends_the_store_not_the_block(
    redis_server: RedisServer,
) -> None:
    # The store's tasks share a nursery with the caller's block; closing must end only theirs.
    with trio.fail_after(10):
        async with open_redis_store(redis_server.url) as store:
            await store.aclose()
            try:
                await trio.lowlevel.checkpoint()
            except trio.Cancelled:
                pytest.fail("aclose() cancelled the block that opened the store")
            with pytest.raises(StoreUnavailable, match="store is closed"):
                await store.execute("PING")


async def test_aclose_fails_pending_and_later_calls(redis_server: RedisServer) -> None:
    with trio.fail_after(10):
        async with open_redis_store(redis_server.url) as store:
            pending: list[BaseException] = []

            async def busy() -> None:
                try:
                    await store.execute("EVAL", BUSY, 0, 300_000, "late")
                except StoreUnavailable as exc:
                    pending.append(exc)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(busy)
                await trio.sleep(0.05)
                await store.aclose()
            assert [str(exc) for exc in pending] == ["store is closed"]

            for call in (
                store.execute("PING"),
                store.execute_many([("PING",)]),
                store.execute_blocking("XREAD", "BLOCK", 10, "STREAMS", "s", "$"),
            ):
                with pytest.raises(StoreUnavailable, match="store is closed"):
                    await call
            await store.aclose()  # idempotent

        with pytest.raises(StoreUnavailable, match="store is closed"):
            await store.execute("PING")
