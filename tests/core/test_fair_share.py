"""Weighted fair share between principals and weighted jobs (cost), on both stores.

* while several principals have jobs queued for a pool, freed slots go to them in proportion to
  their weights (a flooding principal gets its share, not the pool), and within a principal by
  priority then age;
* a job costing n slots goes only to a node with n free slots and takes n of them; a job above
  every live member's capacity of its pools is refused;
* cancel, queue timeout and a dispatch from another pool take a job out of the fair queues and
  leave no fair state behind.
"""

from __future__ import annotations

from typing import Any

import pytest

from schedd import errors
from schedd.core import AssignDelivery, Core, Queries
from schedd.store.base import Store
from tests.core.helpers import Recorder, make_core, spec


class Pool:
    """One node of `capacity` slots in pool p, and the jobs each principal submitted."""

    def __init__(self, core: Core, rec: Recorder) -> None:
        self.core, self.rec = core, rec
        self.owner: dict[str, str] = {}

    async def submit(self, principal: str, count: int = 1, **kw: Any) -> list[str]:
        ids = []
        for _ in range(count):
            sub = await self.core.submit(spec("p", **kw), principal=principal)
            self.owner[sub.job_id] = principal
            ids.append(sub.job_id)
        return ids

    async def run(self, dispatches: int) -> list[str]:
        """Finish the oldest running job `dispatches` times; the principals of the jobs each
        freed slot went to, in order."""
        served: list[str] = []
        for _ in range(dispatches):
            running = self.rec.of(AssignDelivery)
            if not running:
                break
            first = running[0]
            self.rec.items.remove(first)
            before = len(self.rec.of(AssignDelivery))
            await self.core.result(first.job_id, node_id=first.node_id, attempt=first.attempt,
                                   ok=True)
            after = self.rec.of(AssignDelivery)
            served += [self.owner[a.job_id] for a in after[before:]]
        return served


async def _pool(store: Store, capacity: int = 1, **settings: Any) -> Pool:
    core, rec = await make_core(store, **settings)
    await core.register_node(node_id="n1", capacity=capacity, pools=["p"])
    return Pool(core, rec)


async def _fair_keys(store: Store, core: Core, pool: str = "p") -> tuple[int, int]:
    """How many principals the pool's fair zset holds, and whether its virtual time exists."""
    return (await store.execute("ZCARD", core.keys.fair(pool)),
            await store.execute("EXISTS", core.keys.fair_vt(pool)))


async def test_a_flooding_principal_gets_half_while_both_have_work(store: Store) -> None:
    pool = await _pool(store)
    await pool.submit("flood", 40)  # the first runs, 39 wait
    await pool.submit("slow", 10)
    served = await pool.run(20)
    # both had work queued throughout: the slots alternate
    assert served.count("slow") == 10 and served.count("flood") == 10
    assert all(served[i] != served[i + 1] for i in range(len(served) - 1))


async def test_weights_three_to_one(store: Store) -> None:
    pool = await _pool(store, weights={"heavy": 3.0})
    await pool.submit("heavy", 60)
    await pool.submit("light", 30)
    served = await pool.run(40)
    assert served.count("heavy") == 30 and served.count("light") == 10


async def test_a_late_principal_is_served_next_not_after_the_backlog(store: Store) -> None:
    pool = await _pool(store)
    await pool.submit("flood", 50)
    assert await pool.run(5) == ["flood"] * 5
    await pool.submit("late")
    served = await pool.run(2)
    assert "late" in served


async def test_an_idle_principal_banks_no_credit(store: Store) -> None:
    pool = await _pool(store)
    await pool.submit("a", 30)
    assert await pool.run(10) == ["a"] * 10  # b idle meanwhile: it earns nothing
    await pool.submit("b", 10)
    served = await pool.run(10)
    assert served.count("b") == 5  # an equal share from now on, not ten in a row


async def test_priority_orders_within_a_principal_not_across(store: Store) -> None:
    pool = await _pool(store)
    await pool.submit("a")  # runs
    low = await pool.submit("a", 2, priority=0)
    high = await pool.submit("a", 1, priority=10)
    urgent = await pool.submit("b", 3, priority=1000)
    first = []
    for _ in range(6):
        running = pool.rec.of(AssignDelivery)[0]
        pool.rec.items.remove(running)
        await pool.core.result(running.job_id, node_id="n1", attempt=1, ok=True)
        first.append(pool.rec.of(AssignDelivery)[0].job_id)
    # a's own order is priority then age; b's priority does not take a's share
    assert [j for j in first if pool.owner[j] == "a"] == high + low
    assert [pool.owner[j] for j in first] == ["b", "a", "b", "a", "b", "a"] or \
        [pool.owner[j] for j in first] == ["a", "b", "a", "b", "a", "b"]
    assert set(urgent) <= set(first)


async def test_fair_state_goes_with_the_last_queued_job(store: Store) -> None:
    pool = await _pool(store)
    await pool.submit("a", 3)
    await pool.submit("b", 2)
    assert await _fair_keys(store, pool.core) == (2, 0)
    await pool.run(1)  # the first dispatch from the queues sets the virtual time
    assert await _fair_keys(store, pool.core) == (2, 1)
    await pool.run(10)
    assert await _fair_keys(store, pool.core) == (0, 0)
    assert await store.execute("EXISTS", pool.core.keys.fair_q("p", "a")) == 0


