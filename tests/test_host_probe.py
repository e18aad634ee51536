"""The host probe of ``schedd bench``: what it counts as a stall and a burst, its CLI, and the
bench's handling of a probe that cannot run. Counts are asserted, never this host's timings."""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from schedd.devtools import host_probe
from schedd.devtools.bench import probe_host, probing, table
from schedd.devtools.host_probe import Sample, describe, sample, summarize
from tests.procs import children, cmdline

BASE = 0.0005  # a slice's usual length in these synthetic runs: 0.5 ms


def _run(seconds: float, slow: dict[float, float], base: float = BASE) -> list[Sample]:
    """A slice every 20 ms for ``seconds``; ``slow`` maps a start (rounded to 10 ms) to its
    length, the others take ``base``."""
    return [(i * 0.02, slow.get(round(i * 0.02, 2), base)) for i in range(round(seconds / 0.02))]


def test_stalls_are_grouped_into_bursts_and_the_period_is_the_median_gap() -> None:
    samples = _run(6.0, {1.0: 0.008, 1.04: 0.011,  # one burst of two stalls
                         2.5: 0.006,  # the next, 1.5 s later
                         4.0: 0.005, 4.2: 0.004,  # 1.5 s later again; 0.2 s apart: one burst
                         5.8: 0.0045})  # 1.8 s later
    result = summarize(samples)
    assert result["samples"] == 300
    assert result["work_ms"] == 0.5
    assert result["stalls"] == 6
    assert result["bursts"] == 4
    assert result["burst_period_s"] == 1.5  # median of 1.5, 1.5, 1.8
    assert result["longest_stall_ms"] == 10.5  # 11 ms less the usual 0.5


def test_a_slice_is_a_stall_only_when_both_many_times_and_milliseconds_longer() -> None:
    # 0.5 ms slices: the milliseconds decide
    short = summarize(_run(2.0, {
        1.0: 0.0019,  # 3.8 times
        1.2: 0.0021,  # 4.2 times, but only 1.6 ms longer
        1.4: 0.0024,  # 4.8 times, 1.9 ms longer
    }))
    assert short["stalls"] == 0
    assert short["bursts"] == 0 and short["burst_period_s"] is None
    assert short["longest_stall_ms"] == 0.0
    stalled = summarize(_run(2.0, {1.2: 0.0026}))  # 5.2 times and 2.1 ms longer
    assert stalled["stalls"] == 1 and stalled["bursts"] == 1
    assert stalled["burst_period_s"] is None  # one burst has no period
    assert stalled["longest_stall_ms"] == 2.1

    # 2 ms slices: the factor decides
    slow_cpu = summarize(_run(2.0, {1.0: 0.0079}, base=0.002))  # 5.9 ms longer, 3.95 times
    assert slow_cpu["stalls"] == 0
    assert summarize(_run(2.0, {1.0: 0.0081}, base=0.002))["stalls"] == 1  # 4.05 times


def test_no_samples_is_an_error_not_a_clean_host() -> None:
    with pytest.raises(ValueError, match="no samples"):
        summarize([])


def test_sample_runs_one_slice_per_period_until_the_time_is_up() -> None:
    now = [100.0]
    slept: list[float] = []

    def clock() -> float:
        now[0] += 0.001  # every reading 1 ms after the last: a slice "takes" 1 ms
        return now[0]

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    samples = sample(0.09, every=0.02, iterations=10, clock=clock, sleep=sleep)
    assert len(samples) == 5
    assert all(d == pytest.approx(0.001) for _, d in samples)
    starts = [t for t, _ in samples]
    # on a 20 ms grid from the second on (the first is late by the fake clock's reads)
    assert [round(b - a, 6) for a, b in itertools.pairwise(starts[1:])] == [0.02] * 3
    assert len(slept) == 4 and all(0 < s < 0.02 for s in slept)  # no sleep before the first


def test_describe_names_the_figures_and_a_failure() -> None:
    result = summarize(_run(4.0, {1.0: 0.008, 2.5: 0.006})) | {"realtime": False}
    text = describe(result)
    slice_ms = result["work_ms"]
    assert text == ("2 stalls in 3.98 s (longest 7.5 ms), 2 bursts every 1.5 s; "
                    f"slice {slice_ms} ms (not real-time)")
    one = summarize(_run(4.0, {1.0: 0.008})) | {"realtime": True}
    assert describe(one) == f"1 stall in 3.98 s (longest 7.5 ms), 1 burst; slice {slice_ms} ms"
    assert describe({"failed": "exit 1: boom"}) == "probe failed: exit 1: boom"


def test_cli_prints_one_json_line_and_writes_the_file(tmp_path: Path) -> None:
    out = tmp_path / "probe.json"
    proc = subprocess.run(
        [sys.executable, "-m", "schedd.devtools.host_probe", "--seconds", "0.2",
         "--json", str(out)], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result == json.loads(out.read_text())
    assert result["samples"] >= 1
    assert isinstance(result["realtime"], bool)
    assert set(result) == {"samples", "seconds", "work_ms", "stalls", "longest_stall_ms",
                           "bursts", "burst_period_s", "realtime"}


def test_cli_refuses_a_duration_that_is_not_positive() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "schedd.devtools.host_probe", "--seconds", "0"],
        capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2
    assert "--seconds must be > 0, not 0" in proc.stderr
    assert proc.stdout == ""


