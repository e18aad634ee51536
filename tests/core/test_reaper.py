"""The reaper script and service: liveness, deadlines, retention, dead instances."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from schedd.core import (
    AssignDelivery,
    CancelJob,
    DoneDelivery,
    HeartbeatBatcher,
    Queries,
    serve_reaper,
)
from schedd.store.base import Store
from tests.core.helpers import make_core, spec

FAST: dict[str, Any] = {"heartbeat_interval": 0.05, "liveness_intervals": 3}


async def test_silent_node_expires_and_its_job_moves(store: Store) -> None:
    core, rec = await make_core(store, **FAST)
    await core.register_node(node_id="n1", capacity=1, pools=["p"])
    sub = await core.submit(spec("p"))
    await core.accept(sub.job_id, node_id="n1", attempt=1)
    r2 = await core.register_node(node_id="n2", capacity=1, pools=["p"])
    assert await core.reap() == (0, 0, 0, 0)
    await trio.sleep(0.1)
    await core.heartbeat_batch([("n2", r2.epoch, 0, 0)])  # n2 keeps beating, n1 is silent
    await trio.sleep(0.1)
    lost, _, _, _ = await core.reap()
    assert lost == 1
    nodes = {n.node_id: n for n in await Queries(store, core.keys).nodes()}
    assert nodes["n1"].state == "offline" and nodes["n1"].reason == "liveness expired"
    last = rec.of(AssignDelivery)[-1]
    assert (last.job_id, last.node_id, last.attempt) == (sub.job_id, "n2", 2)


async def test_missed_ack_deadline_retries_elsewhere_and_cancels(store: Store) -> None:
    core, rec = await make_core(store)
    await core.register_node(node_id="n1", capacity=1, pools=["p"])
    sub = await core.submit(spec("p", ack_timeout=0.05))
    await core.register_node(node_id="n2", capacity=1, pools=["p"])
    await trio.sleep(0.1)
    assert (await core.reap())[1] == 1
    (cancel,) = rec.of(CancelJob)
    assert (cancel.node_id, cancel.job_id, cancel.attempt) == ("n1", sub.job_id, 1)
    assert "ack deadline" in cancel.reason
    last = rec.of(AssignDelivery)[-1]
    assert (last.node_id, last.attempt) == ("n2", 2)
    info = await Queries(store, core.keys).job(sub.job_id)
    assert info is not None and info.tried == ["n1"]


async def test_missed_run_deadline_fails_at_max_attempts(store: Store) -> None:
    core, rec = await make_core(store)
    await core.register_node(node_id="n1", capacity=1, pools=["p"])
    sub = await core.submit(spec("p", run_timeout=0.05, max_attempts=1))
    await core.accept(sub.job_id, node_id="n1", attempt=1)
    await trio.sleep(0.1)
    await core.reap()
    (done,) = rec.of(DoneDelivery)
    assert done.state == "failed" and "run deadline" in done.error["message"]
    (pool,) = await Queries(store, core.keys).pools()
    assert pool.free_slots == 1


async def test_queue_timeout_ends_job_timed_out(store: Store) -> None:
    core, rec = await make_core(store)
    sub = await core.submit(spec("p", queue_timeout=0.05))
    await trio.sleep(0.1)
    await core.reap()
    (done,) = rec.of(DoneDelivery)
    assert (done.job_id, done.state) == (sub.job_id, "timed_out")
    assert done.error == {"code": "E_QUEUE_TIMEOUT",
                          "message": "no node took the job within its queue timeout"}
    counts = await Queries(store, core.keys).counts()
    assert counts["queued"] == 0 and counts["timed_out"] == 1


async def test_offline_node_records_and_dead_inboxes_are_collected(store: Store) -> None:
    core, _ = await make_core(store, node_retention=0.05, instance_ttl=0.05)
    reg = await core.register_node(node_id="n1", capacity=1, pools=["p"])
    await core.node_offline("n1", epoch=reg.epoch, reason="bye")
    other, _ = await make_core(store, "B", instance_ttl=0.05)
    await other.heartbeat_batch([])
    await store.execute("XADD", core.keys.inbox("B"), "*", "d", "[]")
    await trio.sleep(0.1)
    _, _, removed, inboxes = await core.reap()
    assert removed == 1 and inboxes == 1
    assert await Queries(store, core.keys).nodes() == []
    assert await store.execute("EXISTS", core.keys.inbox("B")) == 0
    assert await store.execute("HEXISTS", core.keys.beats, "n1") == 0


async def test_reap_works_in_bounded_batches(store: Store) -> None:
    core, _ = await make_core(store, reaper_batch=3)
    for i in range(7):
        await core.submit(spec("p", queue_timeout=0.01, job_id=f"j{i}"))
    await trio.sleep(0.05)
    assert [(await core.reap())[1] for _ in range(4)] == [3, 3, 1, 0]


async def test_services_keep_nodes_alive_and_reap_dead_ones(store: Store) -> None:
    core, rec = await make_core(store, heartbeat_flush=0.01, reaper_interval=0.02, **FAST)
    batcher = HeartbeatBatcher(core)
    r1 = await core.register_node(node_id="n1", capacity=1, pools=["p"])
    await core.register_node(node_id="n2", capacity=1, pools=["p"])
    async with trio.open_nursery() as nursery:
        await nursery.start(batcher.serve)
        await nursery.start(serve_reaper, core)
        with trio.fail_after(5):
            for _ in range(20):  # n1 beats for 0.4 s; n2 never does
                batcher.beat("n1", r1.epoch, 0.1, 0)
                await trio.sleep(0.02)
        nodes = {n.node_id: n.state for n in await Queries(store, core.keys).nodes()}
        assert nodes == {"n1": "online", "n2": "offline"}
        assert batcher.flushes < 40  # beats were coalesced, not one call per beat
        nursery.cancel_scope.cancel()
    assert rec.items == []


@pytest.mark.parametrize("count", [1, 25])
async def test_stale_heartbeats_are_reported(store: Store, count: int) -> None:
    core, _ = await make_core(store)
    stale: list[tuple[str, int]] = []
    batcher = HeartbeatBatcher(core, on_stale=lambda node_id, epoch: stale.append((node_id, epoch)))
    for i in range(count):
        batcher.beat(f"ghost{i}", i + 1)
    await batcher.flush()
    assert sorted(stale) == sorted((f"ghost{i}", i + 1) for i in range(count))


def test_liveness_budget_includes_detection_delays() -> None:
    from schedd.core import CoreSettings

    default = CoreSettings()  # 1 s beats, 3 intervals, 0.1 s flush, 0.25 s reaper
    assert default.liveness_ttl == pytest.approx(2.65)
    assert default.liveness_ttl + default.heartbeat_flush + default.reaper_interval <= 3.0
    # a slow reaper never makes a node expire before it has missed a beat
    slow = CoreSettings(heartbeat_interval=1.0, liveness_intervals=2, reaper_interval=5.0)
    assert slow.liveness_ttl == pytest.approx(1.05)
