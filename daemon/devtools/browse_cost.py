"""``schedd bench --scenarios BROWSE``: what one page of a job listing costs Redis, at 1,000 and
at 1,000,000 retained jobs.

Rules of this module:

* Parameters: ``SCALES[scale]["BROWSE"]`` in :mod:`schedd.devtools.bench.scenarios` (``sizes``:
  the namespace sizes, ``pages``: the pages read per round, ``rounds``, ``settle``).
* A throw-away redis-server per run. For each size the namespace is emptied and filled with that
  many finished jobs in the shape the scripts leave them (the job hash with the fields
  ``job_submit``, ``assign`` and ``finish`` write, a 10-byte payload and output; the browsing
  indices ``jobs_of``, ``jobs_in``, ``jobs_on``; the ``gc`` entry), by pipelined
  writes: 5 % failed (10 in every 200), the rest done, over 10 principals, 100 nodes and 10
  pools, submitted one
  every ``DAY_MS / size`` ms over the last day.
* ``settle`` seconds after a fill (Redis grows its main table incrementally, which slows every
  lookup meanwhile), each query reads its first page ``pages`` times through
  :meth:`schedd.core.Queries.list_jobs`, in ``rounds`` rounds. A round's Redis time is the
  ``usec`` of ``INFO commandstats`` (reset before it) over every command its pages sent, per
  page; the median round is reported, with every round's. The round trip is measured around
  each call, the median reported.
* The claim is bounded reads: a page costs the same Redis time whatever the namespace holds.
  Sorted-set reads are O(log N), so the largest namespace may cost a few percent more.
"""

from __future__ import annotations

import statistics
import time
from typing import Any, Final

import orjson
import trio

from schedd.core import JobFilter, Queries
from schedd.devtools.redis_process import RedisServer, command_stats
from schedd.store import open_store
from schedd.store.base import Store
from schedd.store.keys import Keys

__all__ = ["QUERIES", "fill", "measure_page", "run", "table_rows"]

DAY_MS: Final = 86_400_000
PRINCIPALS: Final = 10
NODES: Final = 100
POOLS: Final = 10
FAILED_EVERY: Final = 20  # one job in 20 failed (runs of 10 in 200)
BATCH: Final = 5000  # jobs written per pipelined batch

#: name -> the filter of the query, as ``JobFilter`` keywords
QUERIES: Final[dict[str, dict[str, Any]]] = {
    "failed": {"state": "failed", "limit": 50},
    "failed_of_principal": {"state": "failed", "principal": "token:p3", "limit": 50},
    "all": {"limit": 50},
    "failed_in_pool": {"state": "failed", "pool": "pool-7", "limit": 50},
}