def test_realtime_is_false_where_the_class_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr("schedd.devtools.host_probe.os.sched_setscheduler", refuse)
    assert host_probe.realtime() is False


@pytest.mark.parametrize(("executable", "reason"), [
    ("/nonexistent/python", "cannot start /nonexistent/python: "),
    ("/bin/false", "exit 1: no output"),
    ("/bin/echo", "not JSON: '-m schedd.devtools.host_probe --seconds 0.1'"),
])
def test_the_bench_records_a_probe_that_cannot_run_and_goes_on(
        monkeypatch: pytest.MonkeyPatch, executable: str, reason: str) -> None:
    monkeypatch.setattr(sys, "executable", executable)
    result = trio.run(probe_host, 0.1)
    assert set(result) == {"failed"}
    assert result["failed"].startswith(reason)


def test_the_bench_reads_the_probe_result() -> None:
    result = trio.run(probe_host, 0.1)
    assert "failed" not in result, result
    assert result["samples"] >= 1 and result["stalls"] >= 0


def test_sample_stops_after_the_slice_in_which_stop_says_so() -> None:
    now = [0.0]

    def clock() -> float:
        now[0] += 0.001
        return now[0]

    asked = []

    def stop() -> bool:
        asked.append(1)
        return len(asked) == 3

    samples = sample(float("inf"), every=0.02, iterations=10, clock=clock,
                     sleep=lambda s: None, stop=stop)
    assert len(samples) == 3


def test_cli_until_stopped_reports_on_sigterm(tmp_path: Path) -> None:
    out = tmp_path / "probe.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "schedd.devtools.host_probe", "--until-stopped",
         "--json", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "probing\n"
        with pytest.raises(subprocess.TimeoutExpired):
            proc.wait(timeout=0.3)  # it runs until told
        proc.send_signal(signal.SIGTERM)
        rest, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, stderr
    result = json.loads(rest)
    assert result["samples"] >= 1 and result == json.loads(out.read_text())


def test_cli_takes_a_duration_or_until_stopped_not_both() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "schedd.devtools.host_probe", "--seconds", "1",
         "--until-stopped"], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2
    assert "not allowed with argument" in proc.stderr


def _probe_children() -> list[int]:
    """This process's children running the host probe."""
    return [pid for pid in children(os.getpid())
            if b"schedd.devtools.host_probe" in cmdline(pid)]


@pytest.mark.skipif(not os.path.exists("/proc/self/task"), reason="reads /proc (Linux)")
async def test_probing_reports_what_ran_beside_the_block_and_stops_the_probe() -> None:
    into: dict[str, object] = {}
    async with probing(into):
        await trio.sleep(0.3)
        assert len(_probe_children()) == 1
        assert into == {}  # filled in when the block ends
    assert "failed" not in into, into
    assert isinstance(into["samples"], int) and into["samples"] >= 1
    assert _probe_children() == []


@pytest.mark.skipif(not os.path.exists("/proc/self/task"), reason="reads /proc (Linux)")
async def test_probing_stops_the_probe_when_the_block_fails() -> None:
    into: dict[str, object] = {}
    with pytest.raises(RuntimeError, match="scenario broke"):
        async with probing(into):
            await trio.sleep(0.2)
            raise RuntimeError("scenario broke")
    assert "failed" not in into and _probe_children() == []


@pytest.mark.parametrize(("executable", "reason"), [
    ("/nonexistent/python", "cannot start /nonexistent/python: "),
    ("/bin/false", "exit 1: no output"),
])
async def test_probing_records_a_probe_that_cannot_run_and_lets_the_block_run(
        monkeypatch: pytest.MonkeyPatch, executable: str, reason: str) -> None:
    monkeypatch.setattr(sys, "executable", executable)
    into: dict[str, str] = {}
    ran = []
    async with probing(into):
        ran.append(1)
    assert ran == [1]
    assert set(into) == {"failed"} and into["failed"].startswith(reason)


def test_the_table_has_a_row_for_the_stalls_during_each_scenario() -> None:
    during = summarize(_run(4.0, {1.0: 0.008})) | {"realtime": True}
    document = {"machine": {}, "results": {
        "S4": {"usec_per_call": {"10": 30.0}, "host_stalls_during": during},
        "S5": {"failed": "boom", "host_stalls_during": {"failed": "exit 1: no output"}},
    }}
    text = table(document)
    assert re.search(r"S4\s+CPU stalls during the run \(--probe-during\)\s+1 stall in 3.98 s ",
                     text)
    assert re.search(r"S5\s+CPU stalls during the run \(--probe-during\)\s+probe failed: "
                     r"exit 1: no output", text)


def test_the_table_has_a_row_for_each_probe_of_the_host() -> None:
    before = summarize(_run(4.0, {})) | {"realtime": True}
    document = {"machine": {"host_stalls": before,
                            "host_stalls_after": {"failed": "exit 1: no output"}},
                "results": {}}
    text = table(document)
    assert re.search(r"HOST\s+CPU stalls \(host_probe, idle, before the scenarios\)\s+0 stalls in "
                     rf"3.98 s .*; slice {re.escape(str(before['work_ms']))} ms\n", text)
    assert re.search(r"HOST\s+CPU stalls \(host_probe, idle, after the scenarios\)\s+probe "
                     r"failed: exit 1: no output", text)
