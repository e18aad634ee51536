"""job_result_many: a node's burst of accepts and results in one call (both stores)."""

from __future__ import annotations

import pytest

from schedd import errors
from schedd.core import AssignDelivery, DoneDelivery, Queries
from schedd.core.burst import BurstItem, Recorded
from schedd.store.base import Store
from tests.core.helpers import make_core, spec


async def _snapshot(store: Store, job_key: str) -> list[tuple[bytes, bytes]]:
    flat = await store.execute("HGETALL", job_key)
    return sorted(zip(flat[::2], flat[1::2], strict=True))


async def test_a_mixed_burst_answers_each_item_and_finishes_the_rest(store: Store) -> None:
    core, rec = await make_core(store)
    await core.register_node(node_id="n1", capacity=5, pools=["p"])
    await core.register_node(node_id="n2", capacity=1, pools=["q"])
    good = await core.submit(spec("p"))
    joint = await core.submit(spec("p"))
    repeated = await core.submit(spec("p"))
    stale = await core.submit(spec("p"))
    retried = await core.submit(spec("p", max_attempts=2, backoff_base=5.0))
    other = await core.submit(spec("q"))  # on n2
    assert {s.state for s in (good, joint, repeated, stale, retried, other)} == {"assigned"}
    await core.result(repeated.job_id, node_id="n1", attempt=1, ok=True)
    filler = await core.submit(spec("p"))
    assert filler.state == "assigned"
    waiting = await core.submit(spec("p"))  # n1 is full: it waits for a freed slot
    assert waiting.state == "queued"
    before_other = await _snapshot(store, core.keys.job(other.job_id))
    before_stale = await _snapshot(store, core.keys.job(stale.job_id))
    rec.clear()
    error = {"code": "E_X", "message": "try elsewhere"}
    out = await core.finish_many("n1", [
        BurstItem(good.job_id, 1, output_json='{"a": 1}'),
        BurstItem(joint.job_id, 1, accept=True, ok=False, error={"code": "E_Y", "message": "no"}),
        BurstItem(repeated.job_id, 1),
        BurstItem(stale.job_id, 2),
        BurstItem(retried.job_id, 1, ok=False, error=error, retryable=True),
        BurstItem(other.job_id, 1),
        BurstItem("no-such-job", 1),
    ])
    assert out[:4] == [Recorded("done", False), Recorded("running", False),
                       Recorded("failed", False), Recorded("done", True)]
    assert isinstance(out[4], errors.StaleAttempt) and "attempt 2" in str(out[4])
    assert out[5] == Recorded("delayed", False)
    assert isinstance(out[6], errors.StaleAttempt) and "not on this node" in str(out[6])
    assert isinstance(out[7], errors.JobNotFound)
    assert len(out) == 8
    # refused items changed nothing
    assert await _snapshot(store, core.keys.job(other.job_id)) == before_other
    assert await _snapshot(store, core.keys.job(stale.job_id)) == before_stale
    # one done per finished job, none for the repeat or the refused ones
    dones = {d.job_id: d for d in rec.of(DoneDelivery)}
    assert set(dones) == {good.job_id, joint.job_id}
    assert dones[good.job_id].ok and not dones[joint.job_id].ok
    # the freed slots fed the node: the queued job's assign came back in the one reply
    (assign,) = rec.of(AssignDelivery)
    assert (assign.job_id, assign.node_id) == (waiting.job_id, "n1")
    counts = await Queries(store, core.keys).counts()
    assert counts["done"] == 2 and counts["failed"] == 1 and counts["delayed"] == 1
    assert counts["assigned"] == 4  # stale (attempt 1), filler, waiting on n1; other on n2


async def test_an_accept_alone_and_a_refused_joint_item_answer_as_apart(store: Store) -> None:
    core, rec = await make_core(store)
    await core.register_node(node_id="n1", capacity=3, pools=["p"])
    alone = await core.submit(spec("p"))
    finished = await core.submit(spec("p"))
    await core.result(finished.job_id, node_id="n1", attempt=1, ok=True)
    rec.clear()
    out = await core.finish_many("n1", [
        BurstItem(alone.job_id, 1, accept=True, result=False),
        BurstItem(alone.job_id, 1, accept=True, result=False),
        # the accept of a finished attempt is refused, then its result is a repeat
        BurstItem(finished.job_id, 1, accept=True),
    ])
    assert out[:2] == [Recorded("running", False), Recorded("running", True)]
    assert isinstance(out[2], errors.StaleAttempt)
    assert out[3] == Recorded("done", True)
    state = await store.execute("HGET", core.keys.job(alone.job_id), "state")
    assert state == b"running"
    assert rec.of(DoneDelivery) == []


async def test_items_not_in_groups_or_of_an_unknown_kind_change_nothing(store: Store) -> None:
    core, _rec = await make_core(store)
    await core.register_node(node_id="n1", capacity=1, pools=["p"])
    sub = await core.submit(spec("p"))
    key = core.keys.job(sub.job_id)
    with pytest.raises(errors.BadArgument, match="groups of eight"):
        await core._call("job_result_many", [key], ["n1", sub.job_id, 1, "r"])
    with pytest.raises(errors.BadArgument, match="kind"):
        await core._call("job_result_many", [key, key], [
            "n1", sub.job_id, 1, "r", "1", "null", "null", "", "",
            sub.job_id, 1, "x", "", "", "", "", ""])
    assert await store.execute("HGET", key, "state") == b"assigned"
    assert await core.finish_many("n1", []) == []
