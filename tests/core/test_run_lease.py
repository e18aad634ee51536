"""Progress extends a running attempt's run deadline (job_progress), up to ``max_run``.

The deadline is read from the deadlines set; time is moved by rewriting the attempt's accept
time (``t_acc``) rather than by waiting, except where a deadline must really pass.
"""

from __future__ import annotations

from typing import Any

import trio

from schedd.core import Core, DoneDelivery
from schedd.store.base import Store
from tests.core.helpers import make_core, spec


async def now_ms(store: Store) -> int:
    seconds, micros = await store.execute("TIME")
    return int(seconds) * 1000 + int(micros) // 1000


async def deadline_of(core: Core, job_id: str) -> int:
    score = await core.store.execute("ZSCORE", core.keys.deadlines, job_id)
    return int(float(score))


async def _running(store: Store, **settings: Any) -> tuple[Core, Any, str]:
    core, rec = await make_core(store, **settings)
    await core.register_node(node_id="n1", capacity=1, pools=["p"])
    sub = await core.submit(spec("p", max_attempts=1))
    await core.accept(sub.job_id, node_id="n1", attempt=1)
    return core, rec, sub.job_id


async def accepted_ago(core: Core, job_id: str, ms: int) -> int:
    """Move the attempt's accept ``ms`` into the past, its run deadline with it (as if that
    time had passed since); returns the new accept time."""
    t_acc = int(await core.store.execute("HGET", core.keys.job(job_id), "t_acc")) - ms
    await core.store.execute("HSET", core.keys.job(job_id), "t_acc", str(t_acc))
    deadline = await deadline_of(core, job_id) - ms
    await core.store.execute("ZADD", core.keys.deadlines, str(deadline), job_id)
    return t_acc


async def _progress(core: Core, job_id: str) -> None:
    await core.progress(job_id, node_id="n1", attempt=1, data_json='{"pct": 1}')


async def test_progress_keeps_a_job_running_past_its_run_timeout(store: Store) -> None:
    core, rec, job_id = await _running(store, run_timeout=1.0, max_run=3600.0)
    first = await deadline_of(core, job_id)
    await accepted_ago(core, job_id, 5000)  # it has run 5 s, its run_timeout is 1 s
    before = await now_ms(store)
    await _progress(core, job_id)
    extended = await deadline_of(core, job_id)
    assert extended >= before + 1000 and extended >= first
    assert (await core.reap())[1] == 0  # not due
    state, _ = await core.result(job_id, node_id="n1", attempt=1, ok=True, output_json="1")
    assert state == "done"
    assert [d.state for d in rec.of(DoneDelivery)] == ["done"]


async def test_a_job_whose_progress_stops_times_out_at_its_extended_deadline(
    store: Store,
) -> None:
    core, rec, job_id = await _running(store, run_timeout=0.05, max_run=3600.0)
    first = await deadline_of(core, job_id)
    await trio.sleep(0.02)
    await _progress(core, job_id)
    extended = await deadline_of(core, job_id)
    assert extended > first
    while await now_ms(store) <= extended:  # until the extended deadline has passed
        await trio.sleep(0.02)
    assert (await core.reap())[1] == 1
    [done] = rec.of(DoneDelivery)
    assert done.state == "failed" and "run deadline missed" in done.error["message"]


async def test_progress_never_extends_past_max_run_after_the_accept(store: Store) -> None:
    core, _, job_id = await _running(store, run_timeout=1.0, max_run=2.0)
    t_acc = await accepted_ago(core, job_id, 1500)
    await _progress(core, job_id)
    assert await deadline_of(core, job_id) == t_acc + 2000  # not now + 1 s
    # past max_run, progress changes nothing: the deadline stays where it was
    t_acc = await accepted_ago(core, job_id, 1000)
    await _progress(core, job_id)
    assert await deadline_of(core, job_id) == t_acc + 2000


async def test_progress_never_brings_a_deadline_nearer(store: Store) -> None:
    # a run_timeout longer than max_run: the deadline set at accept stands
    core, _, job_id = await _running(store, run_timeout=60.0, max_run=1.0)
    first = await deadline_of(core, job_id)
    await _progress(core, job_id)
    assert await deadline_of(core, job_id) == first


async def test_progress_of_an_assigned_attempt_leaves_its_ack_deadline(store: Store) -> None:
    core, _ = await make_core(store, run_timeout=60.0, max_run=3600.0)
    await core.register_node(node_id="n1", capacity=1, pools=["p"])
    sub = await core.submit(spec("p", ack_timeout=1.0))
    ack = await deadline_of(core, sub.job_id)
    await _progress(core, sub.job_id)
    assert await deadline_of(core, sub.job_id) == ack

