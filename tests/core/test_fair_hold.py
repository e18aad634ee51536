"""The fair reservation (``[tenants] hold``), on both stores.

* a principal active in a pool (it submitted there within the hold) keeps its weighted share of
  the pool's slots: a flood cannot take it, and the principal's next job is placed at once;
* when its activity lapses, the reaper hands the held slots to the queued work;
* guarantees follow the weights, and the pool's capacity total follows its members (join,
  leave, drain, undrain, offline, capacity change);
* every path that frees a slot takes the job's slots off its pool's use, once;
* with the hold at 0 nothing of it is written.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio

from schedd import errors
from schedd.core import AssignDelivery, Core, Queries
from schedd.store.base import Store
from tests.core.helpers import Recorder, make_core, spec

HOLD = 60.0


async def _core(store: Store, capacity: int = 4, hold: float = HOLD,
                **settings: Any) -> tuple[Core, Recorder]:
    core, rec = await make_core(store, fair_hold=hold, **settings)
    await core.register_node(node_id="n1", capacity=capacity, pools=["p"])
    return core, rec


async def _submit(core: Core, principal: str, count: int = 1, **kw: Any) -> list[str]:
    ids = []
    for _ in range(count):
        ids.append((await core.submit(spec("p", **kw), principal=principal)).job_id)
    return ids


async def _use(store: Store, core: Core, pool: str = "p") -> dict[str, int]:
    flat = await store.execute("HGETALL", core.keys.fair_use(pool))
    return {flat[i].decode(): int(flat[i + 1]) for i in range(0, len(flat), 2)}


async def _finish(core: Core, rec: Recorder, job_id: str) -> None:
    a = next(d for d in rec.of(AssignDelivery) if d.job_id == job_id)
    rec.items.remove(a)
    await core.result(job_id, node_id=a.node_id, attempt=a.attempt, ok=True)


async def _state(core: Core, job_id: str) -> str:
    job = await Queries(core.store, core.keys).job(job_id)
    assert job is not None
    return job.state


async def test_the_flood_cannot_take_an_active_principals_share(store: Store) -> None:
    core, rec = await _core(store)
    flood = await _submit(core, "flood", 10)  # alone: it takes all 4 slots, 6 wait
    assert len(rec.of(AssignDelivery)) == 4
    slow = await _submit(core, "slow")  # active now, guaranteed 2 of 4; no free slot: queued
    assert await _state(core, slow[0]) == "queued"
    await _finish(core, rec, flood[0])  # the freed slot goes to slow (fair order)
    assert rec.of(AssignDelivery)[-1].job_id == slow[0]
    await _finish(core, rec, flood[1])  # flood holds 2 = its share, slow 1 of its 2: held free
    assert {a.job_id for a in rec.of(AssignDelivery)} == {flood[2], flood[3], slow[0]}
    assert await _use(store, core) == {"flood": 2, "slow": 1, "": 3}
    held = await store.execute("ZSCORE", core.keys.fair_held, "p")
    assert held is not None
    # slow's next job finds the held slot at once, beside the flood's queue
    again = await core.submit(spec("p"), principal="slow")
    assert again.state == "assigned"
    assert await _use(store, core) == {"flood": 2, "slow": 2, "": 4}


async def test_without_a_hold_the_flood_takes_every_freed_slot(store: Store) -> None:
    core, rec = await _core(store, hold=0)
    flood = await _submit(core, "flood", 10)
    slow = await _submit(core, "slow")
    await _finish(core, rec, flood[0])
    await _finish(core, rec, flood[1])
    # work conserving: the second freed slot went to the flood's queue
    assert len(rec.of(AssignDelivery)) == 4
    assert await _state(core, slow[0]) == "assigned"
    again = await core.submit(spec("p"), principal="slow")
    assert again.state == "queued"
    # and nothing of the reservation was written
    for key in (core.keys.fair_use("p"), core.keys.fair_act("p"), core.keys.fair_held,
                core.keys.fair_hold, core.keys.fair_w):
        assert await store.execute("EXISTS", key) == 0
    assert await store.execute("HGET", core.keys.job(flood[2]), "fpool") is None


async def test_a_lapsed_principals_slots_go_to_the_queue(store: Store) -> None:
    core, rec = await _core(store, hold=1.0)
    flood = await _submit(core, "flood", 10)
    slow = await _submit(core, "slow")
    await _finish(core, rec, flood[0])
    await _finish(core, rec, slow[0])  # slow's slot is held for it while it is active
    assert len(rec.of(AssignDelivery)) == 3
    await core.reap()  # not lapsed yet: still held
    assert len(rec.of(AssignDelivery)) == 3
    await trio.sleep(1.05)
    await core.reap()  # lapsed: the reaper feeds the pool
    assert len(rec.of(AssignDelivery)) == 4
    assert await store.execute("ZSCORE", core.keys.fair_held, "p") is None
    assert (await _use(store, core))["flood"] == 4


@pytest.mark.parametrize(("weights", "heavy_gets"),
                         [({"heavy": 3.0}, 6), ({}, 4), ({"light": 3.0}, 2)])
async def test_guarantees_follow_the_weights(store: Store, weights: dict[str, float],
                                             heavy_gets: int) -> None:
    core, rec = await _core(store, capacity=8, weights=weights)
    await _submit(core, "light")  # runs: light uses 1
    await _submit(core, "heavy", 20)
    # heavy takes its guarantee; beyond it only while light's unused guarantee stays free
    assert len(rec.of(AssignDelivery)) == 1 + heavy_gets
    use = await _use(store, core)
    assert use["heavy"] == heavy_gets and use["light"] == 1


async def _cap(store: Store, core: Core, pool: str = "p") -> int:
    total = await store.execute("HGET", core.keys.fair_cap, pool)
    members = await store.execute("ZRANGE", core.keys.pool_cap(pool), 0, -1, "WITHSCORES")
    assert int(total or 0) == sum(int(float(members[i])) for i in range(1, len(members), 2))
    return int(total or 0)


async def test_the_capacity_total_follows_the_members(store: Store) -> None:
    core, _rec = await _core(store)
    assert await _cap(store, core) == 4
    reg = await core.register_node(node_id="n2", capacity=3, pools=["p", "q"])
    assert await _cap(store, core) == 7 and await _cap(store, core, "q") == 3
    await core.register_node(node_id="n2", capacity=5, pools=["p"])  # bigger, leaves q
    assert await _cap(store, core) == 9 and await _cap(store, core, "q") == 0
    await core.drain_node("n2")
    assert await _cap(store, core) == 4
    await core.drain_node("n2")  # already draining: no change
    assert await _cap(store, core) == 4
    await core.undrain_node("n2")
    assert await _cap(store, core) == 9
    reg = await core.register_node(node_id="n2", capacity=5, pools=["p"])
    await core.node_offline("n2", epoch=reg.epoch, reason="bye")
    assert await _cap(store, core) == 4
    await core.register_node(node_id="n1", capacity=2, pools=["p"])
    assert await _cap(store, core) == 2


async def _only_job(core: Core, rec: Recorder) -> AssignDelivery:
    assigned: list[AssignDelivery] = rec.of(AssignDelivery)
    assert len(assigned) == 1
    return assigned[0]


async def _by_result(core: Core, rec: Recorder, a: AssignDelivery) -> None:
    await core.result(a.job_id, node_id=a.node_id, attempt=a.attempt, ok=True)


async def _by_retryable_failure(core: Core, rec: Recorder, a: AssignDelivery) -> None:
    await core.result(a.job_id, node_id=a.node_id, attempt=a.attempt, ok=False,
                      error={"code": "E_X", "message": "x"}, retryable=True, draw=0.0)


async def _by_reject(core: Core, rec: Recorder, a: AssignDelivery) -> None:
    await core.reject(a.job_id, node_id=a.node_id, attempt=a.attempt, reason="no")


async def _by_cancel(core: Core, rec: Recorder, a: AssignDelivery) -> None:
    await core.cancel(a.job_id)


async def _by_lost(core: Core, rec: Recorder, a: AssignDelivery) -> None:
    await core.job_lost(a.job_id, node_id=a.node_id, epoch=a.epoch, attempt=a.attempt,
                        reason="gone")


async def _by_offline(core: Core, rec: Recorder, a: AssignDelivery) -> None:
    await core.node_offline(a.node_id, epoch=a.epoch, reason="bye")


async def _by_ack_deadline(core: Core, rec: Recorder, a: AssignDelivery) -> None:
    await trio.sleep(0.15)
    await core.reap()


async def _by_capacity_cut(core: Core, rec: Recorder, a: AssignDelivery) -> None:
    await core.register_node(node_id="n1", capacity=1, pools=["p"])


FREES: dict[str, Callable[[Core, Recorder, AssignDelivery], Awaitable[None]]] = {
    "result": _by_result, "retryable_failure": _by_retryable_failure, "reject": _by_reject,
    "cancel": _by_cancel, "lost": _by_lost, "node_offline": _by_offline,
    "ack_deadline": _by_ack_deadline, "capacity_cut": _by_capacity_cut,
}


@pytest.mark.parametrize("path", list(FREES))
async def test_every_path_that_frees_a_slot_takes_off_the_use(store: Store, path: str) -> None:
    core, rec = await _core(store, capacity=2)
    cost = 2 if path == "capacity_cut" else 1
    (job,) = await _submit(core, "a", ack_timeout=0.1, cost=cost, max_attempts=3)
    a = await _only_job(core, rec)
    assert await _use(store, core) == {"a": cost, "": cost}
    assert await store.execute("HGET", core.keys.job(job), "fpool") == b"p"
    await FREES[path](core, rec, a)
    assert await _use(store, core) == {}
    assert await store.execute("HGET", core.keys.job(job), "fpool") is None
    assert await _state(core, job) != "running"


async def test_a_requeued_job_is_counted_again_and_freed_again(store: Store) -> None:
    core, rec = await _core(store, capacity=1)
    (job,) = await _submit(core, "a")
    await core.cancel(job)
    assert await _use(store, core) == {}
    placed, _state_now, _ = await core.requeue(job)
    assert placed
    assert await _use(store, core) == {"a": 1, "": 1}
    a = rec.of(AssignDelivery)[-1]
    await _by_result(core, rec, a)
    assert await _use(store, core) == {}


async def test_the_use_of_a_retried_job_moves_with_it(store: Store) -> None:
    core, rec = await _core(store, capacity=1)
    await core.register_node(node_id="n2", capacity=1, pools=["p"])
    (job,) = await _submit(core, "a")
    a = await _only_job(core, rec)
    await _by_reject(core, rec, a)  # placed on the other node at once
    b = rec.of(AssignDelivery)[-1]
    assert b.node_id != a.node_id
    assert await _use(store, core) == {"a": 1, "": 1}
    await _by_result(core, rec, b)
    assert await _use(store, core) == {}
    assert await _state(core, job) == "done"


@pytest.mark.parametrize("bad", ["-5", "abc", "3600001", "1.5"])
async def test_a_hostile_hold_is_refused_by_the_script(store: Store, bad: str) -> None:
    core, _rec = await make_core(store)
    with pytest.raises(errors.BadArgument, match="fair hold"):
        await core._call("fair_hold_set", [core.keys.fair_hold], [bad])


async def test_a_stage_hand_off_moves_the_use_to_the_next_stages_pool(store: Store) -> None:
    from tests.core.test_stages import pipeline, run

    core, rec = await _core(store, capacity=1)
    await core.register_node(node_id="n2", capacity=1, pools=["q"])
    await core.submit(pipeline("pipe", [{"pools": ["p"]}, {"pools": ["q"]}]), principal="a")
    first = rec.of(AssignDelivery)[-1]
    assert await _use(store, core, "p") == {"a": 1, "": 1}
    await run(core, first)  # stage 0 ends; stage 1 is placed in q in the same script
    assert await _use(store, core, "p") == {}
    assert await _use(store, core, "q") == {"a": 1, "": 1}
    await core.cancel("pipe")  # the running stage is canceled with its pipeline
    assert await _use(store, core, "q") == {}


async def test_a_job_missing_from_its_nodes_set_still_leaves_the_use(store: Store) -> None:
    core, rec = await _core(store, capacity=2)
    (job,) = await _submit(core, "a")
    a = await _only_job(core, rec)
    await store.execute("SREM", core.keys.node_jobs("n1"), job)  # the set lost the entry
    await _by_result(core, rec, a)
    assert await _use(store, core) == {}
    assert await _state(core, job) == "done"


async def test_only_the_eight_most_recently_active_principals_count(store: Store) -> None:
    core, rec = await _core(store, capacity=20)
    for i in range(10):
        await _submit(core, f"p{i}")  # each runs one job: 10 of 20 slots
    # their last submits in order, a second ago (submits within one ms would tie)
    now = int(time.time() * 1000)
    for i in range(10):
        await store.execute("ZADD", core.keys.fair_act("p"), now - 1000 + i, f"p{i}")
    await _submit(core, "flood", 30)
    # the flood and p9..p3 count (8 principals): 2 slots each, 7 held for p3..p9's unused
    # guarantees, so of the 10 free slots the flood takes 3; p0..p2 hold nothing (a bounded read)
    assert (await _use(store, core))["flood"] == 3
    assert len(rec.of(AssignDelivery)) == 13
