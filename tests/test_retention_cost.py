"""The retention cost tool: what finished jobs hold in a real Redis, and its extrapolation."""

from __future__ import annotations

from schedd.core import CoreSettings
from schedd.devtools.redis_process import RedisServer
from schedd.devtools.retention_cost import extrapolate, run_hour, run_phase, table_rows
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


async def test_an_hour_in_compressed_time_plateaus_at_the_count_bound(
    redis_server: RedisServer,
) -> None:
    async with open_store(redis_server.url) as store:
        one = await run_hour(store, 60, 2, principals=1, rate=100.0, samples=6, retain_count=10)
        three = await run_hour(store, 60, 2, principals=3, rate=100.0, samples=6,
                               retain_count=10)
    assert [c["jobs_done"] for c in one["curve"]] == [10, 20, 30, 40, 50, 60]
    # the retained jobs stop at the bound once it is reached, and stay there
    assert [c["retained"] for c in one["curve"]] == [10] * 6
    assert one["retained_per_principal"] == [10] and one["virtual_seconds"] == 0.6
    assert one["bound_reached_at"] == 10
    # the bound is per principal: three principals keep three times as many
    assert three["retained"] == 30 and three["retained_per_principal"] == [10, 10, 10]
    # nothing is due by time in either clock: the run is shorter than the retention
    assert one["expired_by_time_real"] == 0 and one["expired_by_time_virtual"] == 0
    assert one["bytes_per_retained_job"] > 2 * 1024


async def test_the_bytes_bound_holds_the_curve_and_a_longer_virtual_run_counts_expiry(
    redis_server: RedisServer,
) -> None:
    async with open_store(redis_server.url) as store:
        # outputs of ~2 KB: 10,000 retained bytes hold 4 of them
        out = await run_hour(store, 30, 2, rate=1.0, samples=3, retention=10.0,
                             retain_bytes=10_000)
    assert out["retained"] == 4 and [c["retained"] for c in out["curve"]] == [4, 4, 4]
    # 30 jobs at 1 job/s with a 10 s retention: the first 20 would have expired in virtual
    # time; by Redis's clock (the run takes well under 10 s of it) none is due... unless the
    # host stalls, so only the virtual count is asserted
    assert out["expired_by_time_virtual"] == 20


def test_the_table_rows_give_the_curve_and_the_plateau() -> None:
    phase = {"principals": 1, "jobs": 40, "virtual_seconds": 0.4, "rate_jobs_per_s": 100.0,
             "curve": [{"jobs_done": 20, "delta": 2_000_000}, {"jobs_done": 40,
                                                               "delta": 2_100_000}],
             "retained": 10, "plateau_used_memory_delta": 2_100_000,
             "bytes_per_retained_job": 210_000, "bound_reached_at": 20,
             "growth_after_bound": 1.05, "expired_by_time_real": 0,
             "expired_by_time_virtual": 0}
    rows = table_rows({"phases": [phase]})
    assert rows[0][2] == "20: 2 MB, 40: 2 MB"
    assert rows[1][2].startswith("10 jobs, 2 MB, 210000 B; last / at the bound (20 jobs): 1.05")


def test_the_bytes_bound_counts_the_stored_output_not_redis_overhead() -> None:
    s = CoreSettings(retention=3600.0, retain_count=10_000, retain_bytes=1 << 30)
    # 117 KB of Redis memory per job, 102 KB of it counted: the count bound binds first
    out = extrapolate(117_137, rate=100.0, hours=1.0, s=s, counted=102_412)
    assert out["retained_per_principal"] == 10_000
    assert out["bytes_per_principal"] == 10_000 * 117_137
