"""``schedd bench --scenarios PIPE`` at tiny scale, through the CLI, against a real redis-server
and daemon process: the three kinds, the ratios and the client's round trips. Timings are never
asserted."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from schedd.devtools.redis_process import REDIS_SERVER
from tests.e2e_daemon import SCHEDD

pytestmark = pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed")


def test_the_pipe_scenario_counts_one_submit_and_no_handoff(tmp_path: Path) -> None:
    out = tmp_path / "pipe.json"
    proc = subprocess.run(
        [SCHEDD, "bench", "--scale", "tiny", "--scenarios", "PIPE", "--transport", "tcp",
         "--json", str(out)],
        capture_output=True, text=True, timeout=180, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    pipe = json.loads(out.read_text())["results"]["PIPE"]
    assert "failed" not in pipe, pipe
    for lat in pipe["submit_to_done_ms"].values():
        assert lat["n"] == pipe["params"]["rounds"]
    assert pipe["client_requests_per_pipeline"] == 1
    assert pipe["client_handoffs_per_pipeline"] == 0
    assert pipe["client_requests_per_client_chain"] == 3
    assert pipe["client_handoffs_per_client_chain"] == 2
    assert pipe["pipeline_over_job_p50"] > 0
    assert re.search(r"PIPE\s+pipeline / job p50 \(target <= 3\.5\)\s+[\d.]+\n", proc.stdout)
