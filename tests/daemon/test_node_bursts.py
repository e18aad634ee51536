"""A node's burst of accepts and results: one job_result_many call, each message answered as
if alone (docs/decisions/0026-node-batches.md). Over both transports, read by the hub; the
paths that change jobs on both stores."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from schedd import protocol as p
from schedd.errors import StoreUnavailable
from schedd.session import node as node_role
from schedd.transport import StreamChannel, WebSocketChannel
from tests.daemon.harness import Peer, running_daemon, wire_channels

Channel = StreamChannel | WebSocketChannel


async def wire_node(d: Any, node_id: str, transport: str, capacity: int,
                    running: list[p.RunningJob] | None = None) -> Channel:
    """A node registered over a real socket that the daemon reads through its readiness hub."""
    daemon_side, node = wire_channels(d, transport)
    d.nursery.start_soon(d.app.serve_channel, daemon_side)
    await node.send(p.encode(p.Hello(role="node", version=p.PROTOCOL_VERSION)))
    assert isinstance(p.decode(await node.receive()), p.Welcome)
    await node.send(p.encode(p.Register(node_id=node_id, capacity=capacity, pools=["p"],
                                        running=running or [])))
    assert isinstance(p.decode(await node.receive()), p.Registered)
    return node


async def submit(client: Peer, count: int) -> list[str]:
    ids = []
    for n in range(count):
        await client.send(p.Submit(pools=["p"], ref=f"s{n}"))
        ids.append((await client.expect(p.Accepted)).job_id)
    return ids


async def assigns(node: Channel, count: int) -> list[p.Assign]:
    got: list[p.Assign] = []
    while len(got) < count:
        message = p.decode(await node.receive())
        if isinstance(message, p.Assign):
            got.append(message)
    return got


async def pong(node: Channel, ref: str) -> list[p.Message]:
    """What the daemon sends the node up to the pong of a ping sent now."""
    await node.send(p.encode(p.Ping(ref=ref)))
    seen: list[p.Message] = []
    while True:
        message = p.decode(await node.receive())
        if isinstance(message, p.Pong) and message.ref == ref:
            return seen
        seen.append(message)


def record_scripts(monkeypatch: pytest.MonkeyPatch, d: Any) -> list[str]:
    """The name of every script the daemon calls from now on."""
    names: list[str] = []
    scripts = d.app.core.scripts
    real_call = scripts.call

    async def call(store: Any, name: str, keys: Any, args: Any) -> Any:
        names.append(name)
        return await real_call(store, name, keys, args)

    monkeypatch.setattr(scripts, "call", call)
    return names


async def dones(client: Peer, count: int) -> dict[str, p.Done]:
    got: dict[str, p.Done] = {}
    for _ in range(count):
        done = await client.expect(p.Done)
        assert done.job_id not in got, f"two dones for {done.job_id}"
        got[done.job_id] = done
    return got


async def nothing_more(client: Peer) -> None:
    """The client gets nothing more (its pong comes next)."""
    await client.send(p.Ping(ref="end"))
    assert (await client.expect(p.Pong)).ref == "end"


@pytest.mark.parametrize("packing", ["frames", "array", "array then frames"])
@pytest.mark.parametrize("transport", ["tcp", "ws"])
async def test_a_burst_of_results_is_one_script_call_and_each_job_done_once(
    monkeypatch: pytest.MonkeyPatch, transport: str, packing: str, store_url: str,
) -> None:
    async with running_daemon(store_url) as d:
        node = await wire_node(d, "n1", transport, capacity=6)
        client = await d.connect("client")
        ids = await submit(client, 6)
        got = await assigns(node, 6)
        assert {a.job_id for a in got} == set(ids)
        names = record_scripts(monkeypatch, d)
        with trio.fail_after(10):
            frames = []
            for n, a in enumerate(got):  # accepts and results, some apart, some together
                if n % 2:
                    frames.append(p.encode(p.Accept(job_id=a.job_id, attempt=a.attempt)))
                frames.append(p.encode(p.Result(job_id=a.job_id, attempt=a.attempt, ok=True,
                                                output={"n": n}, ref=f"r{n}")))
            if packing == "array":  # one array frame
                frames = [p.encode_batch(frames)]
            elif packing == "array then frames":  # an array frame, then frames, in one write
                frames = [p.encode_batch(frames[:4]), *frames[4:]]
            await node.send_many(frames)  # one write
            finished = await dones(client, 6)
            assert await pong(node, "after") == []  # nothing refused
            await nothing_more(client)
        assert {j: (m.state, m.output) for j, m in finished.items()} == {
            a.job_id: ("done", {"n": n}) for n, a in enumerate(got)}
        assert finished[got[1].job_id].timings["accepted"] > 0
        assert names.count("job_result_many") == 1
        assert "job_result" not in names and "job_accept" not in names


@pytest.mark.parametrize("transport", ["tcp", "ws"])
async def test_a_result_for_another_nodes_job_is_refused_alone(transport: str,
                                                               store_url: str) -> None:
    async with running_daemon(store_url) as d:
        n1 = await wire_node(d, "n1", transport, capacity=2)
        client = await d.connect("client")
        mine = await submit(client, 2)
        await assigns(n1, 2)
        n2 = await wire_node(d, "n2", transport, capacity=1)
        (theirs,) = await submit(client, 1)
        (their_assign,) = await assigns(n2, 1)
        assert their_assign.job_id == theirs
        with trio.fail_after(10):
            await n1.send_many([
                p.encode(p.Result(job_id=mine[0], attempt=1, ok=True, ref="a")),
                p.encode(p.Result(job_id=theirs, attempt=1, ok=True, ref="foreign")),
                p.encode(p.Accept(job_id=theirs, attempt=1, ref="foreign-accept")),
                p.encode(p.Result(job_id=mine[1], attempt=1, ok=True, ref="b")),
            ])
            finished = await dones(client, 2)
            answers = await pong(n1, "after")
        assert set(finished) == set(mine)
        assert [(type(m), getattr(m, "code", None), m.ref, getattr(m, "job_id", None))
                for m in answers] == [
            (p.Error, "E_STALE_ATTEMPT", "foreign", theirs),
            (p.Error, "E_STALE_ATTEMPT", "foreign-accept", theirs)]
        assert isinstance(answers[0], p.Error)
        assert "n2" not in answers[0].message  # the holder is not n1's business
        info = await d.app.queries.job(theirs)
        assert info is not None and (info.state, info.node) == ("assigned", "n2")
        with trio.fail_after(10):  # n2 still owns its job and finishes it
            await n2.send(p.encode(p.Result(job_id=theirs, attempt=1, ok=True)))
            assert (await client.expect(p.Done)).job_id == theirs
            await nothing_more(client)


@pytest.mark.parametrize("transport", ["tcp", "ws"])
async def test_a_connection_dropped_in_a_burst_finishes_nothing_twice(transport: str,
                                                                      store_url: str) -> None:
    async with running_daemon(store_url) as d:
        n1 = await wire_node(d, "n1", transport, capacity=4)
        client = await d.connect("client")
        ids = await submit(client, 4)
        got = await assigns(n1, 4)
        n2 = await wire_node(d, "n2", transport, capacity=4)
        sent = got[:2]
        with trio.fail_after(10):
            await n1.send_many([p.encode(p.Result(job_id=a.job_id, attempt=a.attempt, ok=True))
                                for a in sent])
            await n1.aclose()  # gone in the middle of its work
            finished = await dones(client, 2)
            assert set(finished) == {a.job_id for a in sent}
            # the jobs it had no result for are retried as for any lost node: on n2
            retried = await assigns(n2, 2)
        assert {a.job_id for a in retried} == set(ids) - set(finished)
        assert {a.attempt for a in retried} == {2}
        # n1 comes back and sends its results again (it saw no confirmation): repeats, no-ops;
        # its old attempts of the retried jobs are stale
        n1 = await wire_node(d, "n1", transport, capacity=4)
        with trio.fail_after(10):
            await n1.send_many([p.encode(p.Result(job_id=a.job_id, attempt=a.attempt, ok=True,
                                                  ref=f"again{n}"))
                                for n, a in enumerate(got)])
            answers = await pong(n1, "after")
            assert [(m.code, m.ref) for m in answers if isinstance(m, p.Error)] == [
                ("E_STALE_ATTEMPT", "again2"), ("E_STALE_ATTEMPT", "again3")]
            await n2.send_many([p.encode(p.Result(job_id=a.job_id, attempt=2, ok=True))
                                for a in retried])
            finished.update(await dones(client, 2))
            await nothing_more(client)
        assert set(finished) == set(ids)
        counts = await d.app.queries.counts()
        assert counts["done"] == 4 and counts["total:done"] == 4


@pytest.mark.parametrize("transport", ["tcp", "ws"])
async def test_a_burst_the_store_cannot_take_answers_each_message(
    monkeypatch: pytest.MonkeyPatch, transport: str,
) -> None:
    async with running_daemon() as d:
        node = await wire_node(d, "n1", transport, capacity=3)
        client = await d.connect("client")
        await submit(client, 3)
        got = await assigns(node, 3)

        async def unavailable(*args: Any, **kwargs: Any) -> Any:
            raise StoreUnavailable("connection to redis lost")

        monkeypatch.setattr(d.app.core, "finish_many", unavailable)
        with trio.fail_after(10):
            await node.send_many([
                p.encode(p.Accept(job_id=got[0].job_id, attempt=1, ref="a0")),
                p.encode(p.Result(job_id=got[0].job_id, attempt=1, ok=True, ref="r0")),
                p.encode(p.Result(job_id=got[1].job_id, attempt=1, ok=True, ref="r1"))])
            answers = await pong(node, "after")
        assert [(m.code, m.ref) for m in answers if isinstance(m, p.Error)] == [
            (p.E_UNAVAILABLE, "a0"), (p.E_UNAVAILABLE, "r0"), (p.E_UNAVAILABLE, "r1")]
        assert len(answers) == 3
        monkeypatch.undo()
        for job_id in (got[0].job_id, got[1].job_id):
            info = await d.app.queries.job(job_id)
            assert info is not None and info.state == "assigned"


@pytest.mark.parametrize("transport", ["tcp", "ws"])
async def test_a_long_run_is_cut_at_the_bound_and_the_rest_follows(
    monkeypatch: pytest.MonkeyPatch, transport: str,
) -> None:
    monkeypatch.setattr(node_role, "MAX_BURST", 2)
    async with running_daemon() as d:
        node = await wire_node(d, "n1", transport, capacity=5)
        client = await d.connect("client")
        ids = await submit(client, 5)
        got = await assigns(node, 5)
        names = record_scripts(monkeypatch, d)
        with trio.fail_after(10):
            await node.send_many([p.encode(p.Result(job_id=a.job_id, attempt=1, ok=True))
                                  for a in got])
            finished = await dones(client, 5)
            assert await pong(node, "after") == []
        assert set(finished) == set(ids)
        assert names == ["job_result_many", "job_result_many", "job_result"]


@pytest.mark.parametrize("transport", ["tcp", "ws"])
async def test_a_heartbeat_inside_an_array_ends_the_run_and_keeps_its_place(
    monkeypatch: pytest.MonkeyPatch, transport: str,
) -> None:
    async with running_daemon() as d:
        node = await wire_node(d, "n1", transport, capacity=4)
        client = await d.connect("client")
        ids = await submit(client, 4)
        got = await assigns(node, 4)
        names = record_scripts(monkeypatch, d)
        results = [p.encode(p.Result(job_id=a.job_id, attempt=a.attempt, ok=True, output=n,
                                     ref=f"r{n}")) for n, a in enumerate(got)]
        beat = p.encode(p.Heartbeat(inflight=2, load=0.5, running=[a.job_id for a in got[2:]]))
        with trio.fail_after(10):
            await node.send(p.encode_batch([*results[:2], beat, *results[2:]]))
            finished = await dones(client, 4)
            assert await pong(node, "after") == []
            await nothing_more(client)
        assert set(finished) == set(ids)
        # two runs of two results, the heartbeat handled between them
        assert names.count("job_result_many") == 2, names