async def fill(store: Store, keys: Keys, size: int, now_ms: int) -> None:
    """``size`` finished jobs, submitted over the day before ``now_ms``, newest last."""
    step = DAY_MS // size
    payload = orjson.dumps("0123456789"[:8]).decode()  # 10 bytes of JSON, as S4's job
    for start in range(0, size, BATCH):
        commands: list[tuple[Any, ...]] = []
        by_index: dict[str, list[Any]] = {}
        for i in range(start, min(size, start + BATCH)):
            job_id = f"job-{i:08d}"
            t_sub = now_ms - DAY_MS + i * step
            failed = (i // 10) % FAILED_EVERY == 0  # in runs of 10: every principal fails
            state = "failed" if failed else "done"
            principal = f"token:p{i % PRINCIPALS}"
            node = f"node-{i % NODES:03d}"
            pool = f"pool-{(i // 7) % POOLS}"
            error = '{"code":"E_BOOM","message":"boom"}' if failed else "null"
            commands.append((
                "HSET", keys.job(job_id), "principal", principal, "client", "bench",
                "pools", f'["{pool}"]', "payload", payload, "priority", "0", "ack_ms", "30000",
                "run_ms", "300000", "queue_ms", "60000", "max_attempts", "3",
                "retain_ms", "3600000", "seq", str(i + 1), "t_sub", str(t_sub), "attempt", "1",
                "node", node, "t_asg", str(t_sub + 2), "state", state, "t_acc", str(t_sub + 5),
                "t_fin", str(t_sub + 400), "ok", "0" if failed else "1",
                "output", "null" if failed else payload, "error", error,
            ))  # fmt: skip
            for key in (keys.jobs_of(principal), keys.jobs_in(state), keys.jobs_on(node)):
                by_index.setdefault(key, []).extend((t_sub, job_id))
            by_index.setdefault(keys.gc, []).extend((t_sub + 400 + 3_600_000, f"j:{job_id}"))
        commands += [("ZADD", key, *members) for key, members in by_index.items()]
        await store.execute_many(commands)


async def measure_page(
    store: Store, queries: Queries, name: str, pages: int, rounds: int
) -> dict[str, Any]:
    """The Redis time and round trip of one page of query ``name``: ``rounds`` rounds of
    ``pages`` pages, the median round's Redis time per page."""
    job_filter = JobFilter(**QUERIES[name])
    page = await queries.list_jobs(job_filter)  # warm: the connection and the code paths
    per_page, commands, trips = [], [], []
    for _ in range(rounds):
        await store.execute("CONFIG", "RESETSTAT")
        for _ in range(pages):
            started = time.perf_counter()
            page = await queries.list_jobs(job_filter)
            trips.append((time.perf_counter() - started) * 1e6)
        stats = command_stats(await store.execute("INFO", "commandstats"))
        stats = {k: v for k, v in stats.items() if not k.startswith("config")}
        per_page.append(sum(s["usec"] for s in stats.values()) / pages)
        commands.append(sum(s["calls"] for s in stats.values()) / pages)
    usec = statistics.median(per_page)
    return {
        "redis_usec_per_page": round(usec, 1),
        "redis_usec_per_page_rounds": [round(u, 1) for u in per_page],
        "commands_per_page": round(statistics.median(commands), 1),
        "round_trip_us_p50": round(statistics.median(trips)),
        "jobs_per_page": len(page.jobs),
        "examined_per_page": page.examined,
        "redis_usec_per_examined": round(usec / max(1, page.examined), 2),
    }


async def run(sizes: list[int], pages: int, rounds: int, settle: float,
              say: Any = print) -> dict[str, Any]:
    """For each size, fill a fresh namespace and measure every query of :data:`QUERIES`."""
    keys = Keys("bench")
    rows: dict[str, Any] = {}
    with RedisServer() as server:
        async with open_store(server.url) as store:
            queries = Queries(store, keys)
            for size in sizes:
                await store.execute("FLUSHALL")
                started = time.perf_counter()
                await fill(store, keys, size, int(time.time() * 1000))
                say(f"  BROWSE: {size:,} finished jobs written in "
                    f"{time.perf_counter() - started:.1f} s")
                await trio.sleep(settle)
                row = {name: await measure_page(store, queries, name, pages, rounds)
                       for name in QUERIES}
                rows[str(size)] = row
                say(f"  BROWSE: {size:,} jobs: " + ", ".join(
                    f"{name} {r['redis_usec_per_page']} us" for name, r in row.items()))
    return {"sizes": sizes, "pages": pages, "rounds": rounds, "by_size": rows}


def table_rows(result: dict[str, Any]) -> list[tuple[str, str, str]]:
    """The rows of the bench table: each query's Redis time per page at every size."""
    out = []
    sizes = [str(s) for s in result["sizes"]]
    for name in QUERIES:
        cells = [f"{int(s):,} jobs: {result['by_size'][s][name]['redis_usec_per_page']} us"
                 for s in sizes]
        out.append(("BROWSE", f"Redis time per page, {name}", " / ".join(cells)))
    return out
