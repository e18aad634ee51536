"""Quotas and rate limits per principal, and per-pool dispatch rates, on both stores."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from schedd import errors
from schedd.core import Core, Limits, Queries
from schedd.store.base import Store
from schedd.store.keys import Keys
from tests.core.helpers import make_core, spec

USAGE = ("queued", "inflight", "bytes")


async def usage(store: Store, principal: str) -> dict[str, int]:
    raw = await store.execute("HGETALL", Keys("t").usage(principal))
    flat = [x.decode() if isinstance(x, bytes) else x for x in raw]
    got = dict(zip(flat[::2], flat[1::2], strict=True))
    return {k: int(got.get(k, 0)) for k in USAGE} | {
        k: int(v) for k, v in got.items() if k.startswith("refused:")}


async def quota_core(store: Store, instance: str = "A", **limits: Any) -> Core:
    core, _rec = await make_core(store, instance, quotas=Limits(**limits))
    return core


async def test_in_flight_cap_queues_and_releases_when_a_job_ends(store: Store) -> None:
    core = await quota_core(store, max_in_flight=1)
    await core.register_node(node_id="n1", capacity=3, pools=["p"])
    a = await core.submit(spec("p"), principal="alice")
    b = await core.submit(spec("p"), principal="alice")
    c = await core.submit(spec("p"), principal="bob")
    assert (a.state, b.state, c.state) == ("assigned", "queued", "assigned")
    assert (await usage(store, "alice"))["inflight"] == 1
    await core.result(a.job_id, node_id="n1", attempt=1, ok=True)
    job = await Queries(store, core.keys).job(b.job_id)
    assert job is not None and job.state == "assigned"


async def test_max_queued_refused_then_accepted_when_one_leaves(store: Store) -> None:
    core = await quota_core(store, max_queued=2)
    subs = [await core.submit(spec("p"), principal="alice") for _ in range(2)]
    with pytest.raises(errors.QuotaExceeded) as info:
        await core.submit(spec("p"), principal="alice")
    assert info.value.code == "E_QUOTA" and info.value.quota == "max_queued"
    assert (await core.submit(spec("p"), principal="bob")).state == "queued"
    await core.cancel(subs[0].job_id, principal="alice")
    assert (await core.submit(spec("p"), principal="alice")).state == "queued"
    u = await usage(store, "alice")
    assert u["queued"] == 2 and u["refused:E_QUOTA"] == 1


async def test_payload_bytes_refused_then_recovered(store: Store) -> None:
    core = await quota_core(store, max_payload_bytes=30)
    await core.register_node(node_id="n1", capacity=5, pools=["p"])
    a = await core.submit(spec("p", payload="x" * 20), principal="alice")  # 22 bytes of JSON
    with pytest.raises(errors.QuotaExceeded) as info:
        await core.submit(spec("p", payload="y" * 10), principal="alice")
    assert info.value.quota == "max_payload_bytes"
    assert (await usage(store, "alice"))["bytes"] == 22
    await core.result(a.job_id, node_id="n1", attempt=1, ok=True)
    assert (await core.submit(spec("p", payload="y" * 10), principal="alice")).state == "assigned"


async def test_submit_rate_refused_with_retry_after_and_refilled(store: Store) -> None:
    core = await quota_core(store, submit_rate=2.0, submit_burst=2)
    await core.submit(spec("p"), principal="alice")
    await core.submit(spec("p"), principal="alice")
    with pytest.raises(errors.RateLimited) as info:
        await core.submit(spec("p"), principal="alice")
    assert info.value.code == "E_RATE_LIMITED"
    assert 0 < info.value.retry_after <= 0.5
    await core.submit(spec("p"), principal="bob")  # each principal has its own bucket
    await trio.sleep(info.value.retry_after + 0.01)
    await core.submit(spec("p"), principal="alice")
    assert (await usage(store, "alice"))["refused:E_RATE_LIMITED"] == 1


async def test_rate_bucket_is_shared_by_instances(store: Store) -> None:
    a = await quota_core(store, "A", submit_rate=0.01, submit_burst=2)
    b = await quota_core(store, "B", submit_rate=0.01, submit_burst=2)
    await a.submit(spec("p"), principal="alice")
    await b.submit(spec("p"), principal="alice")
    for core in (a, b):
        with pytest.raises(errors.RateLimited) as info:
            await core.submit(spec("p"), principal="alice")
        assert info.value.retry_after > 50


async def test_duplicate_submit_takes_no_token(store: Store) -> None:
    core = await quota_core(store, submit_rate=0.01, submit_burst=1)
    sub = await core.submit(spec("p", job_id="j1"), principal="alice")
    again = await core.submit(spec("p", job_id="j1"), principal="alice")
    assert again.duplicate and again.job_id == sub.job_id


async def test_per_principal_quotas_override_the_default(store: Store) -> None:
    core, _ = await make_core(store, quotas=Limits(max_queued=1),
                              principal_quotas={"big": Limits(max_queued=3)})
    await core.submit(spec("p"), principal="small")
    with pytest.raises(errors.QuotaExceeded):
        await core.submit(spec("p"), principal="small")
    for _ in range(3):
        await core.submit(spec("p"), principal="big")
    with pytest.raises(errors.QuotaExceeded):
        await core.submit(spec("p"), principal="big")


async def test_counters_return_to_zero_after_every_kind_of_end(store: Store) -> None:
    """done, failed result, cancel (running and queued), reject to failed, operator requeue,
    node lost, queue timeout, ack deadline to failed: every counter is back at zero."""
    core, _ = await make_core(store, quotas=Limits(max_in_flight=10),
                              reaper_interval=0.01)
    await core.register_node(node_id="n1", capacity=2, pools=["p"])
    await core.register_node(node_id="n2", capacity=2, pools=["p"])
    p = "alice"
    done = await core.submit(spec("p", payload={"a": 1}), principal=p)
    await core.result(done.job_id, node_id=(await node_of(core, done.job_id)), attempt=1, ok=True)
    bad = await core.submit(spec("p", payload=[1, 2]), principal=p)
    await core.result(bad.job_id, node_id=(await node_of(core, bad.job_id)), attempt=1, ok=False,
                      error={"code": "X"})
    run = await core.submit(spec("p"), principal=p)
    await core.cancel(run.job_id, principal=p)
    rej = await core.submit(spec("p", max_attempts=1), principal=p)
    await core.reject(rej.job_id, node_id=(await node_of(core, rej.job_id)), attempt=1,
                      reason="no")
    await core.requeue(rej.job_id)
    await core.cancel(rej.job_id, principal=p)
    lost = await core.submit(spec("p", max_attempts=1), principal=p)
    await core.node_offline(await node_of(core, lost.job_id), epoch=1, reason="gone")
    waiting = await core.submit(spec("q", payload="w"), principal=p)
    held = await usage(store, p)
    assert (held["queued"], held["inflight"], held["bytes"]) == (1, 0, len('"w"'))
    await core.cancel(waiting.job_id, principal=p)
    queued = await core.submit(spec("q", queue_timeout=0.05), principal=p)
    late = await core.submit(spec("p", ack_timeout=0.05, max_attempts=1), principal=p)
    with trio.fail_after(5):
        while True:
            await core.reap()
            states = [await state_of(core, j.job_id) for j in (queued, late)]
            if states == ["timed_out", "failed"]:
                break
            await trio.sleep(0.02)
    assert {k: v for k, v in (await usage(store, p)).items() if k in USAGE} == dict.fromkeys(
        USAGE, 0)


async def node_of(core: Core, job_id: str) -> str:
    job = await Queries(core.store, core.keys).job(job_id)
    assert job is not None
    return str(job.node)


async def state_of(core: Core, job_id: str) -> str:
    job = await Queries(core.store, core.keys).job(job_id)
    assert job is not None
    return str(job.state)


async def test_pool_rate_holds_jobs_queued_and_releases_them(store: Store) -> None:
    core, _ = await make_core(store, pool_rates={"tts": 20.0})
    assert await core.set_pool_rates({"tts": 20.0}) == 1  # as at start: burst 20
    # 2 a second, 3 at once: five submits in a row (well within half a second) leave 3 or 4
    # assigned and the rest queued, never refused
    await core._call("pool_limits_set", [core.keys.pool_limits], [b'{"tts": [2, 3]}'])
    await core.register_node(node_id="n1", capacity=100, pools=["tts"])
    subs = [await core.submit(spec("tts"), principal="a") for _ in range(5)]
    states = [s.state for s in subs]
    assert states.count("assigned") in (3, 4) and "queued" in states
    held = await store.execute("ZSCORE", core.keys.rate_held, "tts")
    assert held is not None  # the reaper hands the pool work when its next token comes
    with trio.fail_after(10):
        while any([await state_of(core, s.job_id) == "queued" for s in subs]):
            await core.reap()
            await trio.sleep(0.05)


async def test_in_flight_cap_holds_across_instances(store: Store) -> None:
    a = await quota_core(store, "A", max_in_flight=1)
    b = await quota_core(store, "B", max_in_flight=1)
    await a.register_node(node_id="n1", capacity=1, pools=["p"])
    await b.register_node(node_id="n2", capacity=1, pools=["p"])
    first = await a.submit(spec("p"), principal="alice")
    second = await b.submit(spec("p"), principal="alice")
    assert (first.state, second.state) == ("assigned", "queued")
    await a.cancel(first.job_id, principal="alice")
    assert await state_of(b, second.job_id) == "assigned"


async def test_a_lost_job_of_a_capped_principal_goes_on_elsewhere(store: Store) -> None:
    core = await quota_core(store, max_in_flight=1)
    await core.register_node(node_id="n1", capacity=1, pools=["p"])
    await core.register_node(node_id="n2", capacity=1, pools=["p"])
    sub = await core.submit(spec("p"), principal="alice")
    first = await node_of(core, sub.job_id)
    await core.node_offline(first, epoch=1 if first == "n1" else 2, reason="gone")
    assert await state_of(core, sub.job_id) == "assigned"  # still within its cap: itself
    assert await node_of(core, sub.job_id) != first
    assert (await usage(store, "alice"))["inflight"] == 1


async def test_lifting_the_cap_lets_the_next_submit_through(store: Store) -> None:
    capped = await quota_core(store, "A", max_in_flight=1)
    await capped.register_node(node_id="n1", capacity=2, pools=["p"])
    await capped.submit(spec("p"), principal="alice")
    assert (await capped.submit(spec("p"), principal="alice")).state == "queued"
    free = await quota_core(store, "B")  # no cap: its submit stores none
    assert (await free.submit(spec("p"), principal="alice")).state == "assigned"


async def test_pool_limits_set_refuses_what_is_not_a_rate_table(store: Store) -> None:
    core, _ = await make_core(store)
    for bad in (b"[1]", b'{"tts": [0, 1]}', b'{"tts": [5, 0]}', b'{"tts": 5}', b"nope"):
        with pytest.raises(errors.BadArgument):
            await core._call("pool_limits_set", [core.keys.pool_limits], [bad])
    assert await core.set_pool_rates({}) == 0


async def _reap_until_released(core: Core) -> None:
    with trio.fail_after(5):
        while (await core.reap())[1] == 0:
            await trio.sleep(0.01)


async def test_delayed_jobs_count_as_queued_and_the_counters_return_to_zero(
    store: Store,
) -> None:
    core = await quota_core(store, max_queued=1, max_in_flight=1)
    await core.register_node(node_id="n1", capacity=2, pools=["p"])
    a = await core.submit(spec("p", delay=0.05, max_attempts=2, backoff_base=0.02),
                          principal="alice")
    assert a.state == "delayed"
    u = await usage(store, "alice")
    assert (u["queued"], u["inflight"]) == (1, 0) and u["bytes"] > 0
    with pytest.raises(errors.QuotaExceeded) as info:  # a delayed job waits as a queued one
        await core.submit(spec("p", delay=0.05), principal="alice")
    assert info.value.quota == "max_queued"
    await _reap_until_released(core)
    assert (await usage(store, "alice"))["inflight"] == 1
    # a retryable failure backs off: the job waits (queued) again, then runs to its end
    state, _ = await core.result(a.job_id, node_id="n1", attempt=1, ok=False,
                                 error={"code": "E_BUSY", "message": "busy"}, retryable=True,
                                 draw=0.0)
    assert state == "delayed"
    u = await usage(store, "alice")
    assert (u["queued"], u["inflight"]) == (1, 0)
    await core.register_node(node_id="n2", capacity=1, pools=["p"])
    await _reap_until_released(core)
    state, _ = await core.result(a.job_id, node_id="n2", attempt=2, ok=True)
    assert state == "done"
    assert {k: v for k, v in (await usage(store, "alice")).items() if k in USAGE} == {
        "queued": 0, "inflight": 0, "bytes": 0}
