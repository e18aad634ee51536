"""Browsing jobs: the indices the scripts keep, the bounded listing and the attempt history."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from schedd.core import JobFilter, Queries, parse_time_bound
from schedd.core.browse import EXAMINE_BUDGET, parse_cursor
from schedd.protocol import InvalidField
from schedd.store.base import Store
from tests.core.helpers import make_core, spec


async def _ids(queries: Queries, **kw: Any) -> list[str]:
    page = await queries.list_jobs(JobFilter(**kw))
    return [job.job_id for job in page.jobs]


async def _all_pages(queries: Queries, cursor_from: str | None = None, **kw: Any) -> list[str]:
    out: list[str] = []
    cursor = cursor_from
    for _ in range(100):
        page = await queries.list_jobs(JobFilter(cursor=cursor, **kw))
        out += [job.job_id for job in page.jobs]
        cursor = page.cursor
        if cursor is None:
            return out
    raise AssertionError("the cursor never ended")


async def test_filters_by_state_principal_node_and_pool(store: Store) -> None:
    core, _ = await make_core(store)
    q = Queries(store, core.keys)
    await core.register_node(node_id="n1", capacity=10, pools=["p"])
    await core.register_node(node_id="n2", capacity=10, pools=["q"])
    a = await core.submit(spec("p", job_id="a"), principal="alice")
    b = await core.submit(spec("q", job_id="b"), principal="bob")
    c = await core.submit(spec("p", job_id="c"), principal="alice")
    await core.submit(spec("nowhere", job_id="d"), principal="alice")  # queued
    await core.accept(a.job_id, node_id="n1", attempt=1)
    await core.result(a.job_id, node_id="n1", attempt=1, ok=False, output_json="null",
                      error={"code": "E_BOOM", "message": "boom"})
    await core.accept(b.job_id, node_id="n2", attempt=1)
    await core.result(b.job_id, node_id="n2", attempt=1, ok=True, output_json="1")
    assert c.state == "assigned"

    assert await _ids(q) == ["d", "c", "b", "a"]  # newest submission first
    assert await _ids(q, state="failed") == ["a"]
    assert await _ids(q, state="done") == ["b"]
    assert await _ids(q, state="assigned") == ["c"]
    assert await _ids(q, state="queued") == ["d"]
    assert await _ids(q, principal="alice") == ["d", "c", "a"]
    assert await _ids(q, principal="bob", state="failed") == []
    assert await _ids(q, node="n1") == ["c", "a"]
    assert await _ids(q, node="n1", state="assigned") == ["c"]
    assert await _ids(q, pool="q") == ["b"]
    assert await _ids(q, pool="p", principal="alice", state="failed") == ["a"]
    (row,) = (await q.list_jobs(JobFilter(state="failed"))).jobs
    assert (row.principal, row.node, row.error, row.pools) == ("alice", "n1", "E_BOOM", ["p"])
    assert row.finished_ms >= row.submitted_ms > 0


async def test_time_range_and_paging_cover_every_job_once(store: Store) -> None:
    core, _ = await make_core(store)
    q = Queries(store, core.keys)
    ids = []
    for i in range(23):
        ids.append((await core.submit(spec("p", job_id=f"j{i:02d}"), principal="x")).job_id)
    newest_first = list(reversed(ids))
    # jobs submitted in the same millisecond share a score: paging must neither skip nor repeat
    pages = await _all_pages(q, limit=5)
    assert pages == await _ids(q, limit=100)
    assert sorted(pages) == sorted(ids)
    assert await _all_pages(q, limit=4, state="queued", principal="x") == pages
    info = {j.job_id: j.submitted_ms for j in (await q.list_jobs(JobFilter(limit=100))).jobs}
    middle = info["j10"]
    since = await _ids(q, since=middle, limit=100)
    assert set(since) == {j for j in ids if info[j] >= middle}
    until = await _ids(q, until=middle, limit=100)
    assert set(until) == {j for j in ids if info[j] < middle}
    assert set(since) | set(until) == set(newest_first)


async def test_a_page_looks_at_a_bounded_number_of_entries(store: Store) -> None:
    core, _ = await make_core(store)
    q = Queries(store, core.keys)
    for i in range(EXAMINE_BUDGET + 50):  # all queued, none in pool "r"
        await core.submit(spec("p", job_id=f"j{i}"), principal="x")
    page = await q.list_jobs(JobFilter(pool="r", limit=10))
    assert page.jobs == [] and page.examined == EXAMINE_BUDGET and page.cursor is not None
    rest = await q.list_jobs(JobFilter(pool="r", limit=10, cursor=page.cursor))
    assert rest.jobs == [] and rest.examined == 50 and rest.cursor is None


async def test_attempt_history_records_abnormal_ends(store: Store) -> None:
    core, _ = await make_core(store)
    q = Queries(store, core.keys)
    await core.register_node(node_id="n1", capacity=1, pools=["p"])
    sub = await core.submit(spec("p", job_id="h", payload={"x": "y"}, max_attempts=3))
    await core.reject(sub.job_id, node_id="n1", attempt=1, reason="busy")
    await core.register_node(node_id="n2", capacity=1, pools=["p"])
    await core.accept(sub.job_id, node_id="n2", attempt=2)
    await core.result(sub.job_id, node_id="n2", attempt=2, ok=True, output_json='"done!"')
    info = await q.job(sub.job_id)
    assert info is not None
    first, second = info.attempts
    assert (first["attempt"], first["node"], first["outcome"]) == (1, "n1", "rejected")
    assert "busy" in first["reason"] and first["ended_ms"] >= first["assigned_ms"] > 0
    assert (second["attempt"], second["node"], second["outcome"]) == (2, "n2", "done")
    assert second["ended_ms"] >= second["accepted_ms"] >= second["assigned_ms"] > 0
    # a job that ended done no longer holds its payload
    assert info.payload_bytes == 0 and info.output_bytes == len('"done!"')
    assert await _ids(q, node="n1") == ["h"]  # an earlier attempt's node finds the job too
    assert await _ids(q, node="n1", state="done") == ["h"]


async def test_a_successful_first_attempt_writes_no_history(store: Store) -> None:
    core, _ = await make_core(store)
    await core.register_node(node_id="n1", capacity=1, pools=["p"])
    sub = await core.submit(spec("p"))
    await core.accept(sub.job_id, node_id="n1", attempt=1)
    await core.result(sub.job_id, node_id="n1", attempt=1, ok=True, output_json="1")
    assert await store.execute("EXISTS", core.keys.job_attempts(sub.job_id)) == 0
    info = await Queries(store, core.keys).job(sub.job_id)
    assert info is not None and [a["outcome"] for a in info.attempts] == ["done"]


async def test_removal_at_retention_empties_every_index(store: Store) -> None:
    core, _ = await make_core(store, retention=0.05)
    k = core.keys
    await core.register_node(node_id="n1", capacity=1, pools=["p"])
    await core.register_node(node_id="n2", capacity=1, pools=["p"])
    sub = await core.submit(spec("p", job_id="g"), principal="alice")
    first = (await Queries(store, k).job("g"))
    assert first is not None and first.node is not None
    await core.reject(sub.job_id, node_id=first.node, attempt=1, reason="no")
    await core.cancel(sub.job_id)
    keys = [k.jobs_of("alice"), k.jobs_in("canceled"), k.jobs_in("active"),
            k.jobs_on("n1"), k.jobs_on("n2"), k.job_attempts("g")]
    assert [await store.execute("EXISTS", key) for key in keys] == [1, 1, 0, 1, 1, 1]
    await trio.sleep(0.1)
    assert (await core.reap())[2] == 1
    assert [await store.execute("EXISTS", key) for key in keys] == [0] * len(keys)


def test_filters_refuse_hostile_values() -> None:
    for kw in ({"limit": 501}, {"limit": 0}, {"state": "exploded"}, {"since": -1},
               {"since": 10, "until": 10}, {"cursor": "abc"}, {"cursor": "1.2.3"},
               {"node": ""}, {"pool": "a\x00b"}, {"limit": True}):
        with pytest.raises(InvalidField):
            JobFilter(**kw)
    assert JobFilter(limit=500).limit == 500
    assert parse_cursor("123.4").score == 123


def test_time_bounds_read_unix_ms_or_a_duration_before_now() -> None:
    assert parse_time_bound("1700000000000", 5, "since") == 1700000000000
    assert parse_time_bound("10m", 3_600_000, "since") == 3_000_000
    assert parse_time_bound("500ms", 1000, "since") == 500
    assert parse_time_bound("7d", 1000, "since") == 0
    for bad in ("yesterday", "-5m", "10 m", "1e9", "99999999999999999"):
        with pytest.raises(InvalidField, match="since"):
            parse_time_bound(bad, 0, "since")


async def test_all_jobs_are_the_state_indices_merged_in_one_order(store: Store) -> None:
    """With no index named, a listing reads the union of the per-state indices: the order of
    one sorted set of all of them (equal submit ms by id, descending), each job once across
    pages, also when jobs end (and so change index) between two pages."""
    core, _ = await make_core(store)
    k = core.keys
    q = Queries(store, core.keys)
    await core.register_node(node_id="n1", capacity=100, pools=["p"])
    ids = [f"j{i:02d}" for i in range(24)]
    for job_id in ids:
        await core.submit(spec("p", job_id=job_id))
    # several states, many jobs sharing a submit ms
    for job_id in ids[::3]:
        await core.result(job_id, node_id="n1", attempt=1, ok=True, accepted=True)
    for job_id in ids[1::6]:
        await core.cancel(job_id)
    # Redis's own order of the union, as one sorted set would give it
    states = ["active", "done", "failed", "canceled", "timed_out"]
    scratch = k.jobs_in("union-under-test")
    await store.execute("ZUNIONSTORE", scratch, len(states), *(k.jobs_in(s) for s in states))
    expected = [m.decode() for m in await store.execute("ZRANGE", scratch, "+inf", "-inf",
                                                        "BYSCORE", "REV")]
    await store.execute("DEL", scratch)
    assert sorted(expected) == ids
    assert await _all_pages(q, limit=5) == expected
    # jobs that end between two pages stay where they were in the order
    first = await q.list_jobs(JobFilter(limit=7))
    seen = [job.job_id for job in first.jobs]
    for job_id in expected:
        state = await store.execute("HGET", k.job(job_id), "state")
        if state == b"assigned":
            await core.result(job_id, node_id="n1", attempt=1, ok=False, accepted=True)
    seen += await _all_pages(q, limit=7, cursor_from=first.cursor)
    assert seen == expected
