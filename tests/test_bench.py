"""Smoke test of ``schedd bench`` and ``schedd sim``: every scenario at tiny scale, through the
CLI, against a real redis-server and daemon process. Counts are asserted, timings never are."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import tomllib
from pathlib import Path
from typing import Any

import hiredis
import pytest
import trio
import trio.testing

from schedd.core import Core, CoreSettings, JobSpec
from schedd.devtools.bench import (
    DaemonProcess,
    JobRecord,
    Recorder,
    _failure,
    held_jobs_after_kills,
    parse_setting,
    percentiles,
)
from schedd.devtools.redis_process import REDIS_SERVER
from schedd.devtools.script_cost import FIRST_CPU, pinned, send_one_at_a_time, submit_command
from schedd.devtools.sim import MAX_TICKS, Fleet, SimNode, fleet_ticks, parse_duration
from schedd.devtools.soak import slope
from schedd.sdk import Client
from schedd.store import open_store
from tests.e2e_daemon import SCHEDD
from tests.procs import children, cmdline, running

pytestmark = pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed")


def _positive(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


def _floor_ok(floor: dict[str, Any]) -> None:
    """The Redis floor a scenario measured on its redis-server (schedd.devtools.bench.floor)."""
    assert floor["command"] in ("fcall", "evalsha")
    assert floor["one_at_a_time_us"]["n"] == floor["calls"] > 0
    assert 0 < floor["one_at_a_time_us"]["p50"] <= floor["one_at_a_time_us"]["p99"]
    assert floor["pipelined_calls"] > floor["calls"]
    assert _positive(floor["calls_per_s"]) and _positive(floor["server_usec_per_call"])


def _dispatch_ratios_ok(result: dict[str, Any]) -> None:
    _floor_ok(result["floor"])
    for figure in ("submit_to_node", "submit_to_done"):
        ratios = result["ratios"][f"{figure}_round_trips"]
        assert _positive(ratios["p50"]) and _positive(ratios["p99"]), ratios
        assert ratios["p50"] <= ratios["p99"]


def _lifecycle_ok(result: dict[str, Any]) -> None:
    assert result["submitted"] > 0
    assert result["done"] == result["submitted"]
    assert result["lost"] == 0
    assert result["error_count"] == 0, result["errors"]


def test_every_scenario_runs_at_tiny_scale(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        # CHAOS is covered by tests/scale/test_chaos.py (the CI-sized chaos run)
        [SCHEDD, "bench", "--scale", "tiny", "--scenarios", "S1,S2,S3,S4,S5", "--json", str(out),
         "--set", "nodes.liveness_refresh=2"],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "S1" in proc.stdout and "S5" in proc.stdout  # the table
    doc = json.loads(out.read_text())
    assert doc["machine"]["cpus"] >= 1
    assert doc["machine"]["python_loop_ms"] > 0  # the host's speed, to compare runs
    assert f"{doc['machine']['python_loop_ms']} ms" in proc.stdout
    for when in ("before", "after"):  # the host probe ran before and after the scenarios
        stalls = doc["machine"]["host_stalls" if when == "before" else "host_stalls_after"]
        assert "failed" not in stalls, stalls
        assert stalls["samples"] > 0 and stalls["work_ms"] > 0
        assert re.search(rf"HOST\s+CPU stalls \(host_probe, idle, {when} the scenarios\)\s+"
                         rf"\d+ stalls? in .*; slice {re.escape(str(stalls['work_ms']))} ms",
                         proc.stdout)
    assert doc["settings"] == ["nodes.liveness_refresh=2"]
    assert re.search(r"HOST\s+daemon settings \(--set\)\s+nodes.liveness_refresh=2\n", proc.stdout)
    r = doc["results"]
    assert set(r) == {"S1", "S2", "S3", "S4", "S5"}

    s1 = r["S1"]
    _lifecycle_ok(s1)
    assert s1["submitted"] == s1["params"]["rate"] * s1["params"]["seconds"]
    assert s1["ok"] == s1["submitted"]
    assert s1["submit_to_node_ms"]["n"] == s1["submitted"]
    lat = s1["submit_to_done_ms"]
    assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["p99.9"] <= lat["max"]
    assert set(s1["cpu_us_per_job"]) == {"daemon", "redis", "bench"}
    assert all(us > 0 for us in s1["cpu_us_per_job"].values())
    # a no-op job's script calls: job_submit, then the node's accept and result together in one
    # job_result; the heartbeat flushes and the reaper add a few hundredths
    assert 2.0 <= s1["script_calls_per_job"] < 2.5
    _dispatch_ratios_ok(s1)
    assert re.search(r"S1\s+submit->done\s+p50 [\d.]+ / p99 [\d.]+ / max [\d.]+ ms = "
                     r"p50 [\d.]+ / p99 [\d.]+ RT\n", proc.stdout)
    assert re.search(r"S1\s+Redis floor: no-op (fcall|evalsha) one at a time \(RT\) / pipelined"
                     r"\s+p50 [\d.]+ / p99 [\d.]+ us; \d+ calls/s", proc.stdout)
    assert re.search(r"S1\s+CPU per job \(daemon / redis / bench\); script calls\s+\S+ / \S+ / "
                     r"\S+ us; 2\.\d+\n", proc.stdout)

    s2 = r["S2"]
    assert s2["lost"] == 0 and s2["done"] == s2["submitted"] > 0
    assert s2["best_jobs_per_s"] > 0
    assert [level["concurrency"] for level in s2["levels"]]
    _floor_ok(s2["floor"])
    # one job_submit per job; under concurrency the node's accepts and results come in runs that
    # one job_result_many call takes, so the second call per job is shared by several jobs
    assert 1.0 < s2["script_calls_per_job"] < 2.5
    assert _positive(s2["ratios"]["best_jobs_per_s_of_floor"])
    assert re.search(r"S2\s+best sustained jobs/s \(p99<=50ms\)\s+.* = [\d.]+ of floor calls/s",
                     proc.stdout)

    s3 = r["S3"]
    _lifecycle_ok(s3)
    assert s3["heartbeats_per_s"] > 0
    assert s3["heartbeat_script_calls_per_s"] > 0
    held = s3["heartbeat_call_ms"]  # from Redis's SLOWLOG: one entry per heartbeat call
    assert held["n"] > 0 and 0 < held["p50"] <= held["max"]
    assert s3["redis_heartbeat_ms_per_s"] > 0
    assert re.search(r"S3\s+heartbeat call holds Redis \(p50 / max\)\s+\S+ / \S+ ms", proc.stdout)
    assert s3["daemon_rss_mb"] > 0 and s3["daemon_cpu_pct_heartbeats"] >= 0
    assert s3["node_errors"] == 0 and s3["reconnects"] == 0
    _dispatch_ratios_ok(s3)
    assert re.search(r"S3\s+node errors / reconnects \(live nodes reaped\)\s+0 / 0\n", proc.stdout)

    s4 = r["S4"]
    assert [row["nodes_in_pool"] for row in s4["rows"]] == s4["params"]["sizes"]
    assert all(row["select_reserve_calls"] == s4["params"]["calls"] for row in s4["rows"])
    assert all(len(row["pinned_cpu"]) == 1 for row in s4["rows"])  # one CPU, see script_cost
    for figure in ("", "_through_core", "_back_to_back"):
        assert all(row[f"select_reserve_usec_per_call{figure}"] > 0 for row in s4["rows"])
    for row in s4["rows"]:  # the floor measured on S4's own redis-server, per pool size
        _floor_ok(row["floor"])
    for ratio in ("usec_per_call_round_trips", "usec_per_call_noop_calls"):
        assert set(s4["ratios"][ratio]) == {str(size) for size in s4["params"]["sizes"]}
        assert all(_positive(v) for v in s4["ratios"][ratio].values())
    assert re.search(r"S4\s+select\+reserve, 10 nodes\s+[\d.]+ us/call "
                     r"\([\d.]+ through the core; [\d.]+ back to back\) = [\d.]+ RT = "
                     r"[\d.]+ no-op calls\n", proc.stdout)

    s5 = r["S5"]
    assert s5["lost"] == 0 and s5["done"] == s5["submitted"] > 0
    for how in ("drop", "silent"):
        assert s5[how]["nodes_killed"] > 0
        assert s5[how]["jobs_held"] > 0
        assert s5[how]["not_reassigned"] == 0
        # every held job was reassigned, but for one whose result had already left the node
        assert s5[how]["kill_to_reassign_ms"]["n"] + s5[how]["finished_before_kill"] \
            == s5[how]["jobs_held"]
    assert s5["drop"]["kill_to_reassign_ms"]["n"] + s5["silent"]["kill_to_reassign_ms"]["n"] > 0
    assert s5["submit_to_node_ms"]["n"] == s5["submitted"]
    assert re.search(r"S5\s+submit->node, kills included\s+"
                     r"p50 [\d.]+ / p99 [\d.]+ / max [\d.]+ ms\n", proc.stdout)


def test_the_slowloris_scenario_runs_at_tiny_scale(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [SCHEDD, "bench", "--scale", "tiny", "--scenarios", "SLOWLORIS", "--json", str(out)],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    s = json.loads(out.read_text())["results"]["SLOWLORIS"]
    assert "failed" not in s, s
    _lifecycle_ok(s)
    for phase in ("quiet", "attack"):
        lat = s[f"{phase}_submit_to_done_ms"]
        assert lat["n"] > 0 and 0 < lat["p50"] <= lat["p99"] <= lat["max"]
    assert s["p99_ratio"] > 0
    assert s["daemon_cpu_pct_quiet"] >= 0 and s["daemon_cpu_pct_attack"] >= 0
    attacker = s["attacker"]
    # 300 connections held open at once: the pending cap per address (256) refused the rest
    assert attacker["peak_open"] >= 256 and attacker["refused"] > 0, attacker
    assert re.search(r"SLOWLORIS\s+p99 under attack / quiet \(target <= 3\)\s+[\d.]+\n",
                     proc.stdout)


def test_soak_scenario_runs_at_tiny_scale(tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    proc = subprocess.run(
        [SCHEDD, "bench", "--scale", "tiny", "--scenarios", "SOAK", "--json", str(out)],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    soak = json.loads(out.read_text())["results"]["SOAK"]
    assert "failed" not in soak, soak
    _lifecycle_ok(soak)
    assert soak["reconnects"] > 0
    for phase, per in (("reconnect_phase", "reconnection"), ("jobs_phase", "job"),
                       ("both_phase", "second")):
        assert soak[phase]["samples"] > 1
        assert isinstance(soak[phase][f"bytes_per_{per}"], float | None)
        assert all(mb > 0 for mb in soak[phase]["rss_mb"])
    assert soak["jobs_phase"]["jobs"] > 0
    for what in ("per reconnection", "per job", "per second, both"):
        assert re.search(rf"SOAK\s+daemon RSS {what}", proc.stdout)
    assert re.search(r"SOAK\s+jobs submitted/done/lost\s+(\d+)/\1/0\n", proc.stdout)


def test_soak_slope_is_the_least_squares_fit() -> None:
    assert slope([0, 1, 2, 3], [10, 12, 14, 16]) == 2.0
    assert slope([0, 1, 2], [5, 5, 5]) == 0.0
    assert slope([1, 1], [3, 4]) is None  # nothing to fit against
    assert slope([1], [3]) is None


def test_set_overrides_the_bench_daemons_configuration() -> None:
    daemon = DaemonProcess([("nodes", "heartbeat_flush", "0.05"), ("limits", "idle_timeout", "30"),
                            ("drain", "timeout", "1")])
    try:
        config = tomllib.loads(daemon._config())  # one table per section, or this fails
    finally:
        daemon.stop()
    assert config["nodes"] == {"heartbeat_interval": 1.0, "heartbeat_flush": 0.05}
    assert config["limits"]["idle_timeout"] == 30  # over the bench's own 600
    assert config["drain"] == {"timeout": 1}
    assert config["redis"]["url"] == daemon.redis.url


@pytest.mark.parametrize(("text", "message"), [
    ("nodes.heartbeat_flush", "expected SECTION.KEY=VALUE"),
    ("heartbeat_flush=0.05", "expected SECTION.KEY=VALUE"),
    ("nodes.=1", "expected SECTION.KEY=VALUE"),
    ("nodes.heartbeat_flush=", "expected SECTION.KEY=VALUE"),
    ("plugins.transport_ws.listen=1", "expected SECTION.KEY=VALUE"),
    ("redis.url=\"redis://elsewhere\"", "set by the bench itself"),
    ("plugins.enabled=[]", "set by the bench itself"),
    ("schedd.log_level=debug", "not a TOML value"),
])
def test_set_refuses_what_it_cannot_use(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_setting(text)
    proc = subprocess.run([SCHEDD, "bench", "--scale", "tiny", "--set", text],
                          capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode == 2
    assert "argument --set: " in proc.stderr and message in proc.stderr


def test_set_with_url_is_refused() -> None:
    proc = subprocess.run([SCHEDD, "bench", "--scenarios", "S1", "--url", "ws://127.0.0.1:1",
                           "--set", "nodes.heartbeat_flush=0.05"],
                          capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode != 0
    assert "--set configures the daemons the bench starts" in proc.stderr


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="reads /proc (Linux)")
def test_sigterm_stops_the_processes_the_bench_started(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    started: list[int] = []
    proc = subprocess.Popen(
        [SCHEDD, "bench", "--scale", "tiny", "--scenarios", "S4,S3", "--json", str(out),
         "--probe-during"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stderr is not None
        seen = []
        for line in proc.stderr:  # S4 finishes; S3 has its daemon and redis-server running
            seen.append(line)
            if "registered in" in line:
                break
        else:
            pytest.fail("S3 never registered its fleet:\n" + "".join(seen)[-3000:])
        started = children(proc.pid)
        # the daemon, its redis-server and the host probe beside S3 at least
        assert len(started) >= 3, started
        assert any(b"schedd.devtools.host_probe" in cmdline(pid) for pid in started), started
        proc.send_signal(signal.SIGTERM)
        rest = proc.stderr.read()
        assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    left = [pid for pid in started if running(pid)]
    for pid in left:  # not to leave them behind when this fails
        os.kill(pid, signal.SIGKILL)
    assert left == []
    assert "schedd: bench stopped by SIGTERM; the processes it started are stopped; the " \
           f"scenarios that finished (S4) are in {out}" in rest
    results = json.loads(out.read_text())["results"]
    assert set(results) == {"S4"}
    assert results["S4"]["host_stalls_during"]["samples"] >= 1  # the probe beside S4 reported
    assert proc.stdout is not None and proc.stdout.read() == ""  # no table of a partial run


def test_parse_setting_keeps_the_toml_value() -> None:
    assert parse_setting(" nodes.heartbeat_flush = 0.05 ") == ("nodes", "heartbeat_flush", "0.05")
    assert parse_setting('schedd.log_level="debug"') == ("schedd", "log_level", '"debug"')


async def test_sim_command_registers_and_reports() -> None:
    daemon = DaemonProcess()
    try:
        with trio.fail_after(30):
            await daemon.start()
            proc = await trio.run_process(
                [SCHEDD, "sim", "--url", daemon.tcp, "--nodes", "20", "--pools", "p",
                 "--capacity", "2", "--for", "1.5", "--stats-every", "0.5"],
                capture_stdout=True, capture_stderr=True, check=False,
            )
    finally:
        daemon.stop()
    stderr = proc.stderr.decode()
    assert proc.returncode == 0, stderr
    assert "20 nodes registered" in stderr
    assert "nodes 20/20 connected" in stderr


def test_sim_refuses_a_fleet_with_no_pools() -> None:
    proc = subprocess.run([SCHEDD, "sim", "--nodes", "1"], capture_output=True, text=True,
                          timeout=30, check=False)
    assert proc.returncode == 2
    assert "--pools" in proc.stderr


@pytest.mark.parametrize(
    ("spec", "low", "high"),
    [("fixed:0", 0, 0), ("fixed:0.5", 0.5, 0.5), ("uniform:1,2", 1, 2), ("exp:0", 0, 0)],
)
def test_durations(spec: str, low: float, high: float) -> None:
    sample = parse_duration(spec)
    assert all(low <= sample() <= high for _ in range(100))


@pytest.mark.parametrize("spec", ["fixed", "uniform:2,1", "exp:-1", "gauss:1", "fixed:x"])
def test_bad_durations(spec: str) -> None:
    with pytest.raises(ValueError, match="bad duration"):
        parse_duration(spec)


def test_script_cost_pins_to_one_cpu_and_restores() -> None:
    before = os.sched_getaffinity(0)
    with pinned(FIRST_CPU):
        assert os.sched_getaffinity(0) == {min(before)}
    assert os.sched_getaffinity(0) == before
    with pinned(None):
        assert os.sched_getaffinity(0) == before


async def test_script_cost_runs_back_to_back_off_the_servers_cpu(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The back-to-back calls run with this process on the CPUs the server does not use, and
    its affinity is restored after."""
    from schedd.core import Core
    from schedd.devtools import script_cost

    before = os.sched_getaffinity(0)
    seen: list[set[int]] = []
    submit = Core.submit

    async def spy(self: Any, spec: Any, **kwargs: Any) -> Any:
        if spec.job_id.startswith("b2b-"):
            seen.append(os.sched_getaffinity(0))
        return await submit(self, spec, **kwargs)

    monkeypatch.setattr(Core, "submit", spy)  # the class script_cost drives
    (row,) = await script_cost.run([3], 40)
    assert os.sched_getaffinity(0) == before
    assert row["select_reserve_calls"] == 40
    assert row["select_reserve_usec_per_call_back_to_back"] > 0
    assert len(seen) == 40
    others = before - {min(before)}
    assert all(cpus == (others or before) for cpus in seen)


