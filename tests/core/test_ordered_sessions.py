"""Ordered sessions in the scripts: results in seq order, gaps skipped, duplicates refused, and
the order kept in the store across instances."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from schedd.core import AssignDelivery, Core, DoneDelivery, SkippedDelivery
from schedd.errors import BadArgument, DuplicateSeq, SessionNotFound
from schedd.store.base import Store
from tests.core.helpers import Recorder, make_core, spec


async def _ordered(core: Core, seq: int, session: str = "s", principal: str = "alice",
                   **kw: Any) -> str:
    sub = await core.submit(spec("p", job_id=f"{principal}-{session}-{seq}", session_id=session,
                                 seq=seq, **kw), principal=principal)
    return sub.job_id


async def _finish(core: Core, job_id: str, ok: bool = True) -> None:
    await core.result(job_id, node_id="n1", attempt=1, ok=ok, output_json='"out"', accepted=True)


async def _read_inbox(core: Core) -> None:
    """Hand the core what waits in its inbox, as ``serve_inbox`` does (a session's results
    always come through it)."""
    key = core.keys.inbox(core.instance)
    for entry_id, fields in await core.store.execute("XRANGE", key, "-", "+"):
        core.dispatch(fields[1])
        await core.store.execute("XDEL", key, entry_id)


async def _stream(core: Core, rec: Recorder) -> list[tuple[str, int]]:
    """What session 's' delivered, in order: ('done', seq) / ('skipped', from_seq)."""
    await _read_inbox(core)
    out: list[tuple[str, int]] = []
    for d in rec.items:
        if isinstance(d, DoneDelivery) and d.seq is not None and d.session_id == "s":
            out.append(("done", d.seq))
        elif isinstance(d, SkippedDelivery) and d.session_id == "s":
            out.append(("skipped", d.from_seq))
    return out


async def test_out_of_order_results_are_held_then_released_in_order(store: Store) -> None:
    core, rec = await make_core(store)
    await core.register_node(node_id="n1", capacity=8, pools=["p"])
    jobs = [await _ordered(core, seq) for seq in range(4)]
    for seq in (3, 1, 2):
        await _finish(core, jobs[seq])
    assert await _stream(core, rec) == []  # every one waits for seq 0
    await _finish(core, jobs[0], ok=False)  # a failed job is delivered in its turn too
    assert await _stream(core, rec) == [("done", 0), ("done", 1), ("done", 2), ("done", 3)]
    assert rec.of(DoneDelivery)[0].principal == "alice"
    first = rec.of(DoneDelivery)[0]
    assert (first.state, first.session_id, first.principal) == ("failed", "s", "alice")


async def test_gap_timeout_reports_the_missing_seqs_skipped(store: Store) -> None:
    core, rec = await make_core(store)
    await core.register_node(node_id="n1", capacity=8, pools=["p"])
    jobs = {seq: await _ordered(core, seq, gap_timeout=0.05) for seq in (0, 1, 3)}
    await _finish(core, jobs[0])
    await _finish(core, jobs[3])
    await core.reap()
    assert await _stream(core, rec) == [("done", 0)]  # the gap is young: seq 3 waits
    await trio.sleep(0.1)
    await core.reap()
    assert await _stream(core, rec) == [("done", 0), ("skipped", 1), ("done", 3)]
    (skipped,) = rec.of(SkippedDelivery)
    assert (skipped.principal, skipped.session_id, skipped.to_seq) == ("alice", "s", 2)
    rec.clear()
    await _finish(core, jobs[1])  # too late: its seq was reported skipped
    assert await _stream(core, rec) == []
    with pytest.raises(DuplicateSeq, match="skipped"):
        await core.submit(spec("p", session_id="s", seq=2), principal="alice")


async def test_a_session_starts_at_seq_zero(store: Store) -> None:
    core, rec = await make_core(store)
    await core.register_node(node_id="n1", capacity=8, pools=["p"])
    job = await _ordered(core, 5)
    await _finish(core, job)
    assert await _stream(core, rec) == []  # 0..4 may still come


async def test_duplicate_seq_is_refused_but_the_same_job_is_idempotent(store: Store) -> None:
    core, _rec = await make_core(store)
    await core.register_node(node_id="n1", capacity=8, pools=["p"])
    job = await _ordered(core, 0)
    with pytest.raises(DuplicateSeq, match=job):
        await core.submit(spec("p", job_id="other", session_id="s", seq=0), principal="alice")
    again = await core.submit(spec("p", job_id=job, session_id="s", seq=0), principal="alice")
    assert again.duplicate and again.job_id == job
    with pytest.raises(BadArgument):
        await core.submit(spec("p", seq=1), principal="alice")
    with pytest.raises(BadArgument, match="integer >= 0"):  # the script's own check
        await core.submit(spec("p", session_id="s", seq=-1), principal="alice")


async def test_another_principals_same_named_session_is_independent(store: Store) -> None:
    core, rec = await make_core(store)
    await core.register_node(node_id="n1", capacity=8, pools=["p"])
    a0 = await _ordered(core, 0, principal="alice")
    b0 = await _ordered(core, 0, principal="bob")  # the same seq of the same name: no conflict
    b1 = await _ordered(core, 1, principal="bob")
    await _finish(core, b1)
    await _finish(core, b0)
    await _read_inbox(core)
    assert [(d.principal, d.seq) for d in rec.of(DoneDelivery)] == [("bob", 0), ("bob", 1)]
    await _finish(core, a0)
    await _read_inbox(core)
    assert [(d.principal, d.seq) for d in rec.of(DoneDelivery)][-1] == ("alice", 0)
    with pytest.raises(SessionNotFound):
        await core.follow_session("s", principal="mallory")


async def test_held_results_wait_for_a_follow_when_their_instance_is_gone(store: Store) -> None:
    a, rec_a = await make_core(store, instance="A")
    b, rec_b = await make_core(store, instance="B")
    await a.register_node(node_id="n1", capacity=8, pools=["p"])
    jobs = [await _ordered(a, seq) for seq in range(3)]
    await _finish(b, jobs[2])
    await _finish(b, jobs[1])
    # instance A is gone (its presence never listed or expired): seq 0's turn releases nothing
    await _finish(b, jobs[0])
    assert await _stream(a, rec_a) == [] and await _stream(b, rec_b) == []
    followed = await b.follow_session("s", principal="alice")
    assert (followed.next_seq, followed.held) == (3, 0)
    assert await _stream(b, rec_b) == [("done", 0), ("done", 1), ("done", 2)]


async def test_a_left_session_holds_results_until_followed(store: Store) -> None:
    core, rec = await make_core(store)
    await core.register_node(node_id="n1", capacity=8, pools=["p"])
    j0 = await _ordered(core, 0)
    j1 = await _ordered(core, 1)
    await _finish(core, j0)
    assert await core.leave_session("s", principal="alice")
    await _finish(core, j1)
    assert await _stream(core, rec) == [("done", 0)]
    other, rec_other = await make_core(store, instance="B")
    assert not await core.leave_session("s", principal="bob")  # none of bob's
    followed = await other.follow_session("s", principal="alice")
    assert followed.next_seq == 2
    assert await _stream(other, rec_other) == [("done", 1)]


async def test_results_in_a_dead_instances_inbox_move_to_the_follower(store: Store) -> None:
    a, rec_a = await make_core(store, instance="A")
    b, rec_b = await make_core(store, instance="B")
    await a.client_open("c1", principal="alice", peer="p", protocol=1, name=None)  # A is live
    await a.register_node(node_id="n1", capacity=8, pools=["p"])
    jobs = [await _ordered(a, seq) for seq in range(3)]
    for job in jobs[:2]:
        await _finish(b, job)  # into A's inbox, which A (killed) never reads
    other = await b.submit(spec("p", job_id="x", session_id="t", seq=0), principal="alice")
    await _finish(b, other.job_id)  # another session's result stays where it is
    await b.follow_session("s", principal="alice")
    await _finish(b, jobs[2])
    assert await _stream(b, rec_b) == [("done", 0), ("done", 1), ("done", 2)]
    assert await _stream(a, rec_a) == []  # nothing of session s left for A
    assert await store.execute("XLEN", a.keys.inbox("A")) == 0
    assert [d.session_id for d in rec_b.of(DoneDelivery)].count("t") == 1


async def test_an_ordered_session_keeps_its_node(store: Store) -> None:
    """Session affinity holds for ordered jobs: the session's node while it has a free slot."""
    core, rec = await make_core(store)
    await core.register_node(node_id="n1", capacity=4, pools=["p"])
    await core.register_node(node_id="n2", capacity=4, pools=["p"])
    for seq in range(3):
        await _ordered(core, seq)
    nodes = {d.node_id for d in rec.of(AssignDelivery) if d.session_id == "s"}
    assert len(nodes) == 1
