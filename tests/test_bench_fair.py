"""The FAIR bench scenario runs (tiny) and reports shares, latencies and a dispatch's cost; its
figures are reported, never asserted as timings (the shares are the scripts' order, not time)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

from tests.e2e_daemon import SCHEDD


def test_fair_scenario_runs_at_tiny_scale(tmp_path: Path) -> None:
    out = tmp_path / "fair.json"
    proc = subprocess.run(
        [SCHEDD, "bench", "--scale", "tiny", "--scenarios", "FAIR", "--json", str(out)],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    fair = json.loads(out.read_text())["results"]["FAIR"]
    assert "failed" not in fair, fair
    assert fair["share_1_1"]["contended_dispatches"] > 0
    assert set(fair["share_3_1"]["share"]) == {"heavy", "light"}
    assert fair["slow"]["0.4"]["p99_flooded"] is not None
    assert [row["principals"] for row in fair["cost"]] == [1, 10]
    assert all(row["redis_usec_per_call"] > 0 for row in fair["cost"])
    assert re.search(r"FAIR\s+share 1:1 while both queued", proc.stdout)
    # the same runs with the fair reservation on, and what it costs a dispatch
    held = fair["hold"]
    assert held["hold_s"] > 0 and held["share_1_1"]["contended_dispatches"] > 0
    assert held["slow"]["0.4"]["p99_flooded"] is not None
    assert 0 <= held["slow"]["0.4"]["held_idle_flooded"] < 1
    assert fair["slow"]["0.4"]["held_idle_flooded"] == 0  # work conserving without a hold
    assert [row["hold"] for row in fair["cost_hold"]] == [held["hold_s"]] * 2
    assert re.search(r"FAIR\s+share 1:1 while both queued \(target 45-55 %, hold", proc.stdout)
    # the wall-clock part: a real daemon, nodes and four token principals over the wire
    wire = fair["wire"]
    assert wire["alone"]["jobs"] > 0
    assert wire["alone"]["unassigned"] == 0
    assert wire["alone"]["errors"] == wire["share_1_1"]["errors"] == 0
    assert wire["flooded"]["submit_to_node_ms"]["n"] > 0
    assert set(wire["share_1_1"]["share"]) == {"fast", "slow"}
    assert set(wire["share_3_1"]["share"]) == {"heavy", "light"}
    # the flood outran the pool: the fast tenant still had jobs queued when the phase ended
    assert wire["share_1_1"]["queued_at_end"]["fast"] > 0
    assert re.search(r"FAIR\s+wire share 1:1 while both queued", proc.stdout)
    hold = wire["hold"]
    assert hold["flooded"]["submit_to_node_ms"]["n"] > 0
    assert hold["flooded"]["errors"] == hold["share_1_1"]["errors"] == 0
    assert hold["held_idle"] is not None
    assert set(hold["share_3_1"]["share"]) == {"heavy", "light"}