async def test_submit_command_is_the_command_the_core_sends(redis_server: Any) -> None:
    """The lean driver's command for a job is byte for byte what Core.submit sends for it,
    and sent on its own it takes that job; a second send of it is refused as not new."""

    def spec(job_id: str = "") -> JobSpec:
        # one trace context for every job: the core makes a new one for a job given none
        trace = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        return JobSpec(pools=("p",), job_id=job_id, payload_json='{"n": 1}', trace=trace)

    address = ("127.0.0.1", redis_server.port)
    async with open_store(redis_server.url) as store:
        await store.execute("FLUSHALL")
        core = Core(store, CoreSettings(namespace="sc", instance="sc-1", heartbeat_interval=600))
        await core.start()
        await core.register_node(node_id="n1", capacity=10, pools=["p"])
        from_a = await submit_command(core, spec("a"))
        from_b = await submit_command(core, spec("b"))
        assert from_a("b") == from_b("b")  # from_b("b") is the command recorded for "b"
        assert from_a("c") == from_b("c") != from_a("d")
        assert b"$1\r\nc\r\n" in from_a("c") and core.keys.job("c").encode() in from_a("c")

        send_one_at_a_time(address, [from_a("c"), from_a("d")])
        for job_id in ("a", "b", "c", "d"):
            assert await store.execute("HGET", core.keys.job(job_id), "state") == b"assigned"
        assert (await store.execute("HGET", core.keys.counts, "assigned")) == b"4"

        with pytest.raises(RuntimeError, match="did not take a new job"):
            send_one_at_a_time(address, [from_a("c")])
        with pytest.raises(hiredis.ReplyError, match="Function not found"):
            send_one_at_a_time(address, [b"*3\r\n$5\r\nFCALL\r\n$4\r\nnope\r\n$1\r\n0\r\n"])
        with pytest.raises(ValueError, match="names its job"):
            await submit_command(core, spec())
        # a job id that is also another argument (the instance) cannot be told apart
        with pytest.raises(ValueError, match="exactly as its key and as one argument"):
            await submit_command(core, spec("sc-1"))


