"""Operator actions over the scripts, on both stores: each works, is idempotent, and refuses
unknown ids; requeue by filter is bounded."""

from __future__ import annotations

import logging

import pytest
import trio

from schedd import errors
from schedd.core import AssignDelivery, CancelJob, DoneDelivery, DrainNode, JobFilter, Queries
from schedd.operators import MAX_REQUEUE, Operators, RequeueFilter, requeue_candidates
from schedd.store.base import Store
from tests.core.helpers import Recorder, make_core, spec


async def _operators(store: Store, instance: str = "A") -> tuple[Operators, Recorder, Queries]:
    core, rec = await make_core(store, instance)
    queries = Queries(store, core.keys)
    return Operators(core, queries), rec, queries


async def test_drain_and_undrain(store: Store, caplog: pytest.LogCaptureFixture) -> None:
    ops, rec, queries = await _operators(store)
    core = ops.core
    await core.register_node(node_id="n1", capacity=2, pools=["p"])
    caplog.set_level(logging.INFO, "schedd.operators")
    first = await ops.drain("n1", who="token:abcd1234 (1.2.3.4:5)")
    assert first == {"node_id": "n1", "outcome": "drained", "state": "draining", "jobs": 0}
    assert rec.of(DrainNode)[-1] == DrainNode(node_id="n1", reason=rec.of(DrainNode)[-1].reason)
    assert "token:abcd1234" in rec.of(DrainNode)[-1].reason
    assert (await ops.drain("n1", who="x"))["outcome"] == "unchanged"  # idempotent
    assert len(rec.of(DrainNode)) == 1
    queued = await core.submit(spec("p"))
    assert queued.state == "queued"  # a draining node takes no new work
    assert "operator token:abcd1234 (1.2.3.4:5): drain node n1: drained" in caplog.text
    # undrain: back in its pools, fed the queued job, its owner told
    result = await ops.undrain("n1", who="ui admin 127.0.0.1:9")
    assert result == {"node_id": "n1", "outcome": "undrained", "state": "online"}
    lifted = rec.of(DrainNode)[-1]
    assert lifted.lifted and lifted.node_id == "n1"
    assert rec.of(AssignDelivery)[-1].job_id == queued.job_id
    nodes = {n.node_id: n for n in await queries.nodes()}
    assert nodes["n1"].state == "online" and nodes["n1"].used == 1
    pools = {p.pool: p for p in await queries.pools()}
    assert pools["p"].members == {"n1": 1}
    assert (await ops.undrain("n1", who="x"))["outcome"] == "unchanged"
    assert len(rec.of(DrainNode)) == 2


async def test_drain_and_undrain_refusals(store: Store, caplog: pytest.LogCaptureFixture) -> None:
    ops, _rec, _ = await _operators(store)
    caplog.set_level(logging.INFO, "schedd.operators")
    with pytest.raises(errors.NodeNotFound):
        await ops.drain("nope", who="admin")
    with pytest.raises(errors.NodeNotFound):
        await ops.undrain("nope", who="admin")
    assert "operator admin: drain node nope refused: E_NO_NODE" in caplog.text
    reg = await ops.core.register_node(node_id="n1", capacity=1, pools=["p"])
    await ops.core.node_offline("n1", epoch=reg.epoch, reason="test")
    with pytest.raises(errors.InvalidState):
        await ops.undrain("n1", who="admin")


async def test_drain_of_a_node_on_another_instance_goes_through_its_inbox(store: Store) -> None:
    a, rec_a, _ = await _operators(store, "A")
    b_core, _ = await make_core(store, "B")
    await b_core.register_node(node_id="nb", capacity=1, pools=["p"])
    assert (await a.drain("nb", who="admin"))["outcome"] == "drained"
    assert (await a.undrain("nb", who="admin"))["outcome"] == "undrained"
    assert rec_a.of(DrainNode) == []  # not A's node: nothing local
    entries = await store.execute("XRANGE", b_core.keys.inbox("B"), "-", "+")
    kinds = [entry[1][1] for entry in entries]
    assert kinds == [b'["drain","nb","drained by operator admin"]',
                     b'["drain","nb","undrained by operator admin",1]']


