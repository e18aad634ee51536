"""Job scripts against the embedded store and a real redis-server (one parametrised suite)."""

from __future__ import annotations

from typing import Any

import attrs
import orjson
import pytest
import trio

from schedd import errors
from schedd.core import (
    AssignDelivery,
    CancelJob,
    Core,
    Detach,
    DoneDelivery,
    Followed,
    ProgressDelivery,
    Queries,
)
from schedd.core.model import decode_delivery
from schedd.store.base import Store
from schedd.store.keys import Keys
from tests.core.helpers import Recorder, make_core, spec


async def test_full_lifecycle_delivers_one_done(store: Store) -> None:
    core, rec = await make_core(store)
    await core.register_node(node_id="n1", capacity=1, pools=["p"])
    sub = await core.submit(spec("p", payload={"q": 1}), principal="alice")
    assert (sub.state, sub.attempt, sub.duplicate) == ("assigned", 1, False)
    assert await core.accept(sub.job_id, node_id="n1", attempt=1) is True
    assert await core.accept(sub.job_id, node_id="n1", attempt=1) is False
    await core.progress(sub.job_id, node_id="n1", attempt=1, data_json='{"pct": 50}')
    (prog,) = rec.of(ProgressDelivery)
    assert prog.data_json == '{"pct": 50}' and prog.principal == "alice"
    state, dup = await core.result(sub.job_id, node_id="n1", attempt=1, ok=True,
                                   output_json='{"a": 2}')
    assert (state, dup) == ("done", False)
    (done,) = rec.of(DoneDelivery)
    assert done.ok and orjson.loads(done.output_json) == {"a": 2} and done.node == "n1"
    assert done.attempts == 1 and done.principal == "alice"
    t = done.timings
    assert 0 < t["submitted"] <= t["assigned"] <= t["accepted"] <= t["finished"]
    counts = await Queries(store, core.keys).counts()
    assert counts["done"] == 1 and counts["running"] == 0 and counts["total:submitted"] == 1


async def test_duplicate_result_is_reported_noop(store: Store) -> None:
    core, rec = await make_core(store)
    await core.register_node(node_id="n1", capacity=1, pools=["p"])
    sub = await core.submit(spec("p"))
    await core.result(sub.job_id, node_id="n1", attempt=1, ok=True)
    assert await core.result(sub.job_id, node_id="n1", attempt=1, ok=True) == ("done", True)
    assert len(rec.of(DoneDelivery)) == 1


async def test_failed_result(store: Store) -> None:
    core, rec = await make_core(store)
    await core.register_node(node_id="n1", capacity=1, pools=["p"])
    sub = await core.submit(spec("p"))
    state, _ = await core.result(sub.job_id, node_id="n1", attempt=1, ok=False,
                                 error={"code": "OOM", "message": "out of memory"})
    assert state == "failed"
    (done,) = rec.of(DoneDelivery)
    assert not done.ok and done.error == {"code": "OOM", "message": "out of memory"}


async def test_submit_is_idempotent_and_returns_result(store: Store) -> None:
    core, rec = await make_core(store)
    await core.register_node(node_id="n1", capacity=1, pools=["p"])
    first = await core.submit(spec("p", job_id="j1"), principal="alice")
    again = await core.submit(spec("p", job_id="j1"), principal="alice")
    assert again.duplicate and again.state == "assigned" and again.done is None
    assert (first.follows, again.follows) == (0, 1)  # a duplicate counts the move
    assert len(rec.of(AssignDelivery)) == 1
    await core.result("j1", node_id="n1", attempt=1, ok=True, output_json="[1]")
    final = await core.submit(spec("p", job_id="j1"), principal="alice")
    assert final.duplicate and final.state == "done"
    assert final.done is not None and final.done.output_json == "[1]"
    assert final.done.principal == "alice"
    assert first.job_id == "j1"
    with pytest.raises(errors.NotYours):
        await core.submit(spec("p", job_id="j1"), principal="mallory")
    assert (await Queries(store, core.keys).counts())["total:submitted"] == 1