def test_the_lean_driver_reports_a_closed_connection() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)

        def close_the_first() -> None:
            conn, _ = listener.accept()
            conn.recv(1024)
            conn.close()

        closer = threading.Thread(target=close_the_first)
        closer.start()
        with pytest.raises(ConnectionError, match="closed the connection"):
            send_one_at_a_time(listener.getsockname(), [b"*1\r\n$4\r\nPING\r\n"])
        closer.join()


def test_script_cost_refuses_a_cpu_it_may_not_use() -> None:
    with pytest.raises(ValueError, match="cpu 4096 is not one"), pinned(4096):
        pass
    proc = subprocess.run(
        [sys.executable, "-m", "schedd.devtools.script_cost", "--cpu", "4096"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert proc.returncode == 2 and "cpu 4096 is not one" in proc.stderr


def test_percentiles() -> None:
    values = [i / 1000 for i in range(1, 1001)]  # 1..1000 ms
    p = percentiles(values)
    assert p == {"n": 1000, "p50": 500.0, "p90": 900.0, "p99": 990.0, "p99.9": 999.0,
                 "max": 1000.0}
    assert percentiles([]) == {"n": 0}


def test_s5_tells_a_reassigned_job_from_one_that_finished_and_one_left_behind() -> None:
    recorder = Recorder()
    # held by the killed node n-1 on attempt 1:
    recorder.jobs["moved"] = JobRecord(submitted=0.0, done_at=12.0, state="done", attempts=2,
                                       done_node="n-2", reassigned=[(10.4, 2, "n-2")])
    # its result had left n-1 when the kill came: done by n-1's own attempt
    recorder.jobs["finished"] = JobRecord(submitted=0.0, done_at=10.1, state="done", attempts=1,
                                          done_node="n-1")
    # done by n-1 but on an earlier attempt than the one it held: not this kill's result
    recorder.jobs["stale"] = JobRecord(submitted=0.0, done_at=10.1, state="done", attempts=1,
                                       done_node="n-1")
    # never reassigned, never done: what S5 exists to catch
    recorder.jobs["stuck"] = JobRecord(submitted=0.0)
    # reassigned only back to the killed node: not a reassignment
    recorder.jobs["same-node"] = JobRecord(submitted=0.0, reassigned=[(10.2, 2, "n-1")])
    kills = [{"how": "drop", "node": "n-1", "at": 10.0,
              "held": {"moved": 1, "finished": 1, "stale": 2, "stuck": 1, "same-node": 1}},
             {"how": "drop", "node": "n-3", "at": 10.0, "held": {"gone": 1}}]  # no record
    summary, delays = held_jobs_after_kills(recorder, kills)
    assert delays == [pytest.approx(0.4)]
    assert summary["nodes_killed"] == 2 and summary["jobs_held"] == 6
    assert summary["finished_before_kill"] == 1
    assert summary["not_reassigned"] == 4  # stale, stuck, same-node, gone
    assert summary["kill_to_reassign_ms"]["n"] == 1


def test_failure_names_the_first_error_inside_nested_groups() -> None:
    group = BaseExceptionGroup("nursery", [
        ExceptionGroup("inner", [RuntimeError("node sim-1 could not register"), OSError("x")]),
        ValueError("y"),
    ])
    assert _failure(group) == ("RuntimeError: node sim-1 could not register "
                               "(and 2 more errors)")
    assert _failure(ExceptionGroup("one", [KeyError("k")])) == "KeyError: 'k'"
    assert _failure(ValueError("plain")) == "ValueError: plain"


def test_fleet_ticks_hold_about_ten_beats() -> None:
    assert [fleet_ticks(n) for n in (1, 9, 10, 200, 1000, 10_000, 50_000)] == [
        1, 1, 1, 20, 100, MAX_TICKS, MAX_TICKS]


async def test_fleet_spreads_its_heartbeats_over_the_interval(
    monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.testing.MockClock,
) -> None:
    beats: list[tuple[float, str]] = []

    async def send(node: SimNode, message: Any) -> bool:
        beats.append((trio.current_time(), node.node_id))
        return True

    monkeypatch.setattr(SimNode, "send", send)
    fleet = Fleet(["tcp://127.0.0.1:1"], 40, pools=["p"])  # never connects: beats faked
    fleet.beating.update(fleet.nodes)
    async with trio.open_nursery() as nursery:
        fleet.nursery = nursery
        start = trio.current_time()
        nursery.start_soon(fleet._heartbeats)
        await trio.sleep(fleet.heartbeat_interval * 1.1)  # ticks at 1/4, 2/4, 3/4 and 4/4
        nursery.cancel_scope.cancel()
    assert sorted(node for _, node in beats) == sorted(n.node_id for n in fleet.nodes)
    times = sorted({round(t - start, 6) for t, _ in beats})
    assert len(times) == fleet_ticks(40) == 4  # four ticks of ten beats
    assert times[-1] - times[0] == pytest.approx(0.75 * fleet.heartbeat_interval)


class _Rounds(trio.abc.Instrument):
    """Counts the scheduler's rounds (one I/O check per round of runnable tasks)."""

    def __init__(self) -> None:
        self.count = 0

    def after_io_wait(self, timeout: float) -> None:
        self.count += 1


async def test_fleet_sends_every_due_tick_in_one_round_after_a_stall(
    monkeypatch: pytest.MonkeyPatch, mock_clock: trio.testing.MockClock,
) -> None:
    # While thousands of nodes connect, one trio round takes milliseconds: a ticker that
    # sent one tick per round fell a second behind and the daemon reaped live nodes.
    rounds = _Rounds()
    sent: list[tuple[int, str]] = []

    async def send(node: SimNode, message: Any) -> bool:
        sent.append((rounds.count, node.node_id))
        return True

    monkeypatch.setattr(SimNode, "send", send)
    fleet = Fleet(["tcp://127.0.0.1:1"], 40, pools=["p"])  # never connects: beats faked
    fleet.beating.update(fleet.nodes)
    trio.lowlevel.add_instrument(rounds)
    try:
        async with trio.open_nursery() as nursery:
            fleet.nursery = nursery
            nursery.start_soon(fleet._heartbeats)
            await trio.testing.wait_all_tasks_blocked()
            assert sent == []
            mock_clock.jump(0.6 * fleet.heartbeat_interval)  # the ticks at 1/4 and 2/4 are due
            await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
    finally:
        trio.lowlevel.remove_instrument(rounds)
    assert sorted(node for _, node in sent) == sorted(
        n.node_id for n in fleet.nodes[0::4] + fleet.nodes[1::4])  # two ticks of ten
    assert len({sent_in for sent_in, _ in sent}) == 1, "the due ticks went out round by round"


@pytest.mark.parametrize("transport", ["tcp", "ws"])
async def test_fleet_answers_zero_length_jobs_ok_and_failed(transport: str) -> None:
    daemon = DaemonProcess()
    try:
        with trio.fail_after(60):
            await daemon.start()
            url = daemon.url(transport)
            fleet = Fleet([url], 4, pools=["p"], fail_rate=0.5)
            async with trio.open_nursery() as nursery:
                await nursery.start(fleet.run)
                async with Client.connect(url) as client:
                    handles = [await client.submit({"n": i}, pools=["p"]) for i in range(40)]
                    outcomes = [(await handle.result()).ok for handle in handles]
                nursery.cancel_scope.cancel()
    finally:
        daemon.stop()
    # over TCP accept and result go out in one write (send_many); over ws one by one
    assert fleet.stats.results_ok == outcomes.count(True) > 0
    assert fleet.stats.results_failed == outcomes.count(False) > 0
    assert fleet.stats.assigns == 40 and not fleet.nodes[0].running


async def test_the_bench_daemon_ignores_schedd_variables_of_the_shell(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # neither the bench's own variable nor an override meant for a production daemon reaches it
    monkeypatch.setenv("SCHEDD_BENCH_KEEP", "1")
    monkeypatch.setenv("SCHEDD_REDIS__URL", "redis://127.0.0.1:1/0")
    daemon = DaemonProcess()
    try:
        with trio.fail_after(30):
            await daemon.start()  # a daemon that read either would exit (bad key, no Redis)
        await trio.sleep(0.5)
        assert daemon.proc is not None and daemon.proc.poll() is None
    finally:
        daemon.stop()
    assert daemon.dir.exists()  # SCHEDD_BENCH_KEEP still applies to the bench itself
    shutil.rmtree(daemon.dir)
