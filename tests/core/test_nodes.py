"""Node scripts against the embedded store and a real redis-server (one parametrised suite)."""

from __future__ import annotations

import pytest
import trio

from schedd import errors
from schedd.core import AssignDelivery, DrainNode, Queries
from schedd.store.base import Store
from tests.core.helpers import make_core, spec


async def test_register_generates_id_and_increments_epoch(store: Store) -> None:
    core, _ = await make_core(store)
    first = await core.register_node(node_id=None, capacity=2, pools=["p"])
    assert first.node_id.startswith("node-")
    again = await core.register_node(node_id=first.node_id, capacity=2, pools=["p"])
    assert again.epoch > first.epoch
    other = await core.register_node(node_id="n2", capacity=1, pools=["p"])
    assert other.epoch > again.epoch


async def test_register_rejects_bad_arguments(store: Store) -> None:
    core, _ = await make_core(store)
    with pytest.raises(errors.BadArgument, match="capacity"):
        await core.register_node(node_id="n", capacity=0, pools=["p"])
    with pytest.raises(errors.BadArgument, match="pool keys"):
        await core.register_node(node_id="n", capacity=1, pools=[""])
    with pytest.raises(errors.BadArgument, match="JSON array"):
        await core.scripts.call(
            store, "node_register", [core.keys.node("n"), core.keys.nodes, core.keys.alive],
            ["A", "n", 1, "not json", "{}", "{}", 1000],
        )


async def test_script_refuses_keys_without_namespace_tag(store: Store) -> None:
    core, _ = await make_core(store)
    with pytest.raises(errors.BadArgument, match="namespace tag"):
        await core.scripts.call(store, "job_follow", ["job:x"], ["A", "", "x"])


async def test_reregister_moves_pools_atomically(store: Store) -> None:
    core, _ = await make_core(store)
    q = Queries(store, core.keys)
    await core.register_node(node_id="n1", capacity=3, pools=["a", "b"])
    pools = {p.pool: p for p in await q.pools()}
    assert pools["a"].members == {"n1": 3} and pools["b"].members == {"n1": 3}
    await core.register_node(node_id="n1", capacity=3, pools=["b", "c"])
    pools = {p.pool: p for p in await q.pools()}
    assert "a" not in pools
    assert pools["b"].members == {"n1": 3} and pools["c"].members == {"n1": 3}


async def test_register_hands_queued_work_to_new_node(store: Store) -> None:
    core, rec = await make_core(store)
    sub = await core.submit(spec("gpu", payload={"x": 1}))
    assert sub.state == "queued"
    await core.register_node(node_id="n1", capacity=1, pools=["gpu"])
    (assign,) = rec.of(AssignDelivery)
    assert (assign.job_id, assign.node_id, assign.attempt) == (sub.job_id, "n1", 1)
    assert assign.payload_json == '{"x":1}'


async def test_reregister_keeps_running_jobs(store: Store) -> None:
    core, _ = await make_core(store)
    await core.register_node(node_id="n1", capacity=2, pools=["p"])
    sub = await core.submit(spec("p"))
    await core.accept(sub.job_id, node_id="n1", attempt=1)
    reg = await core.register_node(node_id="n1", capacity=2, pools=["p"])
    assert reg.used == 1
    state, dup = await core.result(sub.job_id, node_id="n1", attempt=1, ok=True)
    assert (state, dup) == ("done", False)
    (pool,) = await Queries(store, core.keys).pools()
    assert pool.members == {"n1": 2}


async def test_heartbeat_batch_refreshes_and_reports_stale(store: Store) -> None:
    core, _ = await make_core(store)
    reg = await core.register_node(node_id="n1", capacity=1, pools=["p"])
    before = await store.execute("ZSCORE", core.keys.alive, "n1")
    await trio.sleep(0.01)
    stale = await core.heartbeat_batch([("n1", reg.epoch, 0.5, 0), ("ghost", 1, 0, 0),
                                        ("n1x", 7, 0, 0)])
    assert stale == ["ghost", "n1x"]
    after = await store.execute("ZSCORE", core.keys.alive, "n1")
    assert float(after) > float(before)
    (node,) = await Queries(store, core.keys).nodes()
    assert node.load == 0.5
    # an old epoch is stale too: the connection must register again
    await core.register_node(node_id="n1", capacity=1, pools=["p"])
    assert await core.heartbeat_batch([("n1", reg.epoch, 0, 0)]) == ["n1"]
    assert "A" in await Queries(store, core.keys).instances()
    with pytest.raises(errors.BadArgument):
        await core.scripts.call(store, "heartbeat_batch",
                                [core.keys.alive, core.keys.instances], ["A", 1000, 1000, "n1"])


