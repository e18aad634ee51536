"""``schedd bench --scenarios BLOB`` at tiny scale, through the CLI, against a real redis-server
and daemon process: both modes ran every job and the figures are reported. Timings are never
asserted."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from schedd.devtools.blob_bench import MODES
from schedd.devtools.redis_process import REDIS_SERVER
from tests.e2e_daemon import SCHEDD

pytestmark = pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed")


@pytest.mark.parametrize("transport", ["ws", "tcp"])
def test_the_blob_scenario_runs_both_modes_at_tiny_scale(tmp_path: Path, transport: str) -> None:
    out = tmp_path / "blob.json"
    proc = subprocess.run(
        [SCHEDD, "bench", "--scale", "tiny", "--scenarios", "BLOB", "--transport", transport,
         "--json", str(out)],
        capture_output=True, text=True, timeout=180, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    blob = json.loads(out.read_text())["results"]["BLOB"]
    assert "failed" not in blob, blob
    jobs = blob["params"]["jobs"] * blob["params"]["rounds"]
    for mode in MODES:
        assert blob[mode]["jobs"] == jobs
        # at least the audio went up to the daemon and down to the node
        assert blob[mode]["wire_bytes_per_job"] >= 2 * blob["bytes"]
        assert blob[mode]["submit_to_node_ms"]["n"] == jobs
    assert set(blob["base64_over_attachment"]) == {"wire_bytes", "daemon_cpu",
                                                   "submit_to_node_p50"}
    assert re.search(r"BLOB base64/attachment\s+wire [\d.]+x, CPU [\d.]+x\s+p50 [\d.]+x\n",
                     proc.stdout)
