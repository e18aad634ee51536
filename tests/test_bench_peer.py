"""``schedd bench --scenarios PEER``: schedd against BullMQ and Celery on one redis-server.

The scenario runs at tiny scale through the CLI (BullMQ when node and npm are here and the npm
install works, Celery when it is installed; each skipped with its reason otherwise); the
commandstats and CPU arithmetic, the burst accounting, the ratios, the table and the failure
paths are tested on their own. Timings are never asserted."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio

from schedd.devtools import peer_bench, peer_measure
from schedd.devtools.peer_drivers import burst_report
from schedd.devtools.redis_process import REDIS_SERVER, command_stats
from tests.bench_cli import run_tiny

_STATS = (b"# Commandstats\r\n"
          b"cmdstat_fcall:calls=10,usec=500,usec_per_call=50.00,rejected_calls=0,failed_calls=0\r\n"
          b"cmdstat_hset:calls=4,usec=8,usec_per_call=2.00,rejected_calls=0,failed_calls=0\r\n"
          b"cmdstat_info:calls=1,usec=30,usec_per_call=30.00,rejected_calls=0,failed_calls=0\r\n")
_CPU = (b"# CPU\r\nused_cpu_sys:1.250000\r\nused_cpu_user:2.500000\r\n"
        b"used_cpu_sys_children:0.000000\r\nused_cpu_user_children:0.000000\r\n")


@pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed")
def test_the_peer_scenario_runs_at_tiny_scale(tmp_path: Path) -> None:
    stdout, peer = run_tiny(tmp_path, "PEER")
    systems = peer["systems"]
    assert list(systems) == list(peer_bench.SYSTEMS)
    mine = systems["schedd"]
    params = peer["params"]
    assert mine["serial_ms"]["n"] == params["serial"] * params["rounds"]
    burst = mine["bursts"][0]
    assert burst["submitted"] == burst["received"] == params["burst"]
    assert mine["lost"] == mine["duplicated"] == mine["failed_jobs"] == 0
    per = mine["per_job"]
    assert per["jobs"] == params["burst"] * params["rounds"]
    assert set(per["cpu_us"]) == {"daemon", "client", "worker", "redis", "total",
                                  "redis_info"}
    assert per["cpu_us"]["total"] > 0 and per["redis_calls"] > 1 and per["redis_usec"] > 0
    assert 0 < per["script_calls"] <= 3  # FCALLs counted: submits in bursts, results in runs
    assert len(per["top_commands"]) == peer_measure.TOP_COMMANDS
    assert "fcall" in burst["commands"] and "info" not in burst["commands"]
    assert "schedd 0.1.0: serial submit->result" in stdout
    if shutil.which("node") and shutil.which("npm"):
        # it runs here, unless npm cannot install it (no network): then it says so
        bullmq = systems["bullmq"]
        assert "serial_ms" in bullmq or "npm install" in bullmq["skipped"], bullmq
    else:
        assert systems["bullmq"]["skipped"] == "node and npm not found on PATH"
        assert re.search(r"PEER\s+BullMQ\s+skipped: node and npm not found on PATH", stdout)
    for peer_name in ("bullmq", "celery"):
        theirs = systems[peer_name]
        if "serial_ms" in theirs:
            assert theirs["lost"] == theirs["duplicated"] == 0
            assert set(theirs["per_job"]["cpu_us"]) == {"client", "worker", "redis", "total",
                                                        "redis_info"}
            assert set(peer["ratios"][f"schedd/{peer_name}"]) >= {
                "serial_p50", "serial_p99", "jobs_per_s", "cpu_us_total", "redis_calls",
                "redis_usec", "redis_cpu_us"}
            assert f"schedd/{peer_name}: serial p50" in stdout
        else:
            assert f"schedd/{peer_name}" not in peer["ratios"]
    if importlib.util.find_spec("celery") is None:
        assert "pip install 'schedd[peer]'" in systems["celery"]["skipped"]
    else:
        assert "serial_ms" in systems["celery"], systems["celery"]


def test_commandstats_diff_counts_new_commands_and_leaves_out_idle_ones() -> None:
    before = command_stats(_STATS)
    after = command_stats(_STATS.replace(b"calls=10,usec=500", b"calls=25,usec=1300")
                          + b"cmdstat_zadd:calls=3,usec=9,usec_per_call=3.00\r\n")
    assert peer_measure.commandstats_diff(before, after) == {
        "fcall": {"calls": 15, "usec": 800}, "zadd": {"calls": 3, "usec": 9}}


def test_counters_that_go_back_are_refused() -> None:
    before = command_stats(_STATS)
    after = command_stats(_STATS.replace(b"calls=10,usec=500", b"calls=2,usec=40"))
    with pytest.raises(ValueError, match=r"fcall: counters went back.*RESETSTAT"):
        peer_measure.commandstats_diff(before, after)


def test_redis_cpu_is_user_plus_sys_and_needs_both() -> None:
    assert peer_measure.redis_cpu_seconds(_CPU) == 3.75
    with pytest.raises(ValueError, match="without used_cpu_user and used_cpu_sys"):
        peer_measure.redis_cpu_seconds(b"# CPU\r\nused_cpu_sys:1.0\r\n")


def test_cpu_diff_and_per_job_over_rounds() -> None:
    one = peer_measure.Snapshot({}, 1.0, {"client": 1.0, "worker": 2.0, "redis": 0.5})
    two = peer_measure.Snapshot({}, 1.3, {"client": 1.2, "worker": 2.5, "redis": 0.8})
    cpu = peer_measure.cpu_diff(one, two)
    assert cpu == {"client": 0.2, "worker": 0.5, "redis": 0.3, "total": 1.0, "redis_info": 0.3}
    bursts: list[dict[str, Any]] = [
        {"jobs": 1000, "cpu_s": cpu,
         "commands": {"evalsha": {"calls": 2000, "usec": 9000}, "xadd": {"calls": 4000,
                                                                        "usec": 1000}}},
        {"jobs": 3000, "cpu_s": {**cpu, "total": 3.0, "client": 2.2},
         "commands": {"evalsha": {"calls": 6000, "usec": 30000}}},
    ]
    per = peer_measure.per_job(bursts)
    assert per["jobs"] == 4000
    assert per["cpu_us"]["total"] == 1000.0  # (1.0 + 3.0) s over 4,000 jobs
    assert per["cpu_us"]["client"] == 600.0  # (0.2 + 2.2) s
    assert per["redis_calls"] == 3.0 and per["redis_usec"] == 10.0
    assert per["script_calls"] == 2.0 and per["script_usec"] == 9.75
    assert per["redis_cpu_us"] == 150.0
    assert list(per["top_commands"]) == ["evalsha", "xadd"]
    assert per["top_commands"]["evalsha"] == {"calls": 2.0, "usec": 9.75}
    assert peer_measure.per_job([]) == {"jobs": 0}


def test_a_process_tree_counts_its_children() -> None:
    child = subprocess.Popen([sys.executable, "-c",
                              "import time\nend = time.process_time() + 0.3\n"
                              "while time.process_time() < end: pass\n"
                              "print('spent', flush=True)\ntime.sleep(30)"],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == "spent\n"  # its busy loop is over, however slow the host
        own = peer_measure.tree_cpu_seconds(os.getpid(), {})
        tree = peer_measure.tree_cpu_seconds(os.getpid())
        assert tree - own >= 0.2  # the child's 0.3 s busy loop
        assert peer_measure.tree_cpu_seconds(child.pid) >= 0.2
    finally:
        child.kill()
        child.wait()
    assert peer_measure.tree_cpu_seconds(child.pid, {}) == 0.0  # gone: counts nothing


def test_a_burst_report_counts_lost_and_duplicated_jobs() -> None:
    report = burst_report(2.0, ["a", "b", "c", "d"], ["a", "b", "b", "x"], failed=1)
    assert report == {"seconds": 2.0, "submitted": 4, "received": 4, "lost": 2,
                      "duplicated": 2, "failed": 1}


def test_ratios_are_schedd_over_each_peer_that_ran() -> None:
    def system(p50: float, rate: float, cpu: float) -> dict[str, Any]:
        return {"serial_ms": {"n": 1, "p50": p50, "p99": p50 * 2}, "jobs_per_s": rate,
                "per_job": {"cpu_us": {"total": cpu, "client": 0.0}, "redis_calls": 10.0,
                            "redis_usec": 20.0, "redis_cpu_us": 5.0}}

    ratios = peer_bench.ratios({"schedd": system(1.0, 1000.0, 500.0),
                                "bullmq": system(2.0, 4000.0, 250.0),
                                "celery": {"skipped": "not installed"}})
    assert list(ratios) == ["schedd/bullmq"]
    r = ratios["schedd/bullmq"]
    assert (r["serial_p50"], r["serial_p99"], r["jobs_per_s"], r["cpu_us_total"]) == (
        0.5, 0.5, 0.25, 2.0)
    assert r["cpu_us_client"] is None  # a zero divisor
    assert r["cpu_us_worker"] is None  # a missing figure
    assert peer_measure.ratio(1.0, 40.0) == 0.025
    assert peer_bench.ratios({"schedd": {"failed": "x"}}) == {}


def test_the_table_says_why_a_peer_did_not_run() -> None:
    rows = peer_bench.table_rows({
        "burst": 10, "ratios": {},
        "systems": {"bullmq": {"skipped": "node and npm not found on PATH"},
                    "celery": {"version": "5.4.0", "failed": "RuntimeError: celery worker "
                               "exited 1:\nTraceback\n  boom"}}})
    assert rows == [
        ("PEER", "BullMQ", "skipped: node and npm not found on PATH"),
        ("PEER", "Celery 5.4.0",
         "FAILED: RuntimeError: celery worker exited 1: | Traceback | boom"),
    ]


async def test_bullmq_is_skipped_without_node_or_npm(monkeypatch: pytest.MonkeyPatch,
                                                     tmp_path: Path) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert await peer_bench.prepare_bullmq(tmp_path) == (None, "node and npm not found on PATH")


async def test_a_failed_npm_install_skips_bullmq(monkeypatch: pytest.MonkeyPatch,
                                                 tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in (("node", "exit 0"), ("npm", "echo 'npm error network down' >&2; exit 7")):
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    script, reason = await peer_bench.prepare_bullmq(tmp_path / "cache")
    assert script is None
    assert reason == ("npm install bullmq@6 ioredis@5 failed (exit 7): npm error network down")


async def test_a_driver_that_exits_or_stays_silent_fails_with_its_stderr(tmp_path: Path) -> None:
    dead = await peer_bench.Driver.start(
        [sys.executable, "-c", "import sys; sys.stderr.write('no broker'); sys.exit(3)"], {},
        tmp_path / "dead.log", "celery worker")
    try:
        with pytest.raises(RuntimeError, match="celery worker exited 3: no broker"):
            await dead.ready(10)
    finally:
        await dead.stop()
    silent = await peer_bench.Driver.start(
        [sys.executable, "-c", "print('banner', flush=True); import time; time.sleep(60)"], {},
        tmp_path / "silent.log", "bullmq worker")
    try:
        with pytest.raises(RuntimeError, match=r"bullmq worker was not ready within 0\.5 s"):
            await silent.ready(0.5)
    finally:
        with trio.fail_after(10):
            await silent.stop()
    assert silent.proc.returncode is not None


def test_the_schedd_client_driver_fails_without_a_daemon() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "schedd.devtools.peer_drivers", "client", "tcp://127.0.0.1:1",
         "1", "0", "1", "1"], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode != 0 and "ConnectFailed" in proc.stderr


@pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed")
async def test_schedds_turn_over_websocket(tmp_path: Path) -> None:
    """The scenario's default transport (the CLI test above runs TCP): one turn of schedd,
    its figures from the two snapshots."""
    from schedd.devtools.bench.options import Options
    from schedd.devtools.redis_process import RedisServer
    from schedd.store import open_store

    p = {"serial": 5, "warmup": 2, "burst": 100, "capacity": 8, "timeout": 30.0}
    with RedisServer() as redis:
        async with open_store(redis.url) as store:
            await store.execute("SET", "left-over", "1")
            turn = await peer_bench._turn("schedd", Options(transport="ws"), redis, store, p,
                                          None, tmp_path)
            assert await store.execute("EXISTS", "left-over") == 0  # FLUSHALL first
    assert len(turn["serial_s"]) == 5
    burst = turn["burst"]
    assert (burst["submitted"], burst["received"], burst["lost"], burst["duplicated"]) == (
        100, 100, 0, 0)
    assert set(burst["cpu_s"]) == {"daemon", "client", "worker", "redis", "total", "redis_info"}
    assert burst["cpu_s"]["total"] > 0
    assert burst["commands"]["fcall"]["calls"] > 0 and "info" not in burst["commands"]


@pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed")
async def test_a_peer_that_fails_is_left_out_and_schedd_failing_fails_the_scenario(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from schedd.devtools.bench.options import Options

    calls: list[str] = []
    fail = {"bullmq"}

    async def turn(system: str, *args: Any) -> dict[str, Any]:
        calls.append(system)
        if system in fail:
            raise RuntimeError(f"{system} worker exited 1: boom")
        return {"serial_s": [0.001, 0.002],
                "burst": {"seconds": 1.0, "submitted": 10, "received": 10, "lost": 0,
                          "duplicated": 0, "failed": 0, "jobs": 10, "jobs_per_s": 10.0,
                          "cpu_s": {"client": 0.01, "total": 0.01, "redis_info": 0.0},
                          "commands": {"fcall": {"calls": 20, "usec": 100}}}}

    async def bullmq(cache: Path | None = None) -> tuple[Path | None, str]:
        return tmp_path / "bullmq_peer.mjs", "6.0.0 (ioredis 5.0.0)"

    monkeypatch.setattr(peer_bench, "_turn", turn)
    monkeypatch.setattr(peer_bench, "prepare_bullmq", bullmq)
    monkeypatch.setattr(peer_bench, "_celery_version", lambda: None)
    said: list[str] = []
    opt = Options(say=said.append)
    p = {"rounds": 2, "burst": 10, "capacity": 2, "celery_concurrency": 1}
    result = await peer_bench.run_peer(opt, p)
    assert calls == ["schedd", "bullmq", "schedd"]  # not tried again in round 2
    assert result["systems"]["bullmq"]["failed"] == "RuntimeError: bullmq worker exited 1: boom"
    assert "skipped" in result["systems"]["celery"]
    assert result["systems"]["schedd"]["jobs_per_s"] == 10.0
    assert result["ratios"] == {}
    assert any("bullmq FAILED" in line for line in said)
    fail.add("schedd")
    with pytest.raises(RuntimeError, match="schedd worker exited 1"):
        await peer_bench.run_peer(opt, p)
    with pytest.raises(ValueError, match="no --url"):
        await peer_bench.run_peer(Options(url="ws://127.0.0.1:1"), p)