async def test_heartbeat_times_and_load(store: Store) -> None:
    core, _ = await make_core(store)
    reg = await core.register_node(node_id="n1", capacity=2, pools=["p"])
    sub = await core.submit(spec("p"))
    await core.accept(sub.job_id, node_id="n1", attempt=1)
    reg = await core.register_node(node_id="n1", capacity=2, pools=["p"])
    (node,) = await Queries(store, core.keys).nodes()
    registered = node.last_heartbeat_ms
    assert registered > 0 and node.load == 0.0
    beat = (await store.execute("HGET", core.keys.beats, "n1")).decode()
    assert beat == f"{registered} 0 1"  # registration: no load yet, one job held
    await trio.sleep(0.01)
    await core.heartbeat_batch([("n1", reg.epoch, 0.25, 1)])
    (node,) = await Queries(store, core.keys).nodes()
    assert node.last_heartbeat_ms > registered and node.load == 0.25
    beat = (await store.execute("HGET", core.keys.beats, "n1")).decode()
    assert beat == f"{node.last_heartbeat_ms} 0.25 1"
    # the node hash is not written by heartbeats
    assert await store.execute("HMGET", core.keys.node("n1"), "load", "t_hb") == [None, None]


async def test_heartbeat_batch_larger_than_one_write(store: Store) -> None:
    """1,200 nodes: the script writes liveness and heartbeat times in chunks of 500 nodes."""
    core, _ = await make_core(store)
    epochs = {}
    for i in range(1200):
        reg = await core.register_node(node_id=f"n{i}", capacity=1, pools=["p"])
        epochs[f"n{i}"] = reg.epoch
    await store.execute("DEL", core.keys.alive, core.keys.beats)
    beats = [(node_id, epoch, 0.0, 0) for node_id, epoch in epochs.items()]
    beats.insert(600, ("ghost", 1, 0.0, 0))
    assert await core.heartbeat_batch(beats) == ["ghost"]
    assert await store.execute("ZCARD", core.keys.alive) == 1200
    assert await store.execute("HLEN", core.keys.beats) == 1200
    assert await store.execute("ZSCORE", core.keys.alive, "ghost") is None


async def test_heartbeat_of_an_offline_node_is_stale(store: Store) -> None:
    core, _ = await make_core(store)
    reg = await core.register_node(node_id="n1", capacity=1, pools=["p"])
    assert await store.execute("HGET", core.keys.fence, "n1") == f"{reg.epoch} A".encode()
    await core.node_offline("n1", epoch=reg.epoch, reason="bye")
    assert await store.execute("HEXISTS", core.keys.fence, "n1") == 0
    assert await core.heartbeat_batch([("n1", reg.epoch, 0, 0)]) == ["n1"]
    assert await store.execute("ZSCORE", core.keys.alive, "n1") is None
    # draining keeps the registration: its beats still count
    reg = await core.register_node(node_id="n1", capacity=1, pools=["p"])
    await core.drain_node("n1", epoch=reg.epoch)
    assert await core.heartbeat_batch([("n1", reg.epoch, 0, 0)]) == []


async def test_heartbeat_from_other_owner_is_stale(store: Store) -> None:
    a, _ = await make_core(store, "A")
    b, _ = await make_core(store, "B")
    reg = await a.register_node(node_id="n1", capacity=1, pools=["p"])
    assert await b.heartbeat_batch([("n1", reg.epoch, 0, 0)]) == ["n1"]


async def test_drain_stops_new_work_but_running_finishes(store: Store) -> None:
    core, rec = await make_core(store)
    reg = await core.register_node(node_id="n1", capacity=2, pools=["p"])
    sub = await core.submit(spec("p"))
    assert await core.drain_node("n1", epoch=reg.epoch, reason="maintenance") == 1
    assert rec.of(DrainNode)[0].node_id == "n1"
    second = await core.submit(spec("p"))
    assert second.state == "queued"
    state, _ = await core.result(sub.job_id, node_id="n1", attempt=1, ok=True)
    assert state == "done"
    # the queued job was not handed to the draining node
    assert (await Queries(store, core.keys).job(second.job_id)).state == "queued"  # type: ignore[union-attr]
    assert await core.drain_node("n1") == 0  # repeat (operator, any epoch) is harmless


