"""One ``schedd bench`` scenario at tiny scale through the CLI, for the scenario tests."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from tests.e2e_daemon import SCHEDD


def run_tiny(tmp_path: Path, scenario: str) -> tuple[str, dict[str, Any]]:
    """(the table printed, the scenario's results) of ``schedd bench --scale tiny --scenarios
    SCENARIO --transport tcp``; the run must succeed and the scenario must not fail."""
    out = tmp_path / f"{scenario.lower()}.json"
    proc = subprocess.run(
        [SCHEDD, "bench", "--scale", "tiny", "--scenarios", scenario, "--transport", "tcp",
         "--json", str(out)],
        capture_output=True, text=True, timeout=180, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results: dict[str, Any] = json.loads(out.read_text())["results"][scenario]
    assert "failed" not in results, results
    return proc.stdout, results
