"""Hand-off of queued work, the pools index and node selection, on both stores.

* a queued job is handed to a node when the unavailability mark that kept it there ends;
* a pool with no member leaves the pools index once its last queued job is gone, and a principal
  may keep only so many such pools in existence;
* selection prefers the least loaded of the nodes with the most free slots and spreads ties.
"""

from __future__ import annotations

import pytest
import trio

from schedd import errors
from schedd.core import AssignDelivery, Core, DoneDelivery, Queries
from schedd.store.base import Store
from tests.core.helpers import Recorder, make_core, spec


async def _reap_until_assigned(core: Core, rec: Recorder, job_id: str) -> AssignDelivery:
    """Run reaper passes (as the reaper service would) until the job is assigned."""
    with trio.fail_after(5):
        while True:
            await core.reap()
            for assign in rec.of(AssignDelivery):
                if assign.job_id == job_id:
                    return assign  # type: ignore[no-any-return]
            await trio.sleep(0.01)


# -- a mark's end hands queued work to the node


async def test_mark_expiry_hands_the_queued_job_to_the_node(store: Store) -> None:
    core, rec = await make_core(store)
    reg = await core.register_node(node_id="n1", capacity=1, pools=["p"])
    await core.mark_unavailable("n1", epoch=reg.epoch, service="tts", ttl=0.05)
    sub = await core.submit(spec("p", services=("tts",)))
    assert sub.state == "queued"
    # no other submit, no slot freed: only the mark's end can hand the job over
    assign = await _reap_until_assigned(core, rec, sub.job_id)
    assert assign.node_id == "n1"
    # the ended mark and its index entry are gone
    assert await store.execute("ZCARD", core.keys.unavail_due) == 0
    assert await store.execute("EXISTS", core.keys.node_unavail("n1")) == 0


async def test_each_mark_of_a_node_hands_over_at_its_own_end(store: Store) -> None:
    core, rec = await make_core(store)
    reg = await core.register_node(node_id="n1", capacity=2, pools=["p"])
    await core.mark_unavailable("n1", epoch=reg.epoch, service="asr", ttl=0.3)
    await core.mark_unavailable("n1", epoch=reg.epoch, service="tts", ttl=0.05)
    asr = await core.submit(spec("p", services=("asr",)))
    tts = await core.submit(spec("p", services=("tts",)))
    assert (asr.state, tts.state) == ("queued", "queued")
    await _reap_until_assigned(core, rec, tts.job_id)
    await _reap_until_assigned(core, rec, asr.job_id)
    assert await store.execute("ZCARD", core.keys.unavail_due) == 0


async def test_a_shorter_mark_moves_the_hand_off_earlier(store: Store) -> None:
    core, rec = await make_core(store)
    reg = await core.register_node(node_id="n1", capacity=1, pools=["p"])
    await core.mark_unavailable("n1", epoch=reg.epoch, service="tts", ttl=3600)
    sub = await core.submit(spec("p", services=("tts",)))
    await core.mark_unavailable("n1", epoch=reg.epoch, service="tts", ttl=0.05)
    assert (await _reap_until_assigned(core, rec, sub.job_id)).node_id == "n1"


async def test_an_offline_node_leaves_the_mark_index(store: Store) -> None:
    core, _ = await make_core(store)
    reg = await core.register_node(node_id="n1", capacity=1, pools=["p"])
    await core.mark_unavailable("n1", epoch=reg.epoch, service="tts", ttl=3600)
    assert await store.execute("ZCARD", core.keys.unavail_due) == 1
    await core.node_offline("n1", epoch=reg.epoch, reason="bye")
    assert await store.execute("ZCARD", core.keys.unavail_due) == 0


# -- the pools index does not grow without bound


async def _indexed(store: Store, core: Core) -> list[str]:
    return sorted(p.pool for p in await Queries(store, core.keys).pools())


async def test_throw_away_pools_leave_the_index_when_their_jobs_end(store: Store) -> None:
    core, rec = await make_core(store)
    for i in range(5):
        await core.submit(spec(f"junk-{i}", queue_timeout=0.05))
    canceled = await core.submit(spec("junk-c"))
    assert len(await _indexed(store, core)) == 6
    await core.cancel(canceled.job_id)
    with trio.fail_after(5):
        while len(rec.of(DoneDelivery)) < 6:
            await core.reap()
            await trio.sleep(0.01)
    assert await _indexed(store, core) == []
    assert await store.execute("HLEN", core.keys.pool_creator) == 0
    assert await store.execute("HLEN", core.keys.pools_created) == 0


async def test_a_pool_leaves_the_index_when_its_job_is_handed_over_elsewhere(store: Store) -> None:
    core, rec = await make_core(store)
    await core.register_node(node_id="n1", capacity=1, pools=["real"])
    first = await core.submit(spec("real"))
    queued = await core.submit(spec("ghost", "real"))
    assert queued.state == "queued"
    assert await _indexed(store, core) == ["ghost", "real"]
    await core.result(first.job_id, node_id="n1", attempt=1, ok=True, accepted=True)
    assert rec.of(AssignDelivery)[-1].job_id == queued.job_id
    assert await _indexed(store, core) == ["real"]