async def test_drain_errors(store: Store) -> None:
    core, _ = await make_core(store)
    with pytest.raises(errors.NodeNotFound):
        await core.drain_node("nope")
    reg = await core.register_node(node_id="n1", capacity=1, pools=["p"])
    with pytest.raises(errors.StaleEpoch):
        await core.drain_node("n1", epoch=reg.epoch + 100)
    await core.node_offline("n1", epoch=reg.epoch, reason="test")
    with pytest.raises(errors.InvalidState):
        await core.drain_node("n1")


async def test_offline_requeues_jobs_and_excludes_node(store: Store) -> None:
    core, rec = await make_core(store)
    reg1 = await core.register_node(node_id="n1", capacity=1, pools=["p"])
    sub = await core.submit(spec("p"))
    assert rec.of(AssignDelivery)[-1].node_id == "n1"
    assert await core.node_offline("n1", epoch=reg1.epoch, reason="connection lost") == 1
    info = await Queries(store, core.keys).job(sub.job_id)
    assert info is not None and info.state == "queued" and info.tried == ["n1"]
    await core.register_node(node_id="n2", capacity=1, pools=["p"])
    last = rec.of(AssignDelivery)[-1]
    assert (last.node_id, last.attempt) == ("n2", 2)
    assert await core.node_offline("n1", epoch=reg1.epoch, reason="again") is None


async def test_offline_errors(store: Store) -> None:
    a, _ = await make_core(store, "A")
    with pytest.raises(errors.NodeNotFound):
        await a.node_offline("nope", epoch=1, reason="x")
    reg = await a.register_node(node_id="n1", capacity=1, pools=["p"])
    b, _ = await make_core(store, "B")
    with pytest.raises(errors.WrongOwner):
        await b.node_offline("n1", epoch=reg.epoch, reason="x")
    with pytest.raises(errors.StaleEpoch):
        await a.node_offline("n1", epoch=reg.epoch - 1, reason="x")


async def test_unavailable_service_excludes_node(store: Store) -> None:
    core, rec = await make_core(store)
    r1 = await core.register_node(node_id="n1", capacity=4, pools=["p"])
    await core.register_node(node_id="n2", capacity=1, pools=["p"])
    await core.mark_unavailable("n1", epoch=r1.epoch, service="tts", ttl=60)
    sub = await core.submit(spec("p", services=("tts",)))
    assert rec.of(AssignDelivery)[-1].node_id == "n2"
    # a job not needing tts still prefers n1 (most free slots)
    await core.submit(spec("p"))
    assert rec.of(AssignDelivery)[-1].node_id == "n1"
    queued = await core.submit(spec("p", services=("tts",)))
    assert queued.state == "queued"
    excl = await Queries(store, core.keys).exclusions()
    assert excl["unavailable:tts"] >= 1
    assert sub.state == "assigned"


async def test_unavailable_mark_expires(store: Store) -> None:
    core, rec = await make_core(store)
    r1 = await core.register_node(node_id="n1", capacity=1, pools=["p"])
    await core.mark_unavailable("n1", epoch=r1.epoch, service="tts", ttl=0.05)
    await trio.sleep(0.1)
    await core.submit(spec("p", services=("tts",)))
    assert rec.of(AssignDelivery)[-1].node_id == "n1"


async def test_unavailable_errors(store: Store) -> None:
    a, _ = await make_core(store, "A")
    with pytest.raises(errors.NodeNotFound):
        await a.mark_unavailable("nope", epoch=1, service="s", ttl=1)
    reg = await a.register_node(node_id="n1", capacity=1, pools=["p"])
    with pytest.raises(errors.BadArgument):
        await a.mark_unavailable("n1", epoch=reg.epoch, service="", ttl=1)
    with pytest.raises(errors.BadArgument):
        await a.scripts.call(store, "node_unavailable",
                             [a.keys.node("n1"), a.keys.node_unavail("n1")],
                             ["A", "n1", reg.epoch, "s", 0])
    with pytest.raises(errors.StaleEpoch):
        await a.mark_unavailable("n1", epoch=reg.epoch + 1, service="s", ttl=1)
    b, _ = await make_core(store, "B")
    with pytest.raises(errors.WrongOwner):
        await b.mark_unavailable("n1", epoch=reg.epoch, service="s", ttl=1)


