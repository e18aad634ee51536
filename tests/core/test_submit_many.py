"""job_submit_many: a burst of one principal's jobs in one script call, answered per job (both
stores)."""

from __future__ import annotations

from typing import Any

import pytest

from schedd import errors
from schedd.core import Limits, Queries, Submitted
from schedd.core.submits import burst_calls
from schedd.store.base import Arg, Store
from schedd.store.keys import Keys
from tests.core.helpers import make_core, spec


class CountingStore:
    """A store that counts the script calls by function name."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self.calls: list[str] = []

    async def execute(self, *args: Any) -> Any:
        if args[0] == "FCALL":
            self.calls.append(str(args[1]).rsplit("_", 2)[-1] if "many" not in str(args[1])
                              else "job_submit_many")
        return await self._store.execute(*args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


async def dump_keys(store: Store, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """Every key of the namespace with its DUMP-free value, for before/after comparisons."""
    keys = sorted(k.decode() if isinstance(k, bytes) else k
                  for k in await store.execute("KEYS", "{t}:*"))
    out: dict[str, Any] = {}
    for key in keys:
        if key in skip:
            continue
        kind = await store.execute("TYPE", key)
        kind = kind.decode() if isinstance(kind, bytes) else kind
        if kind == "hash":
            value: Any = await store.execute("HGETALL", key)
        elif kind == "zset":
            value = await store.execute("ZRANGE", key, 0, -1, "WITHSCORES")
        elif kind == "set":
            value = sorted(await store.execute("SMEMBERS", key))
        elif kind == "list":
            value = await store.execute("LRANGE", key, 0, -1)
        elif kind == "string":
            value = await store.execute("GET", key)
        else:
            value = kind
        out[key] = value
    return out


async def test_a_burst_is_one_call_and_each_job_is_answered(store: Store) -> None:
    core, _rec = await make_core(store)
    await core.register_node(node_id="n1", capacity=2, pools=["p"])
    counting = CountingStore(store)
    core.store = counting  # type: ignore[assignment]
    answers = await core.submit_many([spec("p", job_id=f"j{i}") for i in range(5)],
                                     principal="alice")
    assert counting.calls == ["job_submit_many"]
    assert [a.job_id for a in answers if isinstance(a, Submitted)] == [f"j{i}" for i in range(5)]
    assert [a.state for a in answers if isinstance(a, Submitted)] == \
        ["assigned", "assigned", "queued", "queued", "queued"]
    queries = Queries(store, core.keys)
    for i in range(5):
        job = await queries.job(f"j{i}")
        assert job is not None and job.principal == "alice"


async def test_duplicates_in_the_burst_and_before_it_and_another_principals_id(
        store: Store) -> None:
    core, _rec = await make_core(store)
    await core.submit(spec("p", job_id="old"), principal="alice")
    await core.submit(spec("p", job_id="bobs"), principal="bob")
    answers = await core.submit_many(
        [spec("p", job_id="a"), spec("p", job_id="a"), spec("p", job_id="old"),
         spec("p", job_id="bobs"), spec("p", job_id="b")], principal="alice")
    a1, a2, old, bobs, b = answers
    assert isinstance(a1, Submitted) and not a1.duplicate
    assert isinstance(a2, Submitted) and a2.duplicate and a2.state == "queued"
    assert isinstance(old, Submitted) and old.duplicate
    assert isinstance(bobs, errors.NotYours)
    assert isinstance(b, Submitted) and not b.duplicate
    job = await Queries(store, core.keys).job("bobs")
    assert job is not None and job.principal == "bob"
    counts = await store.execute("HGET", Keys("t").counts, "seq")
    assert int(counts) == 4  # old, bobs, a, b: each accepted once


async def test_a_refused_job_is_refused_alone_and_writes_nothing(store: Store) -> None:
    core, _rec = await make_core(store, quotas=Limits(max_queued=1))
    await core.submit(spec("p", job_id="first"), principal="alice")
    # the counters a single submit's refusal keeps too: the principal's usage (refused:<code>),
    # its tenants entry, selection's exclusion counts
    skip = (Keys("t").usage("alice"), Keys("t").tenants, Keys("t").exclusions)
    before = await dump_keys(store, skip)
    answers = await core.submit_many(
        [spec("p", job_id="over"), spec("p", job_id="over-too")], principal="alice")
    assert isinstance(answers[0], errors.QuotaExceeded)
    assert isinstance(answers[1], errors.QuotaExceeded)
    assert await dump_keys(store, skip) == before  # neither left a job, index or seq
    answers = await core.submit_many(
        [spec("p", job_id="over2"), spec("p", job_id="bob1")], principal="bob")
    assert [a.state for a in answers if isinstance(a, Submitted)] == ["queued"]
    assert isinstance(answers[1], errors.QuotaExceeded)
    assert await store.execute("EXISTS", Keys("t").job("bob1")) == 0
    refused = await store.execute("HGET", Keys("t").usage("alice"), "refused:E_QUOTA")
    assert int(refused) == 2


async def test_invalid_items_before_the_script_are_answered_alone(store: Store) -> None:
    core, _rec = await make_core(store)
    answers = await core.submit_many(
        [spec(job_id="nopools"), spec("p", job_id="x//y"), spec("p", job_id="ok"),
         spec("p", job_id="big", cost=0), spec("p", job_id="delay", delay=10**9),
         spec("p", job_id="att", attachments=(("a", "text/plain", b"x"),))],
        principal="alice")
    assert isinstance(answers[0], errors.BadArgument)
    assert isinstance(answers[1], errors.BadArgument)
    assert isinstance(answers[2], Submitted) and answers[2].state == "queued"
    assert isinstance(answers[3], errors.BadArgument)  # refused by the script, alone
    assert isinstance(answers[4], errors.BadDelay)
    assert isinstance(answers[5], errors.BadArgument)
    for job_id in ("big", "att"):
        assert await store.execute("EXISTS", Keys("t").job(job_id)) == 0


async def test_rate_limit_refuses_the_jobs_past_the_burst(store: Store) -> None:
    core, _rec = await make_core(store, quotas=Limits(submit_rate=1.0, submit_burst=2))
    answers = await core.submit_many([spec("p", job_id=f"r{i}") for i in range(4)],
                                     principal="alice")
    assert [type(a).__name__ for a in answers] == \
        ["Submitted", "Submitted", "RateLimited", "RateLimited"]


async def test_a_burst_over_the_bounds_is_split(store: Store) -> None:
    core, _rec = await make_core(store)
    counting = CountingStore(store)
    core.store = counting  # type: ignore[assignment]
    answers = await core.submit_many([spec("p", job_id=f"s{i}") for i in range(7)],
                                     principal="alice", max_jobs=3)
    assert counting.calls == ["job_submit_many"] * 3
    assert all(isinstance(a, Submitted) and not a.duplicate for a in answers)


def test_burst_calls_bound_jobs_and_bytes() -> None:
    items: list[tuple[int, list[Arg]]] = [(i, ["x" * 400]) for i in range(5)]
    assert [len(c) for c in burst_calls(items, 2)] == [2, 2, 1]
    assert [len(c) for c in burst_calls(items, 10, max_bytes=1000)] == [2, 2, 1]
    assert [len(c) for c in burst_calls([(0, [b"x" * 5000])], 10, max_bytes=1000)] == [1]


@pytest.mark.parametrize("n", [1, 2])
async def test_events_and_deliveries_of_every_job_come_back(store: Store, n: int) -> None:
    core, rec = await make_core(store)
    await core.register_node(node_id="n1", capacity=n, pools=["p"])
    rec.clear()
    await core.submit_many([spec("p", job_id=f"e{i}") for i in range(n)], principal="alice")
    from schedd.core import AssignDelivery
    assert sorted(d.job_id for d in rec.of(AssignDelivery)) == [f"e{i}" for i in range(n)]


async def test_a_failed_call_answers_its_jobs_and_the_others_stand(store: Store) -> None:
    from schedd.errors import StoreUnavailable

    core, _rec = await make_core(store)

    class FailSecond(CountingStore):
        async def execute(self, *args: Any) -> Any:
            if args[0] == "FCALL" and "many" in str(args[1]):
                self.calls.append("job_submit_many")
                if len(self.calls) == 2:
                    raise StoreUnavailable("gone")
            return await self._store.execute(*args)

    core.store = FailSecond(store)  # type: ignore[assignment]
    answers = await core.submit_many([spec("p", job_id=f"f{i}") for i in range(5)],
                                     principal="alice", max_jobs=2)
    assert [type(a).__name__ for a in answers] == \
        ["Submitted", "Submitted", "StoreUnavailable", "StoreUnavailable", "Submitted"]
    assert await store.execute("EXISTS", Keys("t").job("f2")) == 0
