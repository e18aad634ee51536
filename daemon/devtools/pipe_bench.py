"""``schedd bench --scenarios PIPE``: a three-stage chain of no-op stages, run by the daemon,
against one no-op job and against the same chain driven by a client.

Rules of this module:

* Parameters: ``SCALES[scale]["PIPE"]`` in :mod:`schedd.devtools.bench.scenarios`.
* One daemon and its redis-server (the bench's :func:`~schedd.devtools.bench.running_daemon`),
  three SDK ``Node``\\ s with a handler that returns its payload (pools ``pipe-0``, ``pipe-1``,
  ``pipe-2``) and one SDK ``Client``, all in this process on trio. Each **round** measures, one
  after the other and serially: a single job on ``pipe-0`` (``job``), a pipeline of the three
  stages in one ``submit`` (``pipeline``), and the same three stages as three jobs, each
  submitted when the one before is done with its output as payload (``client_chain``). The
  kinds take turns, so a drift of the host's speed falls on all of them alike.
* A latency is ``submit`` called to ``result()`` returned (``time.perf_counter()``); the
  warm-up rounds are left out.
* Client round trips are counted on the client: the requests it sends per pipeline (a
  ``submit`` is one), and the hand-offs it makes (a ``submit`` of a later stage: none for a
  pipeline, two for the client's chain).
* Targets (docs/benchmarks.md): pipeline p50 at most 3.5 times the job's p50, one client
  round trip and no hand-off per pipeline. Every job and pipeline must end ``ok``.
"""

from __future__ import annotations

import time
from typing import Any, Final

import anyio

from schedd.devtools.bench.daemon import running_daemon
from schedd.devtools.bench.measure import PAYLOAD, percentiles
from schedd.devtools.bench.options import Options

__all__ = ["TARGET", "run_pipe", "table_rows"]

POOLS: Final = ("pipe-0", "pipe-1", "pipe-2")
TARGET: Final = 3.5
"""Most pipeline p50 / job p50 (docs/benchmarks.md)."""
_REGISTER_TIMEOUT: Final = 10.0


async def pipe_latencies(url: str, rounds: int, warmup: int) -> dict[str, Any]:
    """Serial latencies (seconds) of each kind, and the client's requests per pipeline."""
    from schedd.sdk import Client, JobContext, Node

    async def handler(ctx: JobContext) -> Any:
        return ctx.payload

    seconds: dict[str, list[float]] = {"job": [], "pipeline": [], "client_chain": []}
    requests = {"pipeline": 0, "client_chain": 0}
    handoffs = {"pipeline": 0, "client_chain": 0}
    stages = [{"pools": [pool]} for pool in POOLS]
    async with Client.connect(url) as client, anyio.create_task_group() as tg:
        for pool in POOLS:
            with anyio.fail_after(_REGISTER_TIMEOUT):
                await tg.start(Node(url, handler, pools=[pool], node_id=f"bench-{pool}").run)
        for index in range(warmup + rounds):
            keep = index >= warmup
            started = time.perf_counter()
            done = await (await client.submit(PAYLOAD, pools=[POOLS[0]])).result()
            _check(done)
            if keep:
                seconds["job"].append(time.perf_counter() - started)
            started = time.perf_counter()
            done = await (await client.submit(PAYLOAD, stages=stages)).result()
            _check(done)
            if keep:
                seconds["pipeline"].append(time.perf_counter() - started)
                requests["pipeline"] += 1
            started = time.perf_counter()
            payload: Any = PAYLOAD
            for k, pool in enumerate(POOLS):
                done = await (await client.submit(payload, pools=[pool])).result()
                _check(done)
                payload = done.output
                if keep:
                    requests["client_chain"] += 1
                    handoffs["client_chain"] += 1 if k else 0
            if keep:
                seconds["client_chain"].append(time.perf_counter() - started)
        tg.cancel_scope.cancel()
    return {"seconds": seconds, "requests": requests, "handoffs": handoffs}


def _check(done: Any) -> None:
    if not done.ok:
        raise RuntimeError(f"job {done.job_id} failed: {done.error}")


def _ratio(a: dict[str, Any], b: dict[str, Any]) -> float | None:
    if not a.get("p50") or not b.get("p50"):
        return None
    return round(float(a["p50"]) / float(b["p50"]), 2)


async def run_pipe(opt: Options, p: dict[str, Any]) -> dict[str, Any]:
    """The scenario against one daemon."""
    async with running_daemon(opt.settings, url=opt.url) as daemon:
        url = opt.url or daemon.url(opt.transport)
        got = await pipe_latencies(url, int(p["rounds"]), int(p["warmup"]))
    lat = {kind: percentiles(values) for kind, values in got["seconds"].items()}
    rounds = int(p["rounds"])
    out = {
        "transport": opt.transport, "submit_to_done_ms": lat,
        "pipeline_over_job_p50": _ratio(lat["pipeline"], lat["job"]),
        "client_chain_over_pipeline_p50": _ratio(lat["client_chain"], lat["pipeline"]),
        "client_requests_per_pipeline": got["requests"]["pipeline"] / rounds,
        "client_requests_per_client_chain": got["requests"]["client_chain"] / rounds,
        "client_handoffs_per_pipeline": got["handoffs"]["pipeline"] / rounds,
        "client_handoffs_per_client_chain": got["handoffs"]["client_chain"] / rounds,
    }
    opt.say(f"  PIPE: pipeline/job p50 {out['pipeline_over_job_p50']}, client chain/pipeline "
            f"p50 {out['client_chain_over_pipeline_p50']}")
    return out


def table_rows(s: dict[str, Any]) -> list[tuple[str, str, str]]:
    """The scenario's lines of ``schedd bench``'s table."""
    rows = []
    names = {"job": "one no-op job", "pipeline": "3-stage pipeline (one submit)",
             "client_chain": "3 jobs chained by the client"}
    for kind, lat in s["submit_to_done_ms"].items():
        value = f"p50 {lat['p50']} / p99 {lat['p99']} / max {lat['max']} ms" if lat.get("n") \
            else "-"
        rows.append(("PIPE", f"submit->done, {names[kind]}", value))
    rows.append(("PIPE", f"pipeline / job p50 (target <= {TARGET})",
                 str(s["pipeline_over_job_p50"])))
    rows.append(("PIPE", "client chain / pipeline p50", str(s["client_chain_over_pipeline_p50"])))
    rows.append(("PIPE", "client requests / hand-offs per pipeline (target 1 / 0)",
                 f"{s['client_requests_per_pipeline']:g} / "
                 f"{s['client_handoffs_per_pipeline']:g}"))
    rows.append(("PIPE", "client requests / hand-offs per client chain",
                 f"{s['client_requests_per_client_chain']:g} / "
                 f"{s['client_handoffs_per_client_chain']:g}"))
    return rows