async def test_unavailable_mark_of_any_length_is_written_as_whole_ms(store: Store) -> None:
    # 1e15 s is 1e18 ms: Lua formats such a number '1e+18', which PEXPIRE refused, and the
    # script's failure reached the node as "store unavailable"
    core, _ = await make_core(store)
    reg = await core.register_node(node_id="n1", capacity=1, pools=["p"])
    before = await store.execute("TIME")
    until = await core.mark_unavailable("n1", epoch=reg.epoch, service="s", ttl=1e15)
    # near 1e18 a double's neighbours are 128 apart: the mark is written rounded to one of them
    assert until >= int(before[0]) * 1000 + 10**18 - 128
    stored = await store.execute("HGET", core.keys.node_unavail("n1"), "s")
    assert int(stored) == until
    with pytest.raises(errors.BadArgument):  # ms are whole
        await core.scripts.call(store, "node_unavailable",
                                [core.keys.node("n1"), core.keys.node_unavail("n1")],
                                ["A", "n1", reg.epoch, "s", "1.5"])


async def test_reregister_with_fewer_slots_gives_excess_back(store: Store) -> None:
    from schedd.core import CancelJob

    core, rec = await make_core(store)
    await core.register_node(node_id="n1", capacity=2, pools=["p"])
    running = await core.submit(spec("p"))
    await core.accept(running.job_id, node_id="n1", attempt=1)
    assigned = await core.submit(spec("p"))
    await core.register_node(node_id="n2", capacity=1, pools=["p"])
    reg = await core.register_node(node_id="n1", capacity=1, pools=["p"])
    assert reg.used == 1
    (cancel,) = rec.of(CancelJob)
    assert (cancel.job_id, cancel.reason) == (assigned.job_id, "node capacity reduced")
    last = rec.of(AssignDelivery)[-1]
    assert (last.job_id, last.node_id, last.attempt) == (assigned.job_id, "n2", 2)


async def test_a_node_id_belongs_to_the_principal_that_registered_it(store: Store) -> None:
    core, rec = await make_core(store)
    owner, other = "token:aaaaaaaa", "token:bbbbbbbb"
    first = await core.register_node(node_id="n1", capacity=1, pools=["p"], principal=owner)
    await core.submit(spec("p", job_id="j1"))
    with pytest.raises(errors.NotYourNode, match="n1 is registered by another principal"):
        await core.register_node(node_id="n1", capacity=4, pools=["q"], principal=other)
    # the refused call changed nothing: same epoch, pools and job, no delivery
    record = await store.execute("HMGET", core.keys.node("n1"), "epoch", "pools", "principal")
    assert record == [str(first.epoch).encode(), b'["p"]', owner.encode()]
    assert await store.execute("SMEMBERS", core.keys.node_jobs("n1")) == [b"j1"]
    assert [d.node_id for d in rec.of(AssignDelivery)] == ["n1"]
    again = await core.register_node(node_id="n1", capacity=1, pools=["p"], principal=owner)
    assert again.epoch > first.epoch and again.used == 1


async def test_an_offline_node_id_stays_its_principals_until_collected(store: Store) -> None:
    core, _ = await make_core(store, node_retention=0.0)
    reg = await core.register_node(node_id="n1", capacity=1, pools=["p"],
                                   principal="token:aaaaaaaa")
    await core.node_offline("n1", epoch=reg.epoch, reason="gone")
    with pytest.raises(errors.NotYourNode):
        await core.register_node(node_id="n1", capacity=1, pools=["p"],
                                 principal="token:bbbbbbbb")
    await trio.sleep(0.01)
    assert (await core.reap())[2] == 1  # the offline record is collected
    taken = await core.register_node(node_id="n1", capacity=1, pools=["p"],
                                     principal="token:bbbbbbbb")
    assert taken.epoch > reg.epoch
    assert await store.execute("HGET", core.keys.node("n1"), "principal") == b"token:bbbbbbbb"


async def test_a_record_without_a_principal_is_taken_over(store: Store) -> None:
    core, _ = await make_core(store)
    await core.register_node(node_id="n1", capacity=1, pools=["p"], principal="token:aaaaaaaa")
    await store.execute("HDEL", core.keys.node("n1"), "principal")  # as an older version wrote
    await core.register_node(node_id="n1", capacity=1, pools=["p"], principal="token:bbbbbbbb")
    assert await store.execute("HGET", core.keys.node("n1"), "principal") == b"token:bbbbbbbb"
    with pytest.raises(errors.BadArgument, match="principal"):
        await core.register_node(node_id="n2", capacity=1, pools=["p"], principal="")
