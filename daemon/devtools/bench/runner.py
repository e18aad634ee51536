"""Running the scenarios in order, and the table and JSON document of a run."""

from __future__ import annotations

import importlib
import json
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Final

import orjson

from schedd.devtools import host_probe
from schedd.devtools.bench.measure import HOST_PROBE_SECONDS, machine, probe_host, probing
from schedd.devtools.bench.options import Options
from schedd.devtools.bench.scenarios import _RUNNERS, SCALES

_OWN_ROWS: Final = {
    "SOAK": ("schedd.devtools.soak", "reconnect_phase"),
    "BROWSE": ("schedd.devtools.browse_cost", "by_size"),
    "FAIR": ("schedd.devtools.fair_bench", "cost"),
    "RETAIN": ("schedd.devtools.retention_cost", "phases"),
    "SDK": ("schedd.devtools.sdk_bench", "round_trip_ms"),
    "PIPE": ("schedd.devtools.pipe_bench", "submit_to_done_ms"),
    "BLOB": ("schedd.devtools.blob_bench", "base64_over_attachment"),
    "PEER": ("schedd.devtools.peer_bench", "systems"),
}
"""The scenarios whose module writes their lines of the table (``table_rows``), imported only
when the scenario ran, and the result key a completed run of each has."""


def _failure(exc: BaseException) -> str:
    """The first underlying error of ``exc`` (groups opened), and how many there were."""
    leaves: list[BaseException] = []
    stack = [exc]
    while stack:
        e = stack.pop()
        if isinstance(e, BaseExceptionGroup):
            stack.extend(reversed(e.exceptions))
        else:
            leaves.append(e)
    first = leaves[0] if leaves else exc
    more = f" (and {len(leaves) - 1} more errors)" if len(leaves) > 1 else ""
    return f"{type(first).__name__}: {first}{more}"


