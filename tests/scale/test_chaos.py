"""The chaos run, CI size: 3 instances on one redis-server, 30 nodes, 500 jobs; an instance
killed with -9, nodes killed, one restarted on another instance. The full size is
``python -m schedd.devtools.chaos --nodes 200 --jobs 5000``."""

from __future__ import annotations

import pytest
import trio

from schedd.devtools.chaos import ChaosSettings, run_chaos
from schedd.devtools.redis_process import REDIS_SERVER, RedisServer

pytestmark = pytest.mark.redis_server


async def test_chaos_loses_no_job() -> None:
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed")
    settings = ChaosSettings(nodes=30, jobs=500, instances=3, kill_nodes=0.1, rate=150.0,
                             settle=40.0)
    with RedisServer() as server, trio.fail_after(90):
        report = await run_chaos(server.url, settings)
    print("\n".join(report.lines()))
    assert report.accepted == settings.jobs
    assert len(report.events) == 3  # instance killed, nodes killed, node restarted elsewhere
    assert report.jobs_without_done == 0 and report.jobs_with_duplicate_done == 0
    assert report.not_terminal == 0 and report.missing_in_redis == 0
    assert report.stale_slots == 0 and report.nodes_with_used == 0
    assert sum(report.states.values()) == settings.jobs
    assert report.dead_inbox_removed is True  # presence expired, the reaper removed the inbox
