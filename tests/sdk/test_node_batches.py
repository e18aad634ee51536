"""The node SDK writes a job's messages that are ready together in one write."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import pytest
import trio
import trio.lowlevel

from schedd.protocol import Accept, Assign, Heartbeat, Message, Ping, Result, encode, encode_frame
from schedd.sdk._conn import Link, LinkLost
from schedd.sdk._node_out import Batcher
from schedd.sdk.node import JobContext, Node
from tests.sdk import FakeDaemon, start_fake_daemon
from tests.sdk.test_node import register


@pytest.fixture(params=["tcp", "ws"])
async def daemon(request: pytest.FixtureRequest, nursery: trio.Nursery) -> FakeDaemon:
    return await start_fake_daemon(nursery, websocket=request.param == "ws")


def record_writes(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Each write of a batch from now on: the kind and job of each message in it."""
    writes: list[list[str]] = []
    real = Link.send_all

    async def send_all(self: Link, messages: Sequence[tuple[Message, Sequence[bytes]]]) -> None:
        writes.append([f"{m.TYPE} {getattr(m, 'job_id', '')}".strip() for m, _ in messages])
        await real(self, messages)

    monkeypatch.setattr(Link, "send_all", send_all)
    return writes


def assign(job_id: str) -> Assign:
    return Assign(job_id=job_id, attempt=1, deadline=1_700_000_000_000, payload=job_id)


async def instant(ctx: JobContext) -> Any:
    return ctx.payload


async def test_a_job_that_takes_no_time_sends_accept_result_and_ping_in_one_write(
    daemon: FakeDaemon, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch,
) -> None:
    writes = record_writes(monkeypatch)
    node = Node(daemon.url, instant)
    with trio.fail_after(10):
        nursery.start_soon(node.run)
        peer = await daemon.accept()
        await register(peer)
        await peer.send(assign("j1"))
        assert (await peer.recv(Accept)).job_id == "j1"
        result = await peer.recv(Result)
        assert (result.job_id, result.output) == ("j1", "j1")
        while node._outbox:  # confirmed by the pong of the ping behind it
            await trio.sleep(0.01)
    assert writes == [["accept j1", "result j1", "ping"]]


async def test_assigns_read_together_are_accepted_and_finished_in_few_writes(
    daemon: FakeDaemon, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch,
) -> None:
    writes = record_writes(monkeypatch)
    node = Node(daemon.url, instant, capacity=4)
    with trio.fail_after(10):
        nursery.start_soon(node.run)
        peer = await daemon.accept()
        await register(peer)
        frames = [encode(assign(f"j{n}")) for n in range(4)]
        if peer._ws is None:  # one TCP write holding the four
            await peer.stream.send_all(b"".join(encode_frame(f) for f in frames))
        else:
            for frame in frames:
                await peer.send_raw(frame)
        results = [await peer.recv(Result, skip=(Accept, Ping, Heartbeat)) for _ in range(4)]
        assert sorted(r.job_id for r in results) == ["j0", "j1", "j2", "j3"]
        while node._outbox:
            await trio.sleep(0.01)
    sent = [m for write in writes for m in write]
    assert sorted(m for m in sent if m.startswith("accept")) == [f"accept j{n}" for n in range(4)]
    assert sent.count("ping") <= 4
    assert [] not in writes and len(writes) <= 4  # 4 accepts, 4 results and their pings
    # a job's accept is never written after its result
    for n in range(4):
        assert sent.index(f"accept j{n}") < sent.index(f"result j{n}")


class BrokenLink:
    """A link whose writes fail (the connection is gone)."""

    url = "tcp://nowhere"
    closed = False

    def __init__(self) -> None:
        self.writes: list[list[Message]] = []

    async def send_all(self, messages: Sequence[tuple[Message, Sequence[bytes]]]) -> None:
        self.writes.append([m for m, _ in messages])
        await trio.lowlevel.checkpoint()
        raise LinkLost("connection to tcp://nowhere lost")


async def test_a_failed_write_fails_what_waits_and_every_later_post() -> None:
    link = BrokenLink()
    batcher = Batcher(cast(Link, link))
    failed: list[str] = []

    async def send(job_id: str) -> None:
        try:
            await batcher.send(Accept(job_id=job_id, attempt=1))
        except LinkLost:
            failed.append(job_id)

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(batcher.serve)
            nursery.start_soon(send, "j1")
            nursery.start_soon(send, "j2")
    assert sorted(failed) == ["j1", "j2"]
    # both were posted before the writer woke: one write, which failed for both
    assert [sorted(m.job_id for m in write if isinstance(m, Accept))
            for write in link.writes] == [["j1", "j2"]]
    with pytest.raises(LinkLost):
        batcher.post(Ping())  # ended: refused at once


async def test_messages_queued_when_the_writer_is_cancelled_fail() -> None:
    link = BrokenLink()
    batcher = Batcher(cast(Link, link))
    write = batcher.post(Ping())
    with trio.CancelScope() as scope:
        scope.cancel()
        await batcher.serve()
    assert write.error is not None and write.done.is_set()
    with pytest.raises(LinkLost):
        batcher.post(Ping())