async def run_bench(scenarios: Sequence[str], opt: Options,
                    checkpoint: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Run the scenarios in order; returns the JSON document (machine, settings, results).

    A scenario that fails is recorded as ``{"failed": reason}`` and the next one runs;
    ``checkpoint`` receives the document after every scenario (the CLI writes the JSON file).
    """
    results: dict[str, Any] = {}
    host = machine()
    document: dict[str, Any] = {
        "machine": host, "scale": opt.scale, "transport": opt.transport,
        "settings": [f"{section}.{key}={value}" for section, key, value in opt.settings],
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "results": results}
    seconds = HOST_PROBE_SECONDS[opt.scale]
    opt.say(f"HOST: probing for stalls of the CPUs, {seconds:g} s")
    host["host_stalls"] = stalls = await probe_host(seconds)
    opt.say(f"HOST: {host_probe.describe(stalls)}")
    for name in scenarios:
        params = SCALES[opt.scale][name]
        opt.say(f"{name}: {json.dumps(params)}")
        started = time.perf_counter()
        during: dict[str, Any] = {}
        try:
            async with probing(during) if opt.probe_during else nullcontext():
                results[name] = await _RUNNERS[name](opt, params)
        except Exception as exc:
            results[name] = {"failed": _failure(exc)}
            opt.say(f"{name}: FAILED: {results[name]['failed']}")
        if during:
            results[name]["host_stalls_during"] = during
            opt.say(f"{name}: host: {host_probe.describe(during)}")
        results[name]["params"] = params
        results[name]["wall_s"] = round(time.perf_counter() - started, 1)
        opt.say(f"{name}: finished in {results[name]['wall_s']} s")
        if checkpoint is not None:
            checkpoint(document)
    # again after the scenarios: a host still running slower at the end (without stopping)
    # shows as a longer slice here than before (docs/decisions/0015-benchmark-method.md)
    opt.say(f"HOST: probing again after the scenarios, {seconds:g} s")
    host["host_stalls_after"] = after = await probe_host(seconds)
    opt.say(f"HOST: {host_probe.describe(after)}")
    if checkpoint is not None:
        checkpoint(document)
    return document


def _lat(d: dict[str, Any]) -> str:
    if not d.get("n"):
        return "-"
    return f"p50 {d['p50']} / p99 {d['p99']} / max {d['max']} ms"


def _lat_rt(d: dict[str, Any], ratios: dict[str, Any] | None) -> str:
    """A latency summary and, when there was a floor, its p50 / p99 in floor round trips."""
    if not ratios or ratios.get("p50") is None:
        return _lat(d)
    return f"{_lat(d)} = p50 {ratios['p50']} / p99 {ratios['p99']} RT"


def _floor_rows(name: str, s: dict[str, Any]) -> list[tuple[str, str, str]]:
    floor = s.get("floor")
    if not floor:
        return []
    one = floor["one_at_a_time_us"]
    return [(name, f"Redis floor: no-op {floor['command']} one at a time (RT) / pipelined",
             f"p50 {one['p50']} / p99 {one['p99']} us; {floor['calls_per_s']} calls/s "
             f"({floor['in_flight']} in flight)")]


def _holds(s: dict[str, Any]) -> str:
    held = s.get("heartbeat_call_ms") or {}
    if not held.get("n"):
        return "-"
    return (f"{held['p50']} / {held['max']} ms, {s['redis_heartbeat_ms_per_s']} ms per s "
            f"({held['n']} calls)")


def table(document: dict[str, Any]) -> str:
    """One line per measured figure: scenario, what, value."""
    rows: list[tuple[str, str, str]] = []
    speed = document.get("machine", {}).get("python_loop_ms")
    if speed is not None:
        rows.append(("HOST", "reference Python loop (lower: faster)", f"{speed} ms"))
    for key, when in (("host_stalls", "before"), ("host_stalls_after", "after")):
        stalls = document.get("machine", {}).get(key)
        if stalls is not None:
            rows.append(("HOST", f"CPU stalls (host_probe, idle, {when} the scenarios)",
                         host_probe.describe(stalls)))
    if document.get("settings"):
        rows.append(("HOST", "daemon settings (--set)", ", ".join(document["settings"])))
    r = {name: res for name, res in document["results"].items() if "failed" not in res}
    rows += [(name, "FAILED", res["failed"]) for name, res in document["results"].items()
             if "failed" in res]
    if "S1" in r:
        s = r["S1"]
        ratios = s.get("ratios", {})
        rows += [*_floor_rows("S1", s),
                 ("S1", "submit->node", _lat_rt(s["submit_to_node_ms"],
                                                ratios.get("submit_to_node_round_trips"))),
                 ("S1", "submit->done", _lat_rt(s["submit_to_done_ms"],
                                                ratios.get("submit_to_done_round_trips"))),
                 ("S1", "CPU per job (" + " / ".join(s["cpu_us_per_job"]) + "); script calls",
                  " / ".join(f"{v:g}" for v in s["cpu_us_per_job"].values()) + " us; "
                  f"{s['script_calls_per_job']}"),
                 ("S1", "jobs submitted/done/lost", f"{s['submitted']}/{s['done']}/{s['lost']}")]
    if "S2" in r:
        s = r["S2"]
        fraction = s.get("ratios", {}).get("best_jobs_per_s_of_floor")
        rows += [*_floor_rows("S2", s),
                 ("S2", "best sustained jobs/s (p99<=50ms)",
                  f"{s['best_jobs_per_s']} at concurrency {s['best_concurrency']} "
                  f"(p99 {s['best_p99_ms']} ms)"
                  + (f" = {fraction} of floor calls/s / {s['script_calls_per_job']} calls per job"
                     if fraction is not None else "")),
                 ("S2", "jobs submitted/done/lost", f"{s['submitted']}/{s['done']}/{s['lost']}")]
    if "S3" in r:
        s = r["S3"]
        ratios = s.get("ratios", {})
        rows += [*_floor_rows("S3", s),
                 ("S3", "nodes / heartbeats per s", f"{s['nodes']} / {s['heartbeats_per_s']}"),
                 ("S3", "daemon CPU % (heartbeats only)", str(s["daemon_cpu_pct_heartbeats"])),
                 ("S3", "daemon RSS MB", f"{s['daemon_rss_mb']} (peak {s['daemon_rss_peak_mb']})"),
                 ("S3", "heartbeat script calls/s", str(s["heartbeat_script_calls_per_s"])),
                 ("S3", "heartbeat call holds Redis (p50 / max)", _holds(s)),
                 ("S3", "node errors / reconnects (live nodes reaped)",
                  f"{s['node_errors']} / {s['reconnects']}"),
                 ("S3", f"with {s['job_rate']} jobs/s: CPU %", str(s["daemon_cpu_pct_with_jobs"])),
                 ("S3", "sim + clients CPU % (idle / jobs)",
                  f"{s['bench_cpu_pct_heartbeats']} / {s['bench_cpu_pct_with_jobs']}"),
                 ("S3", "submit->node", _lat_rt(s["submit_to_node_ms"],
                                                ratios.get("submit_to_node_round_trips"))),
                 ("S3", "submit->done", _lat_rt(s["submit_to_done_ms"],
                                                ratios.get("submit_to_done_round_trips"))),
                 ("S3", "jobs submitted/done/lost", f"{s['submitted']}/{s['done']}/{s['lost']}")]
    if "S4" in r:
        others = [(r["S4"].get("usec_per_call_through_core", {}), "through the core"),
                  (r["S4"].get("usec_per_call_back_to_back", {}), "back to back")]
        ratios = r["S4"].get("ratios", {})
        for size, usec in r["S4"]["usec_per_call"].items():
            notes = "; ".join(f"{values[size]} {what}" for values, what in others
                              if size in values)
            in_floor = [f"{values[size]} {what}" for values, what in (
                (ratios.get("usec_per_call_round_trips", {}), "RT"),
                (ratios.get("usec_per_call_noop_calls", {}), "no-op calls")) if size in values]
            rows.append(("S4", f"select+reserve, {size} nodes",
                         f"{usec} us/call" + (f" ({notes})" if notes else "")
                         + (f" = {' = '.join(in_floor)}" if in_floor else "")))
    if "S5" in r:
        s = r["S5"]
        for how in ("drop", "silent"):
            k = s[how]
            rows.append(("S5", f"{how}: kill->reassign",
                         f"{_lat(k['kill_to_reassign_ms'])} ({k['jobs_held']} jobs on "
                         f"{k['nodes_killed']} nodes, {k['not_reassigned']} not reassigned"
                         + (f", {k['finished_before_kill']} finished before the kill"
                            if k.get("finished_before_kill") else "") + ")"))
        rows.append(("S5", "submit->node, kills included", _lat(s["submit_to_node_ms"])))
        rows.append(("S5", "jobs submitted/done/lost", f"{s['submitted']}/{s['done']}/{s['lost']}"))
    if "CHAOS" in r and "accepted" in r["CHAOS"]:
        c = r["CHAOS"]
        rows.append(("CHAOS", "accepted/done/lost/duplicate done",
                     f"{c['accepted']}/{c['done_messages']}/{c['lost']}/{c['duplicate_done']}"
                     f" ({c['jobs_per_second']} jobs/s, {'OK' if c['ok'] else 'FAILED'})"))
    if "ORDER" in r and "lost" in r["ORDER"]:
        o = r["ORDER"]
        rows.append(("ORDER", "utterances/received/out of order/duplicates/lost",
                     f"{o['utterances']}/{o['received']}/{o['out_of_order']}/{o['duplicates']}"
                     f"/{o['lost']} ({o['skipped']} skipped, {o['seconds']} s, "
                     f"{'OK' if o['ok'] else 'FAILED'})"))
    if "SLOWLORIS" in r:
        s = r["SLOWLORIS"]
        rows += [("SLOWLORIS", "submit->done quiet", _lat(s["quiet_submit_to_done_ms"])),
                 ("SLOWLORIS", f"submit->done under {s['connections']} never-finished handshakes",
                  _lat(s["attack_submit_to_done_ms"])),
                 ("SLOWLORIS", "p99 under attack / quiet (target <= 3)", str(s["p99_ratio"])),
                 ("SLOWLORIS", "daemon CPU % quiet / attack",
                  f"{s['daemon_cpu_pct_quiet']} / {s['daemon_cpu_pct_attack']}"),
                 ("SLOWLORIS", "attacker: opened / refused / timed out",
                  f"{s['attacker'].get('opened')} / {s['attacker'].get('refused')} / "
                  f"{s['attacker'].get('timed_out')}")]
    for name, (module, done_key) in _OWN_ROWS.items():
        if name in r and done_key in r[name]:  # a scenario that failed has no table of its own
            rows += importlib.import_module(module).table_rows(r[name])
    rows += [(name, "CPU stalls during the run (--probe-during)",
              host_probe.describe(res["host_stalls_during"]))
             for name, res in document["results"].items() if "host_stalls_during" in res]
    width = [max(len(row[i]) for row in [("SCEN", "WHAT", "VALUE"), *rows]) for i in range(3)]
    lines = [("SCEN", "WHAT", "VALUE"), *rows]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, width, strict=True)).rstrip()
                     for row in lines)


def default_json_path() -> Path:
    return Path("bench-results") / f"bench-{time.strftime('%Y%m%d-%H%M%S')}.json"


def write_json(document: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps(document, option=orjson.OPT_INDENT_2))
