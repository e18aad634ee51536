"""The retention cost tool: what finished jobs hold in a real Redis, and its extrapolation."""

from __future__ import annotations

from schedd.core import CoreSettings
from schedd.devtools.redis_process import RedisServer
from schedd.devtools.retention_cost import extrapolate, run_phase
from schedd.store import open_store


async def test_a_phase_measures_retained_jobs_and_the_bounds_hold(
    redis_server: RedisServer,
) -> None:
    async with open_store(redis_server.url) as store:
        default = await run_phase(store, 12, 4)
        bounded = await run_phase(store, 12, 4, retain_count=3)
    assert default["retained"] == 12 and bounded["retained"] == 3
    # each retained job holds at least its 4 KB output (a dozen jobs do not amortise the
    # server's own growth: the measured figures come from larger runs)
    assert default["bytes_per_retained_job"] > 4 * 1024


def test_the_extrapolation_stops_at_the_tightest_bound() -> None:
    s = CoreSettings(retention=3600.0, retain_count=10_000, retain_bytes=1 << 30)
    out = extrapolate(200_000, rate=100.0, hours=1.0, s=s)
    assert out["finished"] == 360_000 and out["retained_by_retention_only"] == 360_000
    assert out["retained_per_principal"] == (1 << 30) // 200_000  # the bytes bound
    assert extrapolate(50_000, rate=100.0, hours=1.0, s=s)["retained_per_principal"] == 10_000
    small = extrapolate(100, rate=1.0, hours=1.0, s=s)
    assert small["retained_per_principal"] == 3600  # retention binds before the bounds