async def test_cancel_of_a_queued_job_leaves_its_fair_queue(store: Store) -> None:
    pool = await _pool(store)
    await pool.submit("a")  # runs
    one, two = await pool.submit("a", 2)
    other = (await pool.submit("b"))[0]
    assert await store.execute("ZCARD", pool.core.keys.fair_q("p", "a")) == 2
    assert await pool.core.cancel(one, principal="a") == "canceled"
    assert await store.execute("ZRANGE", pool.core.keys.fair_q("p", "a"), 0, -1) == [two.encode()]
    # another principal cannot cancel it
    with pytest.raises(errors.NotYours):
        await pool.core.cancel(two, principal="b")
    await pool.core.cancel(two, principal="a")
    assert await store.execute("ZRANGE", pool.core.keys.fair("p"), 0, -1) == [b"b"]
    await pool.core.cancel(other, principal="b")
    assert await _fair_keys(store, pool.core) == (0, 0)
    assert await store.execute("EXISTS", pool.core.keys.queue("p")) == 0


async def test_queue_timeout_still_fires_in_fair_queues(store: Store) -> None:
    pool = await _pool(store)
    await pool.submit("a")  # runs
    waiting = (await pool.submit("a", queue_timeout=0.01))[0]
    await pool.submit("b", queue_timeout=60)
    while (await Queries(store, pool.core.keys).job(waiting)).state == "queued":  # type: ignore[union-attr]
        await pool.core.reap()
    assert (await Queries(store, pool.core.keys).job(waiting)).state == "timed_out"  # type: ignore[union-attr]
    assert await store.execute("EXISTS", pool.core.keys.fair_q("p", "a")) == 0
    assert await store.execute("ZRANGE", pool.core.keys.fair("p"), 0, -1) == [b"b"]


async def test_a_job_queued_in_two_pools_is_dispatched_once(store: Store) -> None:
    core, rec = await make_core(store)
    await core.register_node(node_id="n1", capacity=1, pools=["p"])
    await core.register_node(node_id="n2", capacity=1, pools=["q"])
    busy_p = await core.submit(spec("p"), principal="a")
    busy_q = await core.submit(spec("q"), principal="a")
    both = await core.submit(spec("p", "q"), principal="a")
    assert both.state == "queued"
    await core.result(busy_p.job_id, node_id="n1", attempt=1, ok=True)
    assert [a.job_id for a in rec.of(AssignDelivery)][-1] == both.job_id
    for pool in ("p", "q"):
        assert await _fair_keys(store, core, pool) == (0, 0)
        assert await store.execute("EXISTS", core.keys.fair_q(pool, "a")) == 0
    rec.clear()
    await core.result(busy_q.job_id, node_id="n2", attempt=1, ok=True)
    assert rec.of(AssignDelivery) == []


# -- weighted jobs


async def _free(store: Store, core: Core, node: str) -> tuple[int, int]:
    used = int(await store.execute("HGET", core.keys.node(node), "used"))
    score = int(float(await store.execute("ZSCORE", core.keys.pool("p"), node)))
    return used, score


async def test_a_weighted_job_goes_only_where_it_fits(store: Store) -> None:
    core, rec = await make_core(store)
    await core.register_node(node_id="small", capacity=2, pools=["p"])
    await core.register_node(node_id="big", capacity=4, pools=["p"])
    one = await core.submit(spec("p"), principal="a")  # the most free: big
    assert rec.of(AssignDelivery)[-1].node_id == "big"
    large = await core.submit(spec("p", cost=3), principal="a")
    assert large.state == "assigned" and rec.of(AssignDelivery)[-1].node_id == "big"
    assert await _free(store, core, "big") == (4, 0)
    pair = await core.submit(spec("p", cost=2), principal="a")
    assert rec.of(AssignDelivery)[-1].node_id == "small"
    assert await _free(store, core, "small") == (2, 0)
    waits = await core.submit(spec("p", cost=3), principal="a")
    assert waits.state == "queued"
    # one slot freed on big: the cost-3 job does not fit yet
    await core.result(one.job_id, node_id="big", attempt=1, ok=True)
    assert await _free(store, core, "big") == (3, 1)
    assert rec.of(AssignDelivery)[-1].job_id == pair.job_id
    await core.result(large.job_id, node_id="big", attempt=1, ok=True)
    assert rec.of(AssignDelivery)[-1].job_id == waits.job_id
    assert await _free(store, core, "big") == (3, 1)
    await core.result(waits.job_id, node_id="big", attempt=1, ok=True)
    assert await _free(store, core, "big") == (0, 4)


