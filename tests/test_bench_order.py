"""The ORDER bench scenario runs (tiny): one ordered session, nodes and the client's instance
killed, every seq received once and in order."""

from __future__ import annotations

import json
import re
import subprocess
from collections import Counter
from pathlib import Path

from schedd.devtools.order_bench import OrderReport, _judge
from tests.e2e_daemon import SCHEDD


def test_the_verdict_counts_gaps_duplicates_and_reordering() -> None:
    report = OrderReport(utterances=6, nodes=1, instances=1)
    _judge(report, [(0, 0), (2, 2), (1, 1), (2, 2), (3, 4)], Counter())
    assert (report.out_of_order, report.duplicates, report.lost) == (2, 1, 1)
    assert report.received == 6 and not report.ok


def test_order_scenario_runs_at_tiny_scale(tmp_path: Path) -> None:
    out = tmp_path / "order.json"
    proc = subprocess.run(
        [SCHEDD, "bench", "--scale", "tiny", "--scenarios", "ORDER", "--json", str(out)],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    order = json.loads(out.read_text())["results"]["ORDER"]
    assert "failed" not in order, order
    assert (order["lost"], order["duplicates"], order["out_of_order"]) == (0, 0, 0), order
    assert order["received"] == order["utterances"] == order["accepted"]
    assert re.search(r"ORDER\s+utterances/received/out of order/duplicates/lost\s+100/100/0/0/0",
                     proc.stdout)