async def test_submit_bad_arguments(store: Store) -> None:
    core, _ = await make_core(store)
    with pytest.raises(errors.BadArgument):
        await core.submit(spec())
    with pytest.raises(errors.BadArgument, match="priority"):
        await core.submit(spec("p", priority=5000))
    k = core.keys
    base: list[str | int] = ["A", "", "j", '["p"]', "null", "", 0, "[]", 1000, 1000, 1000, 3, 1,
                             10, 1000, 1000]
    for index, value in ((4, "{}"), (8, "x"), (9, 0)):
        bad = list(base)
        bad[index - 1] = value
        with pytest.raises(errors.BadArgument):
            await core.scripts.call(store, "job_submit", [k.job("j"), k.counts], bad)
    assert await Queries(store, core.keys).job("j") is None


async def test_no_capacity_and_queue_full(store: Store) -> None:
    off, _ = await make_core(store, queue=False)
    with pytest.raises(errors.NoCapacity):
        await off.submit(spec("p"))
    small, _ = await make_core(store, max_queued=2)
    await small.submit(spec("p"))
    await small.submit(spec("p"))
    with pytest.raises(errors.QueueFull):
        await small.submit(spec("p"))
    counts = await Queries(store, small.keys).counts()
    assert counts["queued"] == 2


async def test_selection_prefers_most_free_slots_and_pool_order(store: Store) -> None:
    core, rec = await make_core(store)
    await core.register_node(node_id="small", capacity=1, pools=["a"])
    await core.register_node(node_id="big", capacity=3, pools=["a"])
    await core.register_node(node_id="other", capacity=9, pools=["b"])
    for _ in range(3):
        await core.submit(spec("a", "b"))
    # big (3 free) twice until it ties with small... then first-pool members fill before pool b
    placed = [a.node_id for a in rec.of(AssignDelivery)]
    assert placed[0] == "big"
    assert "other" not in placed
    await core.submit(spec("a", "b"))
    await core.submit(spec("a", "b"))
    placed = [a.node_id for a in rec.of(AssignDelivery)]
    assert placed.count("big") == 3 and placed.count("small") == 1 and placed[-1] == "other"


async def test_session_affinity(store: Store) -> None:
    core, rec = await make_core(store)
    await core.register_node(node_id="n1", capacity=5, pools=["p"])
    await core.register_node(node_id="n2", capacity=5, pools=["p"])
    await core.submit(spec("p", session_id="s"))
    first = rec.of(AssignDelivery)[-1].node_id
    for _ in range(3):
        await core.submit(spec("p", session_id="s"))
        assert rec.of(AssignDelivery)[-1].node_id == first
    assert rec.of(AssignDelivery)[-1].session_id == "s"


async def test_queue_order_priority_then_age(store: Store) -> None:
    core, rec = await make_core(store)
    low = await core.submit(spec("p", job_id="low", priority=0))
    high = await core.submit(spec("p", job_id="high", priority=5))
    low2 = await core.submit(spec("p", job_id="low2", priority=0))
    await core.register_node(node_id="n1", capacity=1, pools=["p"])
    order = []
    for _ in range(3):
        job = rec.of(AssignDelivery)[-1]
        order.append(job.job_id)
        await core.result(job.job_id, node_id="n1", attempt=job.attempt, ok=True)
    assert order == [high.job_id, low.job_id, low2.job_id]


async def _job_fields(store: Store, keys: Keys, job_id: str) -> dict[str, str]:
    flat = await store.execute("HGETALL", keys.job(job_id))
    return {flat[i].decode(): flat[i + 1].decode() for i in range(0, len(flat), 2)}