async def test_a_queued_weighted_job_holds_freed_slots_until_it_fits(store: Store) -> None:
    core, rec = await make_core(store)
    await core.register_node(node_id="n", capacity=2, pools=["p"])
    first = await core.submit(spec("p"), principal="a")
    second = await core.submit(spec("p"), principal="a")
    big = await core.submit(spec("p", cost=2), principal="b")
    small = await core.submit(spec("p"), principal="c")
    assert (big.state, small.state) == ("queued", "queued")
    rec.clear()
    # one slot free: big is first in fair order and does not fit; the slot waits for it
    await core.result(first.job_id, node_id="n", attempt=1, ok=True)
    assert rec.of(AssignDelivery) == []
    await core.result(second.job_id, node_id="n", attempt=1, ok=True)
    assert [a.job_id for a in rec.of(AssignDelivery)] == [big.job_id]
    await core.result(big.job_id, node_id="n", attempt=1, ok=True)
    assert rec.of(AssignDelivery)[-1].job_id == small.job_id


async def test_a_job_bigger_than_every_node_is_refused(store: Store) -> None:
    core, _ = await make_core(store)
    await core.register_node(node_id="n1", capacity=2, pools=["p"])
    await core.register_node(node_id="n2", capacity=4, pools=["q"])
    with pytest.raises(errors.TooBig, match="largest live node"):
        await core.submit(spec("p", cost=3))
    assert (await core.submit(spec("p", "q", cost=4))).state == "assigned"
    with pytest.raises(errors.TooBig):
        await core.submit(spec("p", "q", cost=5))
    # no member yet: the job waits for one
    assert (await core.submit(spec("empty", cost=8))).state == "queued"
    counts = await Queries(store, core.keys).counts()
    assert counts["queued"] == 1


# job_submit's arguments before the weight (ARGV[32]): lua/job_submit.lua's header says each
_SUBMIT_ARGS = (
    "", "j", '["p"]', "null", "", 0, "[]", 1, 1, 1, 1, "1", 10, 1, 1, 1, "",  # ARGV[2..18]
    "", "", "", "", "",  # quotas of the principal: none
    "0", "1000 60000", "0", "10 10",  # no delay, backoff, payload dropped, retention bounds
    "", "0", "", "30000",  # no stages, fail_fast off, no seq, gap timeout
)


@pytest.mark.parametrize("cost", ["0", "-1", "1.5", "x"])
async def test_a_hostile_cost_is_refused_by_the_script(store: Store, cost: str) -> None:
    core, _ = await make_core(store)
    with pytest.raises(errors.BadArgument, match="cost"):
        await core._call("job_submit", [core.keys.job("j"), core.keys.counts],
                         [*_SUBMIT_ARGS, "1", cost, ""])


@pytest.mark.parametrize("weight", ["0", "-1", "nan", "inf", "x"])
async def test_a_hostile_weight_is_refused_by_the_script(store: Store, weight: str) -> None:
    core, _ = await make_core(store)
    with pytest.raises(errors.BadArgument, match="weight"):
        await core._call("job_submit", [core.keys.job("j"), core.keys.counts],
                         [*_SUBMIT_ARGS, weight, "1", ""])


async def test_weighted_jobs_are_charged_their_cost(store: Store) -> None:
    pool = await _pool(store, capacity=2)
    await pool.submit("a", 2)  # both slots
    await pool.submit("big", 10, cost=2)
    await pool.submit("a", 30)
    served = await pool.run(24)
    # a job of big's costs two of a's: a gets twice as many dispatches (slots in equal shares)
    assert served.count("big") >= 6
    assert abs(served.count("a") - 2 * served.count("big")) <= 2


async def test_a_node_back_with_fewer_slots_gives_back_by_cost(store: Store) -> None:
    core, rec = await make_core(store)
    await core.register_node(node_id="n", capacity=4, pools=["p"])
    big = await core.submit(spec("p", cost=3), principal="a")
    await core.accept(big.job_id, node_id="n", attempt=1)
    one = await core.submit(spec("p"), principal="a")
    reg = await core.register_node(node_id="n", capacity=3, pools=["p"])
    # the assigned (not accepted) one goes back; the accepted cost-3 job fills the node
    assert reg.used == 3
    job = await Queries(store, core.keys).job(one.job_id)
    assert job is not None and job.state == "queued"
    assert rec.of(AssignDelivery)


async def test_jobs_queued_without_fair_queues_are_moved_into_them(store: Store) -> None:
    """A job in a pool's queue but in no fair queue (queued by a version before fair share) is
    still handed to a node that frees a slot."""
    core, rec = await make_core(store)
    await core.register_node(node_id="n", capacity=1, pools=["p"])
    running = await core.submit(spec("p"), principal="a")
    old = [await core.submit(spec("p"), principal=name) for name in ("a", "b")]
    for pool_key in (core.keys.fair("p"), core.keys.fair_q("p", "a"), core.keys.fair_q("p", "b")):
        await store.execute("DEL", pool_key)
    await core.result(running.job_id, node_id="n", attempt=1, ok=True)
    assert rec.of(AssignDelivery)[-1].job_id == old[0].job_id
    assert await store.execute("ZRANGE", core.keys.fair("p"), 0, -1) == [b"b"]
    await core.result(old[0].job_id, node_id="n", attempt=1, ok=True)
    assert rec.of(AssignDelivery)[-1].job_id == old[1].job_id