async def test_a_pool_a_node_joins_is_no_longer_charged(store: Store) -> None:
    core, _ = await make_core(store, max_created_pools=1)
    await core.submit(spec("a"))
    with pytest.raises(errors.QueueFull):
        await core.submit(spec("b"))
    await core.register_node(node_id="n1", capacity=1, pools=["a"])
    await core.submit(spec("b"))  # "a" has a member now: it no longer counts
    assert await _indexed(store, core) == ["a", "b"]


async def test_a_principal_may_keep_only_so_many_pools_without_members(store: Store) -> None:
    core, _ = await make_core(store, max_created_pools=2)
    first = await core.submit(spec("x1"), principal="alice")
    await core.submit(spec("x2", "x2"), principal="alice")
    with pytest.raises(errors.QueueFull, match="limit 2"):
        await core.submit(spec("x3"), principal="alice")
    # queueing into pools that exist creates nothing; another principal has its own allowance
    both = await core.submit(spec("x1", "x2"), principal="alice")
    await core.submit(spec("y1", "y2"), principal="bob")
    with pytest.raises(errors.QueueFull):
        await core.submit(spec("x3", "x1"), principal="alice")
    assert await _indexed(store, core) == ["x1", "x2", "y1", "y2"]
    # a pool that goes away gives its place back
    await core.cancel(first.job_id, principal="alice")
    assert await _indexed(store, core) == ["x1", "x2", "y1", "y2"]  # x1 still has a job queued
    await core.cancel(both.job_id, principal="alice")
    assert await _indexed(store, core) == ["x2", "y1", "y2"]
    await core.submit(spec("x3"), principal="alice")
    assert await _indexed(store, core) == ["x2", "x3", "y1", "y2"]
    # a refused submit is not counted as submitted
    assert (await Queries(store, core.keys).counts())["total:submitted"] == 5


# -- selection weighs load and spreads ties


async def _run_serially(core: Core, rec: Recorder, jobs: int, pool: str = "p") -> list[str]:
    """Submit jobs one after another, each finished before the next: the nodes stay equal."""
    placed = []
    for _ in range(jobs):
        sub = await core.submit(spec(pool))
        assign = rec.of(AssignDelivery)[-1]
        assert assign.job_id == sub.job_id
        placed.append(assign.node_id)
        await core.result(sub.job_id, node_id=assign.node_id, attempt=1, ok=True, accepted=True)
    return placed


async def test_equal_idle_nodes_take_turns(store: Store) -> None:
    core, rec = await make_core(store)
    for name in ("n1", "n2", "n3"):
        await core.register_node(node_id=name, capacity=2, pools=["p"])
    placed = await _run_serially(core, rec, 8)
    # the job's order number picks the place in the tie: each node in turn
    assert sorted(placed.count(name) for name in ("n1", "n2", "n3")) == [2, 3, 3]
    assert all(placed[i] != placed[i + 1] for i in range(7))


async def test_turns_go_round_a_tie_longer_than_the_load_window(store: Store) -> None:
    core, rec = await make_core(store)
    names = [f"n{i:02d}" for i in range(10)]
    for name in names:
        await core.register_node(node_id=name, capacity=1, pools=["p"])
    placed = await _run_serially(core, rec, 10)
    assert sorted(placed) == names


async def test_a_more_loaded_node_is_passed_over(store: Store) -> None:
    core, rec = await make_core(store)
    busy = await core.register_node(node_id="zz-busy", capacity=2, pools=["p"])
    calm = await core.register_node(node_id="aa-calm", capacity=2, pools=["p"])
    await core.heartbeat_batch([("zz-busy", busy.epoch, 0.9, 0), ("aa-calm", calm.epoch, 0.1, 0)])
    assert set(await _run_serially(core, rec, 6)) == {"aa-calm"}
    # more free slots still come first: the busy node is idle, the calm one has a job
    held = await core.submit(spec("p"))
    assert rec.of(AssignDelivery)[-1].node_id == "aa-calm"
    await core.submit(spec("p"))
    assert rec.of(AssignDelivery)[-1].node_id == "zz-busy"
    assert held.state == "assigned"


async def test_an_ineligible_least_loaded_node_falls_back_to_the_next(store: Store) -> None:
    core, rec = await make_core(store)
    regs = {name: await core.register_node(node_id=name, capacity=1, pools=["p"])
            for name in ("a", "b", "c")}
    await core.heartbeat_batch([("a", regs["a"].epoch, 0.0, 0), ("b", regs["b"].epoch, 0.5, 0),
                                ("c", regs["c"].epoch, 0.9, 0)])
    await core.mark_unavailable("a", epoch=regs["a"].epoch, service="tts", ttl=60)
    await core.submit(spec("p", services=("tts",)))
    assert rec.of(AssignDelivery)[-1].node_id == "b"