async def test_job_record_leaves_out_fields_at_their_defaults(store: Store) -> None:
    core, rec = await make_core(store)
    await core.register_node(node_id="n1", capacity=2, pools=["p"])
    plain = await core.submit(spec("p", job_id="plain"))
    fields = await _job_fields(store, core.keys, plain.job_id)
    assert {"id", "session", "session_ms", "services"}.isdisjoint(fields), fields
    assert fields["state"] == "assigned" and fields["pools"] == '["p"]'
    assert fields["priority"] == "0"  # always: versions before this one read it unguarded
    info = await Queries(store, core.keys).job(plain.job_id)
    assert info is not None and info.priority == 0 and info.session_id is None

    full = await core.submit(spec("p", job_id="full", session_id="s", priority=5,
                                  services=("ocr",)))
    fields = await _job_fields(store, core.keys, full.job_id)
    assert fields["session"] == "s" and int(fields["session_ms"]) > 0
    assert fields["priority"] == "5" and fields["services"] == '["ocr"]'
    info = await Queries(store, core.keys).job(full.job_id)
    assert info is not None and info.priority == 5 and info.session_id == "s"
    assert rec.of(AssignDelivery)[-1].session_id == "s"


async def test_completion_hands_next_job_across_pools(store: Store) -> None:
    core, rec = await make_core(store)
    await core.register_node(node_id="n1", capacity=1, pools=["a", "b"])
    first = await core.submit(spec("a"))
    queued = await core.submit(spec("b"))
    assert queued.state == "queued"
    await core.result(first.job_id, node_id="n1", attempt=1, ok=True)
    assert rec.of(AssignDelivery)[-1].job_id == queued.job_id
    pools = {p.pool: p for p in await Queries(store, core.keys).pools()}
    assert pools["a"].queued == 0 and pools["b"].queued == 0


async def test_fencing_stale_attempt_refused(store: Store) -> None:
    core, rec = await make_core(store)
    r1 = await core.register_node(node_id="n1", capacity=1, pools=["p"])
    sub = await core.submit(spec("p"))
    assert rec.of(AssignDelivery)[-1].node_id == "n1"
    await core.register_node(node_id="n2", capacity=1, pools=["p"])
    await core.node_offline("n1", epoch=r1.epoch, reason="lost")
    new = rec.of(AssignDelivery)[-1]
    assert (new.node_id, new.attempt) == ("n2", 2)
    for call in (
        core.accept(sub.job_id, node_id="n1", attempt=1),
        core.progress(sub.job_id, node_id="n1", attempt=1, data_json="1"),
        core.result(sub.job_id, node_id="n1", attempt=1, ok=True),
        core.reject(sub.job_id, node_id="n1", attempt=1, reason="x"),
        core.accept(sub.job_id, node_id="n2", attempt=1),
    ):
        with pytest.raises(errors.StaleAttempt):
            await call
    assert await core.result(sub.job_id, node_id="n2", attempt=2, ok=True) == ("done", False)
    with pytest.raises(errors.StaleAttempt):
        await core.result(sub.job_id, node_id="n1", attempt=1, ok=True)
    with pytest.raises(errors.JobNotFound):
        await core.accept("nope", node_id="n1", attempt=1)
    assert len(rec.of(DoneDelivery)) == 1


async def test_reject_moves_job_and_fails_at_max_attempts(store: Store) -> None:
    core, rec = await make_core(store)
    await core.register_node(node_id="n1", capacity=1, pools=["p"])
    await core.register_node(node_id="n2", capacity=1, pools=["p"])
    sub = await core.submit(spec("p", max_attempts=2))
    a1 = rec.of(AssignDelivery)[-1]
    assert await core.reject(sub.job_id, node_id=a1.node_id, attempt=1, reason="busy") == "assigned"
    a2 = rec.of(AssignDelivery)[-1]
    assert a2.node_id != a1.node_id and a2.attempt == 2
    assert await core.reject(sub.job_id, node_id=a2.node_id, attempt=2, reason="busy") == "failed"
    (done,) = rec.of(DoneDelivery)
    assert done.state == "failed" and done.error["code"] == "E_ATTEMPTS"
    pools = await Queries(store, core.keys).pools()
    assert pools[0].free_slots == 2


