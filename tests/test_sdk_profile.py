"""``python -m schedd.devtools.sdk_profile``: a small burst through a real daemon, and the
summary of a sampled profile. Timings are never asserted."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from schedd.devtools.redis_process import REDIS_SERVER
from schedd.devtools.sdk_profile import summarize_samples


@pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed")
@pytest.mark.parametrize("backend", ["trio", "asyncio"])
def test_a_burst_reports_the_cpu_per_job_of_every_process(backend: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "schedd.devtools.sdk_profile", "--jobs", "40", "--window", "8",
         "--capacity", "4", "--backend", backend],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.splitlines()[0])
    assert result["jobs"] == 40 and result["backend"] == backend
    assert set(result["cpu_us_per_job"]) == {"client", "node", "daemon", "redis"}
    assert all(value >= 0 for value in result["cpu_us_per_job"].values())
    assert result["script_calls_per_job"] >= 1  # at least the accept and result of each job


def test_a_client_that_cannot_connect_fails_the_run() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "schedd.devtools.sdk_profile", "--jobs", "1",
         "--url", "tcp://127.0.0.1:1"],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert proc.returncode != 0


M = "<module> (x.py:1);main (/repo/daemon/devtools/sdk_profile.py:9)"
RAW = "\n".join([
    f"{M};run (trio/_core/_run.py:10);send (/repo/daemon/sdk/_conn.py:5) 6",
    f"{M};run (trio/_core/_run.py:12);send (/repo/daemon/sdk/_conn.py:7);"
    "encode (/repo/daemon/protocol/codec.py:3) 2",
    f"{M};run (trio/_core/_run.py:10);get_events (trio/_core/_io_epoll.py:3) 50",
    "<module> (x.py:1);_find_and_load (<frozen importlib._bootstrap>:1);f (y.py:2) 9",
    "<module> (daemon/devtools/sdk_profile.py:1);compile (re/__init__.py:2) 4",
    f"{M};run (/v/site-packages/trio/_core/_run.py:10);"
    "EpollIOManager.get_events (/v/site-packages/trio/_core/_io_epoll.py:3) 70",
])


def test_the_summary_shares_samples_by_function_leaving_out_waits_and_imports() -> None:
    text = summarize_samples(RAW, us_per_job=100.0, top=10)
    lines = text.splitlines()
    # 6 + 2 + 50 samples count (the unqualified get_events is not the event loop's wait)
    assert lines[0].startswith("58 samples")
    end = lines.index("by time with callees:")
    own = {fields[4]: fields[:4] for fields in (line.split(None, 4) for line in lines[2:end])}
    assert own["send (sdk/_conn.py)"] == ["10.3", "10.3", "13.8", "13.8"]
    assert own["encode (protocol/codec.py)"] == ["3.4", "3.4", "3.4", "3.4"]
    assert "f (y.py)" not in text and "compile" not in text


def test_no_samples_say_so() -> None:
    assert summarize_samples("", 1.0, 5) == "no samples"