async def test_cancel(store: Store) -> None:
    ops, rec, _ = await _operators(store)
    await ops.core.register_node(node_id="n1", capacity=1, pools=["p"])
    sub = await ops.core.submit(spec("p"), principal="alice")
    result = await ops.cancel(sub.job_id, who="admin")
    assert result == {"job_id": sub.job_id, "outcome": "canceled", "state": "canceled"}
    assert rec.of(CancelJob)[-1].job_id == sub.job_id
    assert rec.of(DoneDelivery)[-1].state == "canceled"
    again = await ops.cancel(sub.job_id, who="admin")
    assert again == {"job_id": sub.job_id, "outcome": "unchanged", "state": "canceled"}
    assert len(rec.of(DoneDelivery)) == 1
    with pytest.raises(errors.JobNotFound):
        await ops.cancel("job-of-nobody", who="admin")


async def _failed_job(ops: Operators, pool: str = "p", principal: str = "alice") -> str:
    core = ops.core
    node = f"f-{pool}"
    reg = await core.register_node(node_id=node, capacity=1, pools=[pool])
    sub = await core.submit(spec(pool, max_attempts=1), principal=principal)
    await core.result(sub.job_id, node_id=node, attempt=1, ok=False,
                      error={"code": "E_BOOM", "message": "boom"})
    await core.node_offline(node, epoch=reg.epoch, reason="test")
    return sub.job_id


async def test_requeue_one(store: Store) -> None:
    ops, rec, queries = await _operators(store)
    job_id = await _failed_job(ops)
    # no node: back in the queue, a fresh budget, the failure's traces cleared
    result = await ops.requeue(job_id, who="admin")
    assert result == {"job_id": job_id, "outcome": "requeued", "state": "queued", "attempt": 1}
    info = await queries.job(job_id)
    assert info is not None
    assert (info.state, info.max_attempts, info.error, info.timings["finished"]) == (
        "queued", 2, None, 0)
    assert await store.execute("ZSCORE", ops.core.keys.gc, f"j:{job_id}") is None
    again = await ops.requeue(job_id, who="admin")
    assert again == {"job_id": job_id, "outcome": "unchanged", "state": "queued", "attempt": 1}
    # a node comes: it runs attempt 2; an earlier attempt stays fenced out
    await ops.core.register_node(node_id="n2", capacity=1, pools=["p"])
    assert (rec.of(AssignDelivery)[-1].job_id, rec.of(AssignDelivery)[-1].attempt) == (job_id, 2)
    with pytest.raises(errors.StaleAttempt):
        await ops.core.result(job_id, node_id="f-p", attempt=1, ok=True)
    state, _ = await ops.core.result(job_id, node_id="n2", attempt=2, ok=True)
    assert state == "done"
    with pytest.raises(errors.InvalidState):  # a done job succeeded: not requeued
        await ops.requeue(job_id, who="admin")
    with pytest.raises(errors.JobNotFound):
        await ops.requeue("no-such-job", who="admin")


async def test_requeue_places_on_a_free_node_at_once(store: Store) -> None:
    ops, rec, _ = await _operators(store)
    job_id = await _failed_job(ops)
    await ops.core.register_node(node_id="n2", capacity=1, pools=["p"])
    result = await ops.requeue(job_id, who="admin")
    assert (result["outcome"], result["state"], result["attempt"]) == ("requeued", "assigned", 2)
    assert rec.of(AssignDelivery)[-1].node_id == "n2"


async def test_requeue_by_filter(store: Store, caplog: pytest.LogCaptureFixture) -> None:
    ops, _rec, queries = await _operators(store)
    # submitted a few ms apart: candidates come newest submission first (ties: by id)
    a1 = await _failed_job(ops, "pa")
    await trio.sleep(0.003)
    b1 = await _failed_job(ops, "pb")
    await trio.sleep(0.003)
    canceled = await ops.core.submit(spec("pa"), principal="alice")
    await ops.cancel(canceled.job_id, who="admin")
    caplog.set_level(logging.INFO, "schedd.operators")
    # the pool filter, newest first
    assert await requeue_candidates(queries, RequeueFilter(pool="pa"), 0) == [a1]
    both = RequeueFilter(states=("failed", "canceled"), since=600)
    assert await requeue_candidates(queries, both, ops._now_ms()) == [canceled.job_id, b1, a1]
    # long ago only: nothing finished then
    old = RequeueFilter(since=0.001)
    assert await requeue_candidates(queries, old, ops._now_ms() + 60_000) == []
    results = await ops.requeue_matching(RequeueFilter(limit=1), who="admin")
    assert [(r["job_id"], r["outcome"]) for r in results] == [(b1, "requeued")]
    results = await ops.requeue_matching(RequeueFilter(), who="admin")  # b1 no longer failed
    assert [(r["job_id"], r["outcome"]) for r in results] == [(a1, "requeued")]
    assert await ops.requeue_matching(RequeueFilter(), who="admin") == []
    assert "requeue (states failed limit 100): 1 matched, 1 requeued" in caplog.text


