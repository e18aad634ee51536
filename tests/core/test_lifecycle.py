"""Retries with backoff, delayed jobs and bounded retention, on both stores."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
import trio

from schedd.core import AssignDelivery, Core, DoneDelivery, Queries, serve_reaper
from schedd.errors import BadArgument, BadDelay, BadTtl
from schedd.store.base import Store
from tests.core.helpers import make_core, spec


async def _hash(store: Store, core: Core, job_id: str) -> dict[str, str]:
    flat = await store.execute("HGETALL", core.keys.job(job_id))
    return {
        (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
        for k, v in zip(flat[::2], flat[1::2], strict=True)
    }


async def _delayed(store: Store, core: Core) -> dict[str, int]:
    flat = await store.execute("ZRANGE", core.keys.delayed, 0, -1, "WITHSCORES")
    return {
        (k.decode() if isinstance(k, bytes) else k): int(float(v))
        for k, v in zip(flat[::2], flat[1::2], strict=True)
    }


async def _last_attempt_end(store: Store, core: Core, job_id: str) -> int:
    raw = await store.execute("LINDEX", core.keys.job_attempts(job_id), -1)
    return int(orjson.loads(raw)[6])


async def _wait_due(store: Store, core: Core, job_id: str) -> None:
    """Sleep until the job's due time has passed on the store's clock."""
    due = (await _delayed(store, core))[job_id]
    while True:
        sec, usec = await store.execute("TIME")
        now = int(sec) * 1000 + int(usec) // 1000
        if now > due:
            return
        await trio.sleep((due - now + 2) / 1000)


async def test_a_retryable_failure_backs_off_then_runs_elsewhere_to_its_last_attempt(
    store: Store,
) -> None:
    core, rec = await make_core(store)
    for n in ("n1", "n2", "n3"):
        await core.register_node(node_id=n, capacity=1, pools=["p"])
    sub = await core.submit(spec("p", max_attempts=3, backoff_base=0.04, backoff_max=10.0))
    error: dict[str, Any] = {"code": "OOM", "message": "out of memory"}
    for attempt, draw, expected in ((1, 0.5, 30), (2, 0.25, 50)):
        node = rec.of(AssignDelivery)[-1].node_id
        state, _ = await core.result(sub.job_id, node_id=node, attempt=attempt, ok=False,
                                     error=error, retryable=True, draw=draw)
        assert state == "delayed"
        # b = min(cap, base * 2^(n-1)); wait = b/2 + b/2 * draw
        due = (await _delayed(store, core))[sub.job_id]
        assert due - await _last_attempt_end(store, core, sub.job_id) == expected
        info = await Queries(store, core.keys).job(sub.job_id)
        assert info is not None and info.state == "delayed" and node in info.tried
        await _wait_due(store, core, sub.job_id)
        assert (await core.reap())[1] == 1
        last = rec.of(AssignDelivery)[-1]
        assert last.attempt == attempt + 1 and last.node_id != node
    tried = {a.node_id for a in rec.of(AssignDelivery)}
    assert tried == {"n1", "n2", "n3"}
    state, _ = await core.result(sub.job_id, node_id=rec.of(AssignDelivery)[-1].node_id,
                                 attempt=3, ok=False, error=error, retryable=True, draw=0.5)
    assert state == "failed"
    (done,) = rec.of(DoneDelivery)
    assert done.state == "failed" and done.error and done.error["code"] == "OOM"
    info = await Queries(store, core.keys).job(sub.job_id)
    assert info is not None
    assert [a["outcome"] for a in info.attempts] == ["failed", "failed", "failed"]
    assert await _delayed(store, core) == {}


async def test_the_backoff_is_capped(store: Store) -> None:
    core, rec = await make_core(store)
    for n in ("n1", "n2", "n3"):
        await core.register_node(node_id=n, capacity=1, pools=["p"])
    sub = await core.submit(spec("p", max_attempts=4, backoff_base=0.04, backoff_max=0.06))
    assert (await _hash(store, core, sub.job_id))["backoff"] == "40 60"
    # min(60, 40), min(60, 80), min(60, 160) ms, halved by a draw of 0
    for attempt, expected in ((1, 20), (2, 30), (3, 30)):
        node = rec.of(AssignDelivery)[-1].node_id
        await core.result(sub.job_id, node_id=node, attempt=attempt, ok=False, retryable=True,
                          draw=0.0)
        due = (await _delayed(store, core))[sub.job_id]
        assert due - await _last_attempt_end(store, core, sub.job_id) == expected
        await _wait_due(store, core, sub.job_id)
        await core.reap()


async def test_a_failure_not_retryable_ends_the_job(store: Store) -> None:
    core, rec = await make_core(store)
    await core.register_node(node_id="n1", capacity=1, pools=["p"])
    await core.register_node(node_id="n2", capacity=1, pools=["p"])
    sub = await core.submit(spec("p", max_attempts=3))
    state, _ = await core.result(sub.job_id, node_id="n1", attempt=1, ok=False,
                                 error={"code": "BAD_INPUT", "message": "no"})
    assert state == "failed"
    assert [d.state for d in rec.of(DoneDelivery)] == ["failed"]
    assert len(rec.of(AssignDelivery)) == 1


@pytest.mark.parametrize("reaper", ["A", "B"])
async def test_a_delayed_job_is_released_when_due_by_either_instance(
    store: Store, reaper: str
) -> None:
    a, rec_a = await make_core(store, "A")
    b, _ = await make_core(store, "B")
    await a.register_node(node_id="n1", capacity=1, pools=["p"])
    sub = await a.submit(spec("p", delay=0.1))
    assert sub.state == "delayed" and rec_a.of(AssignDelivery) == []
    info = await Queries(store, a.keys).job(sub.job_id)
    assert info is not None and info.state == "delayed"
    assert info.timings["due"] == (await _delayed(store, a))[sub.job_id]
    core = a if reaper == "A" else b
    await core.reap()
    assert await _delayed(store, a) == {sub.job_id: (await _delayed(store, a))[sub.job_id]}
    await _wait_due(store, a, sub.job_id)
    assert (await core.reap())[1] == 1
    info = await Queries(store, a.keys).job(sub.job_id)
    assert info is not None and (info.state, info.node, info.attempt) == ("assigned", "n1", 1)
    if reaper == "A":  # the node's owner gets the assignment: in the reply, or in its inbox
        (assign,) = rec_a.of(AssignDelivery)
        assert (assign.job_id, assign.node_id, assign.attempt) == (sub.job_id, "n1", 1)
    else:
        assert await store.execute("XLEN", a.keys.inbox("A")) == 1
    assert await _delayed(store, a) == {}


async def test_delayed_jobs_outlive_the_instance_that_took_them(store: Store) -> None:
    a, _ = await make_core(store, "A")
    b, rec_b = await make_core(store, "B")
    subs = [await a.submit(spec("p", delay=0.05)) for _ in range(3)]
    # instance A is gone from here on; B's node joins, B's reaper releases A's jobs
    await b.register_node(node_id="n1", capacity=2, pools=["p"])
    for sub in subs:
        await _wait_due(store, b, sub.job_id)
    assert (await b.reap())[1] == 3
    assigned = await rec_b.wait_for(AssignDelivery, 2)
    assert {d.job_id for d in assigned} < {s.job_id for s in subs}
    states = []
    for sub in subs:
        info = await Queries(store, b.keys).job(sub.job_id)
        assert info is not None
        states.append(info.state)
    assert sorted(states) == ["assigned", "assigned", "queued"]


async def test_not_before_in_the_past_places_the_job_at_once(store: Store) -> None:
    core, _ = await make_core(store)
    await core.register_node(node_id="n1", capacity=1, pools=["p"])
    sub = await core.submit(spec("p", not_before=1.0))
    assert sub.state == "assigned"


@pytest.mark.parametrize("how", ["delayed", "backing_off"])
async def test_a_waiting_job_is_cancelled(store: Store, how: str) -> None:
    core, rec = await make_core(store)
    await core.register_node(node_id="n1", capacity=1, pools=["p"])
    if how == "delayed":
        sub = await core.submit(spec("p", delay=0.05))
    else:
        sub = await core.submit(spec("p", max_attempts=2, backoff_base=0.05))
        await core.result(sub.job_id, node_id="n1", attempt=1, ok=False, retryable=True)
    assert (await Queries(store, core.keys).job(sub.job_id)).state == "delayed"  # type: ignore[union-attr]
    assert await core.cancel(sub.job_id, principal="", reason="no longer needed") == "canceled"
    assert await _delayed(store, core) == {}
    (done,) = rec.of(DoneDelivery)
    assert done.state == "canceled"
    await trio.sleep(0.06)
    await core.reap()
    assert (await Queries(store, core.keys).job(sub.job_id)).state == "canceled"  # type: ignore[union-attr]
    counts = await Queries(store, core.keys).counts()
    assert counts.get("delayed", 0) == 0


async def test_another_principal_cannot_cancel_a_delayed_job(store: Store) -> None:
    core, _ = await make_core(store)
    sub = await core.submit(spec("p", delay=10.0), principal="alice")
    with pytest.raises(Exception, match="another client"):
        await core.cancel(sub.job_id, principal="mallory")
    assert (await Queries(store, core.keys).job(sub.job_id)).state == "delayed"  # type: ignore[union-attr]


async def test_the_payload_goes_when_the_job_ends_done_unless_kept(store: Store) -> None:
    core, _ = await make_core(store)
    await core.register_node(node_id="n1", capacity=3, pools=["p"])
    plain = await core.submit(spec("p", payload={"audio": "x" * 100}))
    kept = await core.submit(spec("p", payload={"audio": "y"}, keep_payload=True))
    failed = await core.submit(spec("p", payload={"audio": "z"}))
    for sub in (plain, kept):
        await core.result(sub.job_id, node_id="n1", attempt=1, ok=True, output_json='"text"')
    await core.result(failed.job_id, node_id="n1", attempt=1, ok=False)
    assert "payload" not in await _hash(store, core, plain.job_id)
    assert (await _hash(store, core, plain.job_id))["rbytes"] == str(len('"text"') + len("null"))
    assert (await _hash(store, core, kept.job_id))["payload"] == '{"audio":"y"}'
    # a failed job keeps it for an operator's requeue
    assert (await _hash(store, core, failed.job_id))["payload"] == '{"audio":"z"}'
    assert await core.requeue(failed.job_id, reason="try again")


async def test_result_ttl_is_honoured(store: Store) -> None:
    core, _ = await make_core(store)
    await core.register_node(node_id="n1", capacity=2, pools=["p"])
    short = await core.submit(spec("p", result_ttl=0.05))
    default = await core.submit(spec("p"))
    for sub in (short, default):
        await core.result(sub.job_id, node_id="n1", attempt=1, ok=True)
    await trio.sleep(0.1)
    await core.reap()
    q = Queries(store, core.keys)
    assert await q.job(short.job_id) is None
    assert (await q.job(default.job_id)).state == "done"  # type: ignore[union-attr]
    assert await store.execute("ZSCORE", core.keys.ended_of(""), short.job_id) is None


async def _finish(core: Core, principal: str, output: str = '"o"') -> str:
    sub = await core.submit(spec("p"), principal=principal)
    await core.result(sub.job_id, node_id="n1", attempt=1, ok=True, output_json=output)
    return sub.job_id


async def _indexed(store: Store, core: Core, job_id: str, principal: str) -> bool:
    keys = [core.keys.jobs_of(principal), core.keys.jobs_in("done"),
            core.keys.jobs_on("n1"), core.keys.ended_of(principal)]
    return any([await store.execute("ZSCORE", k, job_id) is not None for k in keys])


async def test_retention_evicts_the_oldest_of_one_principal_only(store: Store) -> None:
    core, _ = await make_core(store, retain_count=2)
    await core.register_node(node_id="n1", capacity=1, pools=["p"])
    others = [await _finish(core, "bob") for _ in range(2)]
    alice = [await _finish(core, "alice") for _ in range(3)]
    q = Queries(store, core.keys)
    assert await q.job(alice[0]) is None
    assert not await _indexed(store, core, alice[0], "alice")
    for job_id in alice[1:]:
        assert (await q.job(job_id)).state == "done"  # type: ignore[union-attr]
    for job_id in others:
        assert (await q.job(job_id)).state == "done"  # type: ignore[union-attr]
        assert await _indexed(store, core, job_id, "bob")
    assert (await q.counts()).get("done") == 4
    retained = await store.execute("HGET", core.keys.retained, "alice")
    assert int(retained) == 2 * (len('"o"') + len("null"))


async def test_retention_bounds_bytes(store: Store) -> None:
    core, _ = await make_core(store, retain_bytes=100)
    await core.register_node(node_id="n1", capacity=1, pools=["p"])
    first = await _finish(core, "alice", '"' + "a" * 40 + '"')
    second = await _finish(core, "alice", '"' + "b" * 40 + '"')
    q = Queries(store, core.keys)
    assert (await q.job(first)).state == "done"  # type: ignore[union-attr]
    third = await _finish(core, "alice", '"' + "c" * 40 + '"')
    assert await q.job(first) is None
    assert await q.job(second) is not None and await q.job(third) is not None
    # a single result over the bound stays: a finish never evicts its own job
    big = await _finish(core, "alice", '"' + "d" * 500 + '"')
    assert await q.job(big) is not None


async def test_gc_and_requeue_keep_the_retention_accounting(store: Store) -> None:
    core, _ = await make_core(store, retention=0.05)
    await core.register_node(node_id="n1", capacity=1, pools=["p"])
    sub = await core.submit(spec("p"), principal="alice")
    await core.result(sub.job_id, node_id="n1", attempt=1, ok=False)
    assert await store.execute("HGET", core.keys.retained, "alice") is not None
    await core.requeue(sub.job_id, reason="again")
    assert await store.execute("ZCARD", core.keys.ended_of("alice")) == 0
    await core.result(sub.job_id, node_id="n1", attempt=2, ok=True)
    await trio.sleep(0.1)
    await core.reap()
    assert await store.execute("HGET", core.keys.retained, "alice") is None
    assert await store.execute("EXISTS", core.keys.ended_of("alice")) == 0


@pytest.mark.parametrize(
    ("kw", "exc", "text"),
    [
        ({"delay": 10 * 86400.0}, BadDelay, "max_delay"),
        ({"delay": 1e300}, BadDelay, "max_delay"),
        ({"not_before": 4e12}, BadDelay, "max_delay"),
        ({"delay": 1.0, "not_before": 1.0}, BadDelay, "not both"),
        ({"result_ttl": 10 * 86400.0}, BadTtl, "max_result_ttl"),
        ({"result_ttl": -1.0}, BadTtl, "max_result_ttl"),
        ({"backoff_base": 10.0, "backoff_max": 1.0}, BadArgument, "backoff_base"),
        ({"backoff_base": -1.0}, BadArgument, "backoff_base"),
    ],
)
async def test_hostile_lifecycle_values_are_refused(
    store: Store, kw: dict[str, Any], exc: type[Exception], text: str
) -> None:
    core, _ = await make_core(store)
    with pytest.raises(exc, match=text):
        await core.submit(spec("p", **kw))
    assert await store.execute("EXISTS", core.keys.jobs_in("active")) == 0


async def test_the_reaper_wakes_for_a_delayed_job_before_its_interval(store: Store) -> None:
    core, rec = await make_core(store, reaper_interval=600.0)
    await core.register_node(node_id="n1", capacity=1, pools=["p"])
    sub = await core.submit(spec("p", delay=0.2))
    assert core.next_delayed_in is None
    with trio.fail_after(30):  # the interval is 600 s: only the timer can release it
        async with trio.open_nursery() as nursery:
            await nursery.start(serve_reaper, core)
            (assign,) = await rec.wait_for(AssignDelivery)
            nursery.cancel_scope.cancel()
    assert assign.job_id == sub.job_id
    assert core.next_delayed_in is None
