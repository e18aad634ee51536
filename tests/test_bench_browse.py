"""The BROWSE bench scenario: its fill has the shape the scripts leave, and it runs (tiny)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

from schedd.core import JobFilter, Queries
from schedd.devtools.browse_cost import QUERIES, fill
from schedd.store.base import Store
from schedd.store.keys import Keys
from tests.e2e_daemon import SCHEDD


async def test_the_fill_reads_like_jobs_the_scripts_finished(store: Store) -> None:
    keys = Keys("bench")
    await fill(store, keys, 1000, 1_700_000_000_000)
    queries = Queries(store, keys)
    failed = await queries.list_jobs(JobFilter(state="failed", limit=500))
    # runs of 10 in every 200 fail, newest first
    assert [j.job_id for j in failed.jobs] == [
        f"job-{i:08d}" for i in range(999, -1, -1) if (i // 10) % 20 == 0]
    assert failed.cursor is None
    assert {j.error for j in failed.jobs} == {"E_BOOM"}
    mine = await queries.list_jobs(JobFilter(principal="token:p3", pool="pool-3", limit=500))
    assert [j.job_id for j in mine.jobs] == [
        f"job-{i:08d}" for i in range(999, -1, -1) if i % 10 == 3 and (i // 7) % 10 == 3]
    info = await queries.job("job-00000011")
    assert info is not None and info.state == "done" and info.node == "node-011"
    assert [a["outcome"] for a in info.attempts] == ["done"]
    assert info.payload_bytes == info.output_bytes == 10
    for name, kw in QUERIES.items():
        assert (await queries.list_jobs(JobFilter(**kw))).jobs, name


def test_browse_scenario_runs_at_tiny_scale(tmp_path: Path) -> None:
    out = tmp_path / "browse.json"
    proc = subprocess.run(
        [SCHEDD, "bench", "--scale", "tiny", "--scenarios", "BROWSE", "--json", str(out)],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    browse = json.loads(out.read_text())["results"]["BROWSE"]
    assert "failed" not in browse, browse
    for size in ("1000", "20000"):
        for name in QUERIES:
            row = browse["by_size"][size][name]
            assert row["redis_usec_per_page"] > 0 and row["jobs_per_page"] > 0
            assert row["examined_per_page"] <= 2000
    assert re.search(r"BROWSE\s+Redis time per page, failed\s+1,000 jobs: [\d.]+ us / "
                     r"20,000 jobs: [\d.]+ us", proc.stdout)
