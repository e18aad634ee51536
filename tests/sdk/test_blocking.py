"""The blocking client from plain threads (no event loop in the test), against a real daemon
and an SDK node that run in a background thread, over tcp://, on both stores."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.from_thread

from schedd.devtools.redis_process import free_port
from schedd.protocol import PROTOCOL_VERSION, Done
from schedd.sdk import (
    E_CLIENT_CLOSED,
    BlockingClient,
    ConnectFailed,
    JobContext,
    JobError,
    JobLost,
    JobResult,
    Node,
    RequestFailed,
)
from schedd.testing import DaemonHarness, running_daemon
from tests.sdk import closed_port_url

WAIT = 20.0
"""A bound on every blocking wait, so that a bug fails the test instead of hanging it."""


async def handler(ctx: JobContext) -> Any:
    payload = ctx.payload or {}
    for step in range(payload.get("progress", 0)):
        await ctx.progress(step)
    if "fail" in payload:
        raise JobError(payload["fail"], "asked to fail")
    if payload.get("block"):
        await trio.sleep_forever()
    if ctx.attachments:  # their bytes back, reversed
        return JobResult({"echo": payload},
                         attachments={name: data[::-1] for name, data in ctx.attachments.items()})
    return {"echo": payload}


class DaemonThread:
    """A daemon (``running_daemon``, tcp transport) and a node in ``pools``, in one trio run in a
    background thread, until :meth:`stop`."""

    def __init__(self, tmp_path: Path, store_url: str, port: int, pools: list[str]) -> None:
        self.url = f"tcp://127.0.0.1:{port}"
        self._toml = (
            '[plugins]\nenabled = ["transport_tcp"]\n'
            f'[plugins.transport_tcp]\nlisten = "127.0.0.1:{port}"\n'
            "[nodes]\nheartbeat_interval = 0.2\ndisconnect_grace = 0.1\n"
        )
        self._store_url, self._tmp_path, self._pools = store_url, tmp_path, pools
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._scope: trio.CancelScope | None = None
        self.harness: DaemonHarness | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        assert self._ready.wait(WAIT), "the daemon did not start"
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        try:
            trio.run(self._main)
        except BaseException as exc:
            self._error = exc
            self._ready.set()

    async def _main(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        with trio.CancelScope() as self._scope:
            async with running_daemon(self._store_url, self._toml, self._tmp_path) as harness:
                self.harness = harness
                async with trio.open_nursery() as nursery:
                    if self._pools:
                        node = Node(self.url, handler, pools=self._pools, capacity=8,
                                    node_id="worker", reconnect_delay=0.05)
                        await nursery.start(node.run)
                    self._ready.set()
                    await trio.sleep_forever()

    def client_connections(self) -> int:
        assert self.harness is not None and self._token is not None
        roles = trio.from_thread.run_sync(
            lambda: list(self.harness.daemon.connection_roles),  # type: ignore[union-attr]
            trio_token=self._token,
        )
        return roles.count("client")

    def stop(self) -> None:
        if self._token is not None and self._scope is not None and self._thread.is_alive():
            self._token.run_sync_soon(self._scope.cancel)
        self._thread.join(WAIT)
        assert not self._thread.is_alive(), "the daemon did not stop"


@pytest.fixture
def port() -> int:
    return free_port()


@pytest.fixture
def daemon(tmp_path: Path, store_url: str, port: int) -> Iterator[DaemonThread]:
    started = DaemonThread(tmp_path, store_url, port, pools=["p"])
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture
def client(daemon: DaemonThread) -> Iterator[BlockingClient]:
    with BlockingClient(daemon.url) as opened:
        yield opened


def test_submit_and_result_with_progress(client: BlockingClient) -> None:
    handle = client.submit({"progress": 3}, pools=["p"])
    assert handle.job_id and not handle.duplicate
    assert list(handle.progress(timeout=WAIT)) == [0, 1, 2]
    done = handle.result(timeout=WAIT)
    assert done.ok and done.output == {"echo": {"progress": 3}}
    assert handle.finished and handle.state == "done"
    assert client.status(handle.job_id).state == "done"
    assert client.instance and client.principal
    [node] = client.query("nodes")["nodes"]
    assert node["protocol"] == PROTOCOL_VERSION
    [me] = client.query("clients")["clients"]  # this client's one connection
    assert me["peer"].startswith("127.0.0.1:") and me["protocol"] == PROTOCOL_VERSION
    assert me["instance"] == client.instance and me["principal"] == client.principal


def test_attachments_from_a_thread(client: BlockingClient) -> None:
    audio = bytes(range(256)) * 8
    handle = client.submit({"n": 1}, pools=["p"], attachments={"a.wav": (audio, "audio/wav")})
    assert handle.result(timeout=WAIT).ok
    assert handle.attachments == {"a.wav": audio[::-1]}


def test_threads_share_one_client_and_one_connection(
    daemon: DaemonThread, client: BlockingClient
) -> None:
    def work(worker: int) -> list[Any]:
        outputs = []
        for i in range(5):
            handle = client.submit({"worker": worker, "i": i}, pools=["p"])
            outputs.append(handle.result(timeout=WAIT).output)
        return outputs

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(work, range(8)))
    for worker, outputs in enumerate(results):
        assert outputs == [{"echo": {"worker": worker, "i": i}} for i in range(5)]
    assert daemon.client_connections() == 1


def test_result_timeout_leaves_the_job_running_then_cancel(client: BlockingClient) -> None:
    handle = client.submit({"block": True}, pools=["p"])
    with pytest.raises(TimeoutError):
        handle.result(timeout=0.1)
    assert not handle.finished
    with pytest.raises(TimeoutError):
        next(handle.progress(timeout=0.1))
    handle.cancel()
    done = handle.result(timeout=WAIT)
    assert done.state == "canceled" and not done.ok


def test_cancel_by_id_of_a_queued_job(client: BlockingClient) -> None:
    handle = client.submit({}, pools=["nobody-serves-this"])
    client.cancel(handle.job_id)
    assert handle.result(timeout=WAIT).state == "canceled"


def test_failed_job_reports_its_error(client: BlockingClient) -> None:
    handle = client.submit({"fail": "BAD_INPUT"}, pools=["p"], max_attempts=1)
    done = handle.result(timeout=WAIT)
    assert not done.ok and done.state == "failed"
    assert done.error is not None and done.error.code == "BAD_INPUT"


def test_refused_requests_raise_the_sdk_errors(client: BlockingClient) -> None:
    with pytest.raises(RequestFailed) as info:
        client.status("no-such-job")
    assert info.value.code == "E_NO_JOB"
    with pytest.raises(ValueError):
        client.submit({}, pools=["p"], priority=10**9)


def test_the_options_of_the_async_client_pass_through(client: BlockingClient) -> None:
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    handle = client.submit({"n": 1}, pools=["p"], job_id="traced", traceparent=traceparent,
                           tracestate="k=v")
    assert (handle.traceparent, handle.tracestate) == (traceparent, "k=v")
    assert handle.result(timeout=WAIT).ok
    page = client.query("jobs", state="done", limit=10)
    assert [job["job_id"] for job in page["jobs"]] == ["traced"]
    with pytest.raises(TypeError):  # an option the async client does not take
        client.submit({}, pools=["p"], no_such_option=1)
    with pytest.raises(RequestFailed) as info:  # no admin token: refused, nothing changes
        client.admin("drain", node_id="worker")
    assert info.value.code == "E_FORBIDDEN"


def test_follow_from_a_second_client(daemon: DaemonThread, client: BlockingClient) -> None:
    handle = client.submit({"block": True}, pools=["p"])
    with BlockingClient(daemon.url) as other:
        followed = other.follow(handle.job_id)
        with pytest.raises(RequestFailed) as info:
            handle.result(timeout=WAIT)  # the daemon now sends the job's done to `other`
        assert info.value.code == "E_DETACHED"
        followed.cancel()
        assert followed.result(timeout=WAIT).state == "canceled"


def test_close_is_idempotent_and_fails_waiters_and_later_calls(daemon: DaemonThread) -> None:
    client = BlockingClient(daemon.url)
    handle = client.submit({"block": True}, pools=["p"])
    failures: list[BaseException] = []
    waiting = threading.Thread(
        target=lambda: failures.extend(_raised(lambda: handle.result(timeout=WAIT)))
    )
    waiting.start()
    client.close()
    client.close()
    waiting.join(WAIT)
    assert client.closed
    assert len(failures) == 1 and isinstance(failures[0], RequestFailed)
    assert failures[0].code == E_CLIENT_CLOSED
    for call in (
        lambda: client.submit({}, pools=["p"]),
        lambda: client.status(handle.job_id),
        lambda: client.cancel(handle.job_id),
        lambda: handle.result(timeout=WAIT),
        lambda: next(handle.progress()),
    ):
        with pytest.raises(RequestFailed) as info:
            call()
        assert info.value.code == E_CLIENT_CLOSED
        assert "closed" in str(info.value)
    with client:  # a closed client may be entered and left again; it stays closed
        pass


def _raised(call: Any) -> list[BaseException]:
    try:
        call()
    except BaseException as exc:
        return [exc]
    return []


def test_connect_failure_raises_and_leaves_no_thread() -> None:
    before = threading.active_count()
    with pytest.raises(ConnectFailed):
        BlockingClient(closed_port_url(), connect_timeout=1.0)
    assert threading.active_count() == before


def test_reconnects_across_a_daemon_restart(
    tmp_path: Path, store_url: str, port: int
) -> None:
    # The first daemon has no node for pool "later": the job waits queued while it restarts.
    first = DaemonThread(tmp_path, store_url, port, pools=[])
    try:
        with BlockingClient(first.url) as client:
            handle = client.submit({"after": "restart"}, pools=["later"])
            first.stop()
            second = DaemonThread(tmp_path, store_url, port, pools=["later"])
            try:
                if store_url == "memory://":
                    # The embedded store died with the daemon: the job is gone, and the client
                    # says so instead of waiting forever.
                    with pytest.raises(JobLost):
                        handle.result(timeout=WAIT)
                else:
                    done = handle.result(timeout=WAIT)
                    assert done.ok and done.output == {"echo": {"after": "restart"}}
                assert client.submit({}, pools=["later"]).result(timeout=WAIT).ok
            finally:
                second.stop()
    finally:
        first.stop()


def test_bench_round_trips(daemon: DaemonThread, monkeypatch: pytest.MonkeyPatch) -> None:
    from schedd.devtools.bench import sdk_blocking

    times = sdk_blocking.blocking_round_trips(daemon.url, 5, "p")
    assert len(times) == 5 and all(t > 0 for t in times)
    monkeypatch.setattr(sdk_blocking, "_PAYLOAD", {"fail": "BENCH"})
    with pytest.raises(RuntimeError, match="failed"):
        sdk_blocking.blocking_round_trips(daemon.url, 1, "p")


def test_an_ordered_session_from_threads(daemon: DaemonThread, client: BlockingClient) -> None:
    session = client.session("call")
    late = client.submit({"fail": "BAD_INPUT"}, pools=["p"], session_id="call", seq=1,
                         max_attempts=1)
    with pytest.raises(TimeoutError):  # its result waits for seq 0's, its handle's too
        late.result(timeout=0.2)
    client.submit({}, pools=["p"], session_id="call", seq=0)
    first, second = session.next(timeout=WAIT), session.next(timeout=WAIT)
    assert isinstance(first, Done) and isinstance(second, Done)
    assert (first.seq, first.state, second.seq, second.state) == (0, "done", 1, "failed")
    assert late.result(timeout=WAIT).state == "failed"
    with BlockingClient(daemon.url) as other:
        assert other.follow_session("call").session_id == "call"


def test_submit_many_answers_each_job(client: BlockingClient) -> None:
    handles = client.submit_many([*({"payload": {"n": i}, "pools": ["p"], "job_id": f"m{i}"}
                                    for i in range(5)), {"payload": {}, "job_id": "nopool"}])
    assert [h.job_id for h in handles] == [f"m{i}" for i in range(5)] + ["nopool"]
    for i, handle in enumerate(handles[:5]):
        assert handle.result(timeout=WAIT).output == {"echo": {"n": i}}
    with pytest.raises(RequestFailed) as refused:
        handles[5].result(timeout=WAIT)
    assert refused.value.code == "E_BAD_ARG"