async def test_cancel_in_every_state(store: Store) -> None:
    core, rec = await make_core(store)
    queued = await core.submit(spec("p"), principal="alice")
    await core.cancel(queued.job_id, principal="alice")
    assert rec.of(DoneDelivery)[-1].state == "canceled"
    await core.register_node(node_id="n1", capacity=2, pools=["p"])
    assigned = await core.submit(spec("p"), principal="alice")
    running = await core.submit(spec("p"), principal="alice")
    await core.accept(running.job_id, node_id="n1", attempt=1)
    waiting = await core.submit(spec("p"), principal="alice")
    assert waiting.state == "queued"
    await core.cancel(assigned.job_id, principal="alice", reason="user abort")
    assert rec.of(CancelJob)[-1].job_id == assigned.job_id
    assert rec.of(AssignDelivery)[-1].job_id == waiting.job_id  # freed slot is reused at once
    await core.cancel(running.job_id)  # operator
    cancels = rec.of(CancelJob)
    assert [c.job_id for c in cancels] == [assigned.job_id, running.job_id]
    assert [d.state for d in rec.of(DoneDelivery)] == ["canceled"] * 3
    # a finished job: a no-op (no error, no second done, no cancel to the node)
    assert await core.cancel(running.job_id) == "canceled"
    await core.result(waiting.job_id, node_id="n1", attempt=1, ok=True)
    assert await core.cancel(waiting.job_id, principal="alice") == "done"
    assert [d.state for d in rec.of(DoneDelivery)] == ["canceled"] * 3 + ["done"]
    assert len(rec.of(CancelJob)) == 2
    with pytest.raises(errors.NotYours):
        await core.cancel(waiting.job_id, principal="mallory")
    with pytest.raises(errors.JobNotFound):
        await core.cancel("nope")
    counts = await Queries(store, core.keys).counts()
    assert counts["canceled"] == 3 and counts["done"] == 1 and counts.get("assigned", 0) == 0


async def test_follow_moves_deliveries_to_caller(store: Store) -> None:
    a, rec_a = await make_core(store, "A")
    b, rec_b = await make_core(store, "B")
    await a.register_node(node_id="n1", capacity=1, pools=["p"])
    sub = await a.submit(spec("p"), principal="alice")
    with pytest.raises(errors.NotYours):
        await b.follow(sub.job_id, principal="mallory")
    with pytest.raises(errors.JobNotFound):
        await b.follow("nope", principal="alice")
    assert await b.follow(sub.job_id, principal="alice") == Followed(
        state="assigned", attempt=1, done=None, follows=1)
    # the instance that had the job's deliveries is told they moved
    (entry,) = await a.store.execute("XRANGE", a.keys.inbox("A"), "-", "+")
    assert decode_delivery(entry[1][1]) == Detach(job_id=sub.job_id, principal="alice", follows=1)
    await a.result(sub.job_id, node_id="n1", attempt=1, ok=True)
    assert rec_a.of(DoneDelivery) == []
    reply = await b.store.execute("XLEN", b.keys.inbox("B"))
    assert reply == 1
    (entry,) = await b.store.execute("XRANGE", b.keys.inbox("B"), "-", "+")
    delivered = decode_delivery(entry[1][1])
    assert isinstance(delivered, DoneDelivery) and delivered.principal == "alice"
    followed = await b.follow(sub.job_id, principal="alice")
    assert followed.state == "done" and followed.done is not None and followed.done.ok
    assert followed.done.principal == "alice" and followed.follows == 0
    assert rec_b.items == []


