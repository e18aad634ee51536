"""The RETAIN bench scenario runs (tiny) and reports the memory curve of finished jobs and its
plateau; its figures are reported, never asserted as timings."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

from tests.e2e_daemon import SCHEDD


def test_retain_scenario_runs_at_tiny_scale(tmp_path: Path) -> None:
    out = tmp_path / "retain.json"
    proc = subprocess.run(
        [SCHEDD, "bench", "--scale", "tiny", "--scenarios", "RETAIN", "--json", str(out)],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    retain = json.loads(out.read_text())["results"]["RETAIN"]
    assert "failed" not in retain, retain
    one, three = retain["phases"]
    assert one["principals"] == 1 and one["retained"] == 100  # the tiny scale's retain_count
    assert three["principals"] == 3 and len(three["retained_per_principal"]) == 3
    # the tiny multi-principal bytes bound binds before the count: fewer than 100 each
    assert all(0 < n < 100 for n in three["retained_per_principal"])
    assert one["expired_by_time_virtual"] == 0
    assert re.search(r"RETAIN\s+1 principal\(s\), 300 jobs", proc.stdout)
