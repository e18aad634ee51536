"""The node SDK against a scripted fake daemon (tests/sdk/__init__.py) over tcp://."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio
import trio.testing

from schedd.protocol import (
    Accept,
    Assign,
    Cancel,
    Drain,
    Error,
    Heartbeat,
    Ping,
    Pong,
    Progress,
    Register,
    Registered,
    Reject,
    Result,
    RunningJob,
    Unavailable,
    Undrain,
)
from schedd.sdk.client import RequestFailed
from schedd.sdk.node import JobContext, JobError, Node
from tests.polling import until
from tests.sdk import FakeDaemon, FakePeer, closed_port_url, start_fake_daemon

Handler = Callable[[JobContext], Awaitable[Any]]


@pytest.fixture(params=["tcp", "ws"])
async def daemon(request: pytest.FixtureRequest, nursery: trio.Nursery) -> FakeDaemon:
    """A fake daemon on each transport (the SDK's transports come from schedd.sdk.connect)."""
    return await start_fake_daemon(nursery, websocket=request.param == "ws")


async def register(
    peer: FakePeer, node_id: str = "n1", epoch: int = 1, heartbeat_interval: float = 1.0
) -> Register:
    await peer.handshake("node", heartbeat_interval=heartbeat_interval, principal="node:n1")
    message = await peer.recv(Register)
    await peer.send(
        Registered(node_id=message.node_id or node_id, epoch=epoch, pools=["p"], ref=message.ref)
    )
    return message


def assign(job_id: str = "j1", attempt: int = 1, payload: Any = None) -> Assign:
    return Assign(job_id=job_id, attempt=attempt, deadline=1_700_000_000_000, payload=payload)


async def start_node(nursery: trio.Nursery, node: Node) -> None:
    await nursery.start(node.run)


class Gate:
    """A handler that reports its start and waits to be released (or cancelled)."""

    def __init__(self, output: Any = "out") -> None:
        self.started = trio.Event()
        self.release = trio.Event()
        self.cancelled = trio.Event()
        self.finished = trio.Event()
        self.output = output
        self.contexts: list[JobContext] = []

    async def __call__(self, ctx: JobContext) -> Any:
        self.contexts.append(ctx)
        self.started.set()
        try:
            await self.release.wait()
        except trio.Cancelled:
            self.cancelled.set()
            raise
        finally:
            self.finished.set()
        return self.output


async def test_assign_accept_progress_result(daemon: FakeDaemon, nursery: trio.Nursery) -> None:
    async def handler(ctx: JobContext) -> Any:
        assert (ctx.job_id, ctx.attempt, ctx.session_id) == ("j1", 1, "s1")
        assert ctx.deadline_ms == 1_700_000_000_000
        await ctx.progress({"partial": "hel"})
        return {"text": ctx.payload["text"].upper()}

    node = Node(
        daemon.url,
        handler,
        pools=["p"],
        capacity=2,
        capabilities={"asr_langs": ["zh"]},
        labels={"zone": "eu-1"},
        node_id="gpu-7",
        token="s3cret",
        name="gpu-box-7",
    )
    registered: list[Register] = []
    done = trio.Event()
    with trio.fail_after(10):

        async def script() -> None:
            peer = await daemon.accept()
            hello = await peer.handshake("node")
            assert (hello.token, hello.name) == ("s3cret", "gpu-box-7")
            message = await peer.recv(Register)
            registered.append(message)
            await peer.send(Registered(node_id="gpu-7", epoch=4, pools=["p"], ref=message.ref))
            await peer.send(
                Assign(
                    job_id="j1",
                    attempt=1,
                    deadline=1_700_000_000_000,
                    payload={"text": "hello"},
                    session_id="s1",
                )
            )
            accept = await peer.recv(Accept)
            assert (accept.job_id, accept.attempt) == ("j1", 1)
            progress = await peer.recv(Progress)
            assert progress.data == {"partial": "hel"} and progress.attempt == 1
            result = await peer.recv(Result)
            assert result.ok and result.output == {"text": "HELLO"} and result.error is None
            assert (result.job_id, result.attempt) == ("j1", 1)
            done.set()

        nursery.start_soon(script)
        await start_node(nursery, node)
        assert (node.node_id, node.epoch) == ("gpu-7", 4)
        await done.wait()
    message = registered[0]
    assert message.node_id == "gpu-7" and message.capacity == 2
    assert message.capabilities == {"asr_langs": ["zh"]} and message.labels == {"zone": "eu-1"}
    assert message.pools == ["p"] and message.running == []
    assert node.running == {}


@pytest.mark.parametrize(
    ("raised", "code", "text", "retryable"),
    [
        (JobError("OOM", "CUDA out of memory"), "OOM", "CUDA out of memory", False),
        (JobError("OOM", "try another GPU", retryable=True), "OOM", "try another GPU", True),
        (ValueError("bad input"), "E_NODE_EXCEPTION", "ValueError: bad input", False),
    ],
)
async def test_handler_failures_become_failed_results(
    daemon: FakeDaemon, nursery: trio.Nursery, raised: Exception, code: str, text: str,
    retryable: bool,
) -> None:
    async def handler(ctx: JobContext) -> Any:
        raise raised

    node = Node(daemon.url, handler)
    with trio.fail_after(10):

        async def script() -> None:
            peer = await daemon.accept()
            await register(peer)
            await peer.send(assign())
            await peer.recv(Accept)
            result = await peer.recv(Result)
            assert not result.ok and result.error is not None
            assert (result.error.code, result.error.message) == (code, text)
            assert result.retryable is retryable
            finished.set()

        finished = trio.Event()
        nursery.start_soon(script)
        await start_node(nursery, node)
        await finished.wait()


async def test_cancel_stops_the_handler_and_nothing_more_is_sent(
    daemon: FakeDaemon, nursery: trio.Nursery
) -> None:
    gate = Gate()
    node = Node(daemon.url, gate)
    with trio.fail_after(10):
        nursery_peer: list[FakePeer] = []

        async def script() -> None:
            peer = await daemon.accept()
            nursery_peer.append(peer)
            await register(peer)
            await peer.send(assign())
            await peer.recv(Accept)

        nursery.start_soon(script)
        await start_node(nursery, node)
        await gate.started.wait()
        peer = nursery_peer[0]
        await peer.send(Cancel(job_id="j1", attempt=2))  # another attempt: ignored
        await peer.send(Cancel(job_id="other", attempt=1))  # unknown job: ignored
        await peer.send(Ping(ref="sync"))
        assert (await peer.recv(Pong)).ref == "sync"
        assert not gate.cancelled.is_set() and "j1" in node.running
        await peer.send(Cancel(job_id="j1", attempt=1))
        await gate.cancelled.wait()
        assert node.running == {}
        await peer.send(Ping(ref="after"))
        # Nothing about j1 (no result) comes before the pong.
        assert (await peer.recv(Pong)).ref == "after"


async def test_stale_attempt_error_cancels_the_job(
    daemon: FakeDaemon, nursery: trio.Nursery
) -> None:
    gate = Gate()
    node = Node(daemon.url, gate)
    peers: list[FakePeer] = []
    with trio.fail_after(10):

        async def script() -> None:
            peer = await daemon.accept()
            peers.append(peer)
            await register(peer)
            await peer.send(assign(attempt=3))
            accept = await peer.recv(Accept)
            # The accept came too late: the daemon refuses it with the accept's ref.
            await peer.send(
                Error(
                    code="E_STALE_ATTEMPT",
                    message="attempt 3 of j1 is stale (current 4)",
                    job_id="j1",
                    ref=accept.ref,
                )
            )

        nursery.start_soon(script)
        await start_node(nursery, node)
        await gate.cancelled.wait()
        assert node.running == {}
        await peers[0].send(Ping(ref="after"))
        assert (await peers[0].recv(Pong)).ref == "after"


async def test_reconnect_keeps_node_id_and_reports_running_jobs(
    daemon: FakeDaemon, nursery: trio.Nursery
) -> None:
    gate = Gate(output="late")
    # No node_id: the daemon picks it, and the node keeps it for the next registration.
    node = Node(daemon.url, gate, capacity=2, reconnect_delay=0.01)
    with trio.fail_after(10):

        async def first() -> None:
            peer = await daemon.accept()
            message = await register(peer, node_id="chosen-1", epoch=1)
            assert message.node_id is None
            await peer.send(assign("j1", attempt=2))
            await peer.send(assign("j2", attempt=1))
            await peer.recv(Accept)
            await peer.recv(Accept)

        nursery.start_soon(first)
        await start_node(nursery, node)
        assert node.node_id == "chosen-1"
        await until(lambda: len(gate.contexts) == 2)
        await daemon.peers[0].close()
        peer = await daemon.accept()
        message = await register(peer, epoch=2)
        assert message.node_id == "chosen-1"
        assert sorted(message.running, key=lambda job: job.job_id) == [
            RunningJob(job_id="j1", attempt=2),
            RunningJob(job_id="j2", attempt=1),
        ]
        await until(lambda: node.epoch == 2)
        gate.release.set()
        results = {(await peer.recv(Result)).job_id for _ in range(2)}
        assert results == {"j1", "j2"}


async def test_results_finished_while_disconnected_are_sent_after_registering(
    daemon: FakeDaemon, nursery: trio.Nursery
) -> None:
    gate = Gate(output="offline")
    node = Node(daemon.url, gate, reconnect_delay=0.01)
    accepted = trio.Event()
    with trio.fail_after(10):

        async def first() -> None:
            peer = await daemon.accept()
            await register(peer, node_id="n1")
            await peer.send(assign("j1", attempt=1))
            await peer.recv(Accept)
            accepted.set()

        nursery.start_soon(first)
        await start_node(nursery, node)
        await gate.started.wait()
        await accepted.wait()  # the job starts as its accept is written, not after
        await daemon.peers[0].close()
        peer = await daemon.accept()  # connected, but the handshake waits until the job ends
        await daemon.peers[0].closed.wait()
        gate.release.set()
        await gate.finished.wait()
        await trio.testing.wait_all_tasks_blocked()
        assert node.running == {}
        message = await register(peer, node_id="n1", epoch=2)
        # Its result is not confirmed yet: the job is still the node's.
        assert message.running == [RunningJob(job_id="j1", attempt=1)]
        result = await peer.recv(Result)
        assert (result.job_id, result.ok, result.output) == ("j1", True, "offline")
        # The pong after it confirms it: the outbox empties.
        await until(lambda: not node._outbox)


async def test_drain_from_daemon_rejects_new_assigns(
    daemon: FakeDaemon, nursery: trio.Nursery
) -> None:
    gate = Gate()
    node = Node(daemon.url, gate, capacity=4)
    with trio.fail_after(10):

        async def script() -> None:
            peer = await daemon.accept()
            await register(peer)
            await peer.send(assign("j1"))
            await peer.recv(Accept)
            await peer.send(Drain(reason="instance shutting down"))
            await peer.send(assign("j2"))
            reject = await peer.recv(Reject)
            assert (reject.job_id, reject.attempt, reject.reason) == ("j2", 1, "draining")
            gate.release.set()
            result = await peer.recv(Result)  # the running job still finishes
            assert result.job_id == "j1" and result.ok
            finished.set()

        finished = trio.Event()
        nursery.start_soon(script)
        await start_node(nursery, node)
        await finished.wait()
        assert node.draining


async def test_undrain_from_daemon_takes_assigns_again(
    daemon: FakeDaemon, nursery: trio.Nursery
) -> None:
    gate = Gate()
    gate.release.set()
    node = Node(daemon.url, gate, capacity=4)
    with trio.fail_after(10):

        async def script() -> None:
            peer = await daemon.accept()
            await register(peer)
            await peer.send(Drain(reason="operator"))
            await peer.send(assign("j1"))
            assert (await peer.recv(Reject)).reason == "draining"
            await peer.send(Undrain(reason="operator lifted it"))
            await peer.send(assign("j2"))
            assert (await peer.recv(Accept)).job_id == "j2"
            finished.set()

        finished = trio.Event()
        nursery.start_soon(script)
        await start_node(nursery, node)
        await finished.wait()
        assert not node.draining


async def test_node_drain_request_and_unavailable(
    daemon: FakeDaemon, nursery: trio.Nursery
) -> None:
    node = Node(daemon.url, Gate())
    with trio.fail_after(10):
        peers: list[FakePeer] = []

        async def script() -> None:
            peer = await daemon.accept()
            peers.append(peer)
            await register(peer)
            drain = await peer.recv(Drain)
            assert drain.ref is not None
            await peer.send(Drain(reason=drain.reason, ref=drain.ref))
            peer.auto_pong = False  # the pong confirming it comes after the daemon's answer
            unavailable = await peer.recv(Unavailable)
            assert (unavailable.service, unavailable.ttl) == ("mt", 30.0)
            await peer.send(Pong(ref=(await peer.recv(Ping)).ref))
            refused = await peer.recv(Unavailable)
            await peer.send(Error(code="E_STALE_EPOCH", message="old", ref=refused.ref))
            await peer.send(Pong(ref=(await peer.recv(Ping)).ref))

        nursery.start_soon(script)
        await start_node(nursery, node)
        await node.drain()
        assert node.draining
        await node.mark_unavailable("mt", 30.0)
        with pytest.raises(RequestFailed) as failed:
            await node.mark_unavailable("asr", 5.0)
        assert failed.value.code == "E_STALE_EPOCH"


async def test_capacity_full_rejects_and_heartbeats_report_load(
    daemon: FakeDaemon, nursery: trio.Nursery
) -> None:
    gate = Gate()
    node = Node(daemon.url, gate, capacity=2, heartbeat_interval=0.02)
    with trio.fail_after(10):
        peers: list[FakePeer] = []

        async def script() -> None:
            peer = await daemon.accept()
            peers.append(peer)
            await register(peer)
            for index in range(3):
                await peer.send(assign(f"j{index}"))
            await peer.recv(Accept)
            await peer.recv(Accept)
            reject = await peer.recv(Reject)
            assert reject.job_id == "j2" and reject.reason == "no free slot"
            answered.set()

        # the peer's messages are read by one task at a time: the script until it has the
        # reject, then the test (two readers could each take the other's message)
        answered = trio.Event()
        nursery.start_soon(script)
        await start_node(nursery, node)
        await answered.wait()
        assert len(node.running) == 2
        peer = peers[0]
        while True:
            beat = await peer.recv(Heartbeat, skip=(Accept, Reject))
            if beat.inflight == 2:
                break
        assert sorted(beat.running) == ["j0", "j1"] and beat.load == 1.0


async def test_auth_refusal_ends_run(daemon: FakeDaemon, nursery: trio.Nursery) -> None:
    node = Node(daemon.url, Gate(), token="bad")

    async def script() -> None:
        peer = await daemon.accept()
        await peer.refuse("E_AUTH", "token refused")

    nursery.start_soon(script)
    with trio.fail_after(10), pytest.raises(RequestFailed) as failed:
        await node.run()
    assert failed.value.code == "E_AUTH"
    assert daemon.connections == 1


async def test_fatal_register_refusal_ends_run(daemon: FakeDaemon, nursery: trio.Nursery) -> None:
    node = Node(daemon.url, Gate(), node_id="someone-else")

    async def script() -> None:
        peer = await daemon.accept()
        await peer.handshake("node")
        message = await peer.recv(Register)
        await peer.send(Error(code="E_IDENTITY", message="not yours", ref=message.ref))

    nursery.start_soon(script)
    with trio.fail_after(10), pytest.raises(RequestFailed) as failed:
        await node.run()
    assert failed.value.code == "E_IDENTITY"


async def test_bad_messages_do_not_kill_the_reader(
    daemon: FakeDaemon, nursery: trio.Nursery
) -> None:
    async def handler(ctx: JobContext) -> Any:
        return ctx.payload

    node = Node(daemon.url, handler)
    with trio.fail_after(10):

        async def script() -> None:
            peer = await daemon.accept()
            await register(peer)
            await peer.send_raw(b"\xff\xfe")
            await peer.send_raw(b'{"type": "assign", "job_id": "j0"}')
            await peer.send_raw(b"[1, 2]")
            await peer.send(Ping(ref="alive"))
            assert (await peer.recv(Pong)).ref == "alive"
            await peer.send(assign(payload=[1, 2]))
            await peer.recv(Accept)
            result = await peer.recv(Result)
            assert result.output == [1, 2]
            finished.set()

        finished = trio.Event()
        nursery.start_soon(script)
        await start_node(nursery, node)
        await finished.wait()


async def test_output_that_is_not_json_fails_the_job(
    daemon: FakeDaemon, nursery: trio.Nursery
) -> None:
    async def handler(ctx: JobContext) -> Any:
        return {1, 2}  # a set: not JSON

    node = Node(daemon.url, handler)
    with trio.fail_after(10):

        async def script() -> None:
            peer = await daemon.accept()
            await register(peer)
            await peer.send(assign())
            await peer.recv(Accept)
            result = await peer.recv(Result)
            assert not result.ok and result.error is not None
            assert result.error.code == "E_NODE_EXCEPTION"
            finished.set()

        finished = trio.Event()
        nursery.start_soon(script)
        await start_node(nursery, node)
        await finished.wait()


async def test_an_unsupported_url_is_a_value_error() -> None:
    node = Node("http://127.0.0.1:1", Gate())
    with trio.fail_after(10), pytest.raises(ValueError, match="scheme"):
        await node.run()


async def test_node_retries_until_a_daemon_answers(nursery: trio.Nursery) -> None:
    daemon = await start_fake_daemon(nursery)
    node = Node([closed_port_url(), daemon.url], Gate(), reconnect_delay=0.01)

    async def script() -> None:
        peer = await daemon.accept()
        await peer.refuse("E_UNAVAILABLE", "store down")  # retried, unlike E_AUTH
        peer = await daemon.accept()
        await register(peer)

    nursery.start_soon(script)
    with trio.fail_after(10):
        await start_node(nursery, node)
    assert daemon.connections == 2


# ---------------------------------------------------------------------------------------------
# End to end: the SDKs against the real daemon (tests/daemon/harness.py runs it in-process; its
# connections are in-memory channels, so the SDKs' open_channel is swapped for one of those).
# ---------------------------------------------------------------------------------------------


async def test_end_to_end_with_the_daemon_across_dropped_connections(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from collections.abc import AsyncIterator
    from contextlib import asynccontextmanager

    import schedd.sdk._dial
    from schedd.sdk.client import Client
    from tests.daemon.harness import MemoryChannel, channel_pair, running_daemon

    release = trio.Event()

    async def handler(ctx: JobContext) -> Any:
        await ctx.progress({"step": 1})
        await release.wait()
        return {"echo": ctx.payload, "attempt": ctx.attempt}

    with trio.fail_after(10):
        async with running_daemon(tmp_path=tmp_path) as daemon:
            opened: dict[str, MemoryChannel] = {}

            @asynccontextmanager
            async def open_memory_channel(url: str, **_: Any) -> AsyncIterator[MemoryChannel]:
                ours, theirs = channel_pair()
                daemon.nursery.start_soon(daemon.app.serve_channel, theirs)
                opened[url] = ours
                try:
                    yield ours
                finally:
                    await ours.aclose()

            monkeypatch.setattr(schedd.sdk._dial, "open_channel", open_memory_channel)
            async with trio.open_nursery() as nursery:
                node = Node(
                    "tcp://node:1", handler, pools=["p"], node_id="n1", reconnect_delay=0.01
                )
                await nursery.start(node.run)
                async with Client.connect("tcp://client:1") as client:
                    handle = await client.submit({"a": 1}, pools=["p"])
                    progress = handle.progress()
                    assert await progress.__anext__() == {"step": 1}
                    # Both connections drop while the job runs; both come back on their own.
                    await opened["tcp://node:1"].aclose()
                    await opened["tcp://client:1"].aclose()
                    await until(lambda: (node.epoch or 0) >= 2 and client._link is not None)
                    assert list(node.running) == [handle.job_id]
                    release.set()
                    done = await handle.result()
                    assert done.ok and done.output == {"echo": {"a": 1}, "attempt": 1}
                    assert done.node == "n1" and done.attempts == 1
                    again = await client.submit({"a": 1}, pools=["p"], job_id=handle.job_id)
                    assert again.duplicate
                    assert (await again.result()).output == done.output
                    await node.drain()
                    assert node.draining
                nursery.cancel_scope.cancel()