async def test_a_duplicate_submit_elsewhere_detaches_the_instance_that_had_the_job(
    store: Store,
) -> None:
    a, _ = await make_core(store, "A")
    b, rec_b = await make_core(store, "B")
    await a.register_node(node_id="n1", capacity=1, pools=["p"])
    await a.submit(spec("p", job_id="j1"), principal="alice")
    with pytest.raises(errors.NotYours):
        await b.submit(spec("p", job_id="j1"), principal="mallory")
    assert await a.store.execute("XLEN", a.keys.inbox("A")) == 0  # a refusal moves nothing
    again = await b.submit(spec("p", job_id="j1"), principal="alice")
    assert again.duplicate and again.follows == 1
    (entry,) = await a.store.execute("XRANGE", a.keys.inbox("A"), "-", "+")
    assert decode_delivery(entry[1][1]) == Detach(job_id="j1", principal="alice", follows=1)
    await b.submit(spec("p", job_id="j1"), principal="alice")  # same instance: no detach
    assert await a.store.execute("XLEN", a.keys.inbox("A")) == 1
    assert await b.store.execute("XLEN", b.keys.inbox("B")) == 0 and rec_b.items == []


async def test_retention_removes_finished_jobs(store: Store) -> None:
    core, _ = await make_core(store, retention=0.05)
    await core.register_node(node_id="n1", capacity=1, pools=["p"])
    sub = await core.submit(spec("p"))
    await core.result(sub.job_id, node_id="n1", attempt=1, ok=True)
    q = Queries(store, core.keys)
    assert (await q.job(sub.job_id)) is not None
    await trio.sleep(0.1)
    assert (await core.reap())[2] == 1
    assert await q.job(sub.job_id) is None
    counts = await q.counts()
    assert counts["done"] == 0 and counts["total:done"] == 1


async def test_recent_finished_window(store: Store) -> None:
    core, _ = await make_core(store)
    await core.register_node(node_id="n1", capacity=1, pools=["p"])
    first = await core.submit(spec("p"))
    await core.result(first.job_id, node_id="n1", attempt=1, ok=True)
    second = await core.submit(spec("q", queue_timeout=0.01))
    await core.cancel(second.job_id)
    recent = await Queries(store, core.keys).recent_finished()
    assert [(f.job_id, f.state, f.node) for f in recent] == [
        (second.job_id, "canceled", None), (first.job_id, "done", "n1")]
    assert recent[1].submitted_ms <= recent[1].assigned_ms <= recent[1].finished_ms


async def test_recent_finished_is_trimmed_in_batches(store: Store) -> None:
    core, _ = await make_core(store)
    await core.register_node(node_id="n1", capacity=1, pools=["p"])
    old = orjson.dumps(["old", "done", "", 0, 0, 0, 0]).decode()
    await store.execute("LPUSH", core.keys.finished, *([old] * 2499))

    async def finish_one() -> str:
        sub = await core.submit(spec("p"))
        await core.result(sub.job_id, node_id="n1", attempt=1, ok=True)
        return sub.job_id

    await finish_one()  # 2,500: within the slack, not trimmed
    assert await store.execute("LLEN", core.keys.finished) == 2500
    newest = await finish_one()  # 2,501: back to the 2,000 most recent
    assert await store.execute("LLEN", core.keys.finished) == 2000
    recent = await Queries(store, core.keys).recent_finished()
    assert len(recent) == 2000 and recent[0].job_id == newest


async def _record_one_way(core: Core, rec: Recorder, node_id: str, joint: bool,
                          ) -> dict[str, object]:
    """One job of a node of its own through accept and an ok result, as two calls or as one;
    what it left behind."""
    queries = Queries(core.store, core.keys)
    counts_before = await queries.counts()
    events: list[Any] = []
    core.on_event = events.append
    await core.register_node(node_id=node_id, capacity=1, pools=[node_id])
    sub = await core.submit(spec(node_id))
    if joint:
        outcome = await core.result(sub.job_id, node_id=node_id, attempt=1, ok=True,
                                    output_json='{"a": 1}', accepted=True)
    else:
        await core.accept(sub.job_id, node_id=node_id, attempt=1)
        outcome = await core.result(sub.job_id, node_id=node_id, attempt=1, ok=True,
                                    output_json='{"a": 1}')
    info = await queries.job(sub.job_id)
    assert info is not None
    done = rec.of(DoneDelivery)[-1]
    finished = (await queries.recent_finished())[0]
    (node,) = [n for n in await queries.nodes() if n.node_id == node_id]
    counts = await queries.counts()
    return {
        "outcome": outcome,
        "events": [{k: ("<job>" if v == sub.job_id else "<node>" if v == node_id else v)
                    for k, v in attrs.asdict(e).items()} for e in events],
        "state": (info.state, info.ok, info.output, info.attempt),
        "timings": sorted(k for k, v in info.timings.items() if v),
        "done": (done.job_id == sub.job_id, done.state, done.ok, orjson.loads(done.output_json),
                 sorted(k for k, v in done.timings.items() if v)),
        "finished": (finished.job_id == sub.job_id, finished.accepted_ms > 0),
        "counts": {k: v - counts_before.get(k, 0) for k, v in counts.items()},
        "deadlines": await core.store.execute("ZCARD", core.keys.deadlines),
        "slots used": node.used,
    }


