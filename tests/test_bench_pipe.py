"""``schedd bench --scenarios PIPE`` at tiny scale, through the CLI, against a real redis-server
and daemon process: the three kinds, the ratios and the client's round trips. Timings are never
asserted."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from schedd.devtools.redis_process import REDIS_SERVER
from tests.bench_cli import run_tiny

pytestmark = pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed")


def test_the_pipe_scenario_counts_one_submit_and_no_handoff(tmp_path: Path) -> None:
    stdout, pipe = run_tiny(tmp_path, "PIPE")
    for lat in pipe["submit_to_done_ms"].values():
        assert lat["n"] == pipe["params"]["rounds"]
    assert pipe["client_requests_per_pipeline"] == 1
    assert pipe["client_handoffs_per_pipeline"] == 0
    assert pipe["client_requests_per_client_chain"] == 3
    assert pipe["client_handoffs_per_client_chain"] == 2
    assert pipe["pipeline_over_job_p50"] > 0
    assert re.search(r"PIPE\s+pipeline / job p50 \(target <= 3\.5\)\s+[\d.]+\n", stdout)