@pytest.mark.parametrize(
    ("wanted", "message"),
    [
        (RequeueFilter(limit=MAX_REQUEUE + 1), "limit must be 1 to 100"),
        (RequeueFilter(limit=10**9), "limit must be 1 to 100"),
        (RequeueFilter(limit=0), "limit must be 1 to 100"),
        (RequeueFilter(states=("done",)), "state 'done' is not requeued"),
        (RequeueFilter(states=()), "states must name"),
        (RequeueFilter(since=-1), "since must be > 0"),
    ],
)
async def test_requeue_filter_refused(store: Store, wanted: RequeueFilter, message: str) -> None:
    ops, _rec, _ = await _operators(store)
    job_id = await _failed_job(ops)
    with pytest.raises(errors.BadArgument, match=message):
        await ops.requeue_matching(wanted, who="admin")
    assert (await ops.queries.job(job_id)).state == "failed"  # type: ignore[union-attr]


async def test_requeue_refused_when_the_queue_is_full(store: Store) -> None:
    core, _ = await make_core(store, max_queued=0)
    ops = Operators(core, Queries(store, core.keys))
    job_id = await _failed_job(ops)
    with pytest.raises(errors.QueueFull):
        await ops.requeue(job_id, who="admin")
    assert (await ops.queries.job(job_id)).state == "failed"  # type: ignore[union-attr]


async def test_another_namespace_is_out_of_reach(store: Store) -> None:
    ops, _rec, _ = await _operators(store)
    job_id = await _failed_job(ops)
    from schedd.core import Core, CoreSettings

    other = Core(store, CoreSettings(namespace="other", instance="A"))
    await other.start()
    other_ops = Operators(other, Queries(store, other.keys))
    with pytest.raises(errors.JobNotFound):
        await other_ops.requeue(job_id, who="admin")
    with pytest.raises(errors.JobNotFound):
        await other_ops.cancel(job_id, who="admin")
    with pytest.raises(errors.NodeNotFound):
        await other_ops.drain("f-p", who="admin")
    assert await other_ops.requeue_matching(RequeueFilter(), who="admin") == []


async def test_run_dispatches_by_name(store: Store) -> None:
    ops, _rec, _ = await _operators(store)
    await ops.core.register_node(node_id="n1", capacity=1, pools=["p"])
    assert (await ops.run("drain", "n1", None, who="a"))[0]["outcome"] == "drained"
    assert await ops.run("requeue", None, None, who="a") == []
    with pytest.raises(errors.BadArgument, match="needs a node id"):
        await ops.run("undrain", None, None, who="a")
    with pytest.raises(errors.BadArgument, match="unknown action"):
        await ops.run("explode", "n1", None, who="a")


async def test_requeue_moves_the_job_in_the_browsing_indices(store: Store) -> None:
    core, _rec = await make_core(store, "A", retention=0.05)
    queries = Queries(store, core.keys)
    ops = Operators(core, queries)
    k = core.keys
    job_id = await _failed_job(ops)  # failed on node f-p
    assert [j.job_id for j in (await queries.list_jobs(JobFilter(state="failed"))).jobs] == [job_id]
    await ops.requeue(job_id, who="admin")
    assert (await queries.list_jobs(JobFilter(state="failed"))).jobs == []
    assert [j.job_id for j in (await queries.list_jobs(JobFilter(state="queued"))).jobs] == [job_id]
    # the node that failed it is forgiven, and its index forgets the job with it
    assert await store.execute("ZSCORE", k.jobs_on("f-p"), job_id) is None
    await core.register_node(node_id="n2", capacity=1, pools=["p"])
    state, _ = await core.result(job_id, node_id="n2", attempt=2, ok=True)
    assert state == "done"
    assert [j.job_id for j in (await queries.list_jobs(JobFilter(state="done"))).jobs] == [job_id]
    await trio.sleep(0.1)
    assert (await core.reap())[2] == 1  # removed at retention: no index keeps it
    keys = [k.jobs_of("alice"), k.jobs_in("done"), k.jobs_in("failed"),
            k.jobs_in("active"), k.jobs_on("f-p"), k.jobs_on("n2")]
    assert [await store.execute("EXISTS", key) for key in keys] == [0] * len(keys)