async def test_result_with_its_accept_records_what_accept_then_result_would(
        store: Store) -> None:
    core, rec = await make_core(store)
    apart = await _record_one_way(core, rec, "n1", joint=False)
    joint = await _record_one_way(core, rec, "n2", joint=True)
    assert joint == apart
    assert [e["state"] for e in joint["events"]] == ["assigned", "running", "done"]  # type: ignore[attr-defined]
    assert joint["timings"] == ["accepted", "assigned", "finished", "submitted"]
    assert joint["finished"] == (True, True) and joint["deadlines"] == 0
    assert joint["slots used"] == 0


async def test_result_with_its_accept_after_a_separate_accept(store: Store) -> None:
    core, rec = await make_core(store)
    events: list[object] = []
    core.on_event = events.append
    await core.register_node(node_id="n1", capacity=1, pools=["p"])
    sub = await core.submit(spec("p"))
    await core.accept(sub.job_id, node_id="n1", attempt=1)
    assert await core.result(sub.job_id, node_id="n1", attempt=1, ok=False,
                             accepted=True) == ("failed", False)
    assert [getattr(e, "state", None) for e in events] == ["assigned", "running", "failed"]
    counts = await Queries(store, core.keys).counts()
    assert counts["running"] == 0 and counts["failed"] == 1
    assert len(rec.of(DoneDelivery)) == 1


async def test_result_with_its_accept_is_refused_as_accept_would_be(store: Store) -> None:
    core, rec = await make_core(store)
    r1 = await core.register_node(node_id="n1", capacity=1, pools=["p"])
    sub = await core.submit(spec("p"))
    queries = Queries(store, core.keys)
    # a finished attempt: a duplicate without the accept, refused with it (as job_accept is)
    other = await core.submit(spec("p"))  # queued: n1's one slot is taken
    assert other.state == "queued"
    await core.result(sub.job_id, node_id="n1", attempt=1, ok=True)
    before = (await queries.counts(), await queries.job(sub.job_id))
    with pytest.raises(errors.StaleAttempt):
        await core.result(sub.job_id, node_id="n1", attempt=1, ok=True, accepted=True)
    with pytest.raises(errors.StaleAttempt):
        await core.accept(sub.job_id, node_id="n1", attempt=1)
    assert (await queries.counts(), await queries.job(sub.job_id)) == before
    # the attempt moved to another node: refused, and nothing changes
    assert rec.of(AssignDelivery)[-1].job_id == other.job_id
    await core.register_node(node_id="n2", capacity=1, pools=["p"])
    await core.node_offline("n1", epoch=r1.epoch, reason="lost")
    moved = rec.of(AssignDelivery)[-1]
    assert (moved.job_id, moved.node_id, moved.attempt) == (other.job_id, "n2", 2)
    before = (await queries.counts(), await queries.job(other.job_id))
    with pytest.raises(errors.StaleAttempt):
        await core.result(other.job_id, node_id="n1", attempt=1, ok=True, accepted=True)
    assert (await queries.counts(), await queries.job(other.job_id)) == before
    with pytest.raises(errors.JobNotFound):
        await core.result("nope", node_id="n1", attempt=1, ok=True, accepted=True)
    assert len(rec.of(DoneDelivery)) == 1
