"""``schedd bench --scenarios SDK`` at tiny scale, through the CLI, against a real redis-server
and daemon process: every driver's round trips and the ratios. Timings are never asserted."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from schedd.devtools.redis_process import REDIS_SERVER
from schedd.devtools.sdk_bench import DRIVERS, ratios, table_rows
from tests.bench_cli import run_tiny
from tests.e2e_daemon import SCHEDD

pytestmark = pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed")


def test_the_sdk_scenario_runs_every_driver_at_tiny_scale(tmp_path: Path) -> None:
    stdout, sdk = run_tiny(tmp_path, "SDK")
    assert list(sdk["round_trip_ms"]) == list(DRIVERS) == ["trio", "asyncio", "blocking"]
    for lat in sdk["round_trip_ms"].values():
        assert lat["n"] == sdk["params"]["jobs"] * sdk["params"]["rounds"]
        assert 0 < lat["p50"] <= lat["p99"] <= lat["max"]
    assert set(sdk["ratios"]) == {"asyncio/trio", "blocking/trio"}
    for pair, target in (("asyncio/trio", r"1\.3"), ("blocking/trio", r"1\.5")):
        ratio = rf"SDK\s+{pair} round trip \(target <= {target}\)\s+p50 [\d.]+ / p99 [\d.]+\n"
        assert re.search(ratio, stdout)


def test_ratios_are_over_the_first_driver() -> None:
    by_driver: dict[str, dict[str, Any]] = {
        "trio": {"n": 2, "p50": 2.0, "p99": 4.0},
        "asyncio": {"n": 2, "p50": 2.5, "p99": 4.0},
        "blocking": {"n": 0},
    }
    assert ratios(by_driver) == {"asyncio/trio": {"p50": 1.25, "p99": 1.0},
                                 "blocking/trio": {"p50": None, "p99": None}}
    assert ratios({}) == {}


def test_a_driver_that_fails_fails_the_scenario() -> None:
    proc = subprocess.run(
        [SCHEDD.replace("/schedd", "/python"), "-m", "schedd.devtools.sdk_bench", "asyncio",
         "tcp://127.0.0.1:1", "1", "0"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert proc.returncode != 0 and "ConnectFailed" in proc.stderr


def test_the_table_shows_every_driver_and_ratio() -> None:
    rows = table_rows({"round_trip_ms": {"trio": {"n": 1, "p50": 1.0, "p99": 2.0, "max": 3.0},
                                         "asyncio": {"n": 0}},
                       "ratios": {"asyncio/trio": {"p50": None, "p99": None}}})
    assert rows == [
        ("SDK", "serial submit->done, trio Node and Client", "p50 1.0 / p99 2.0 / max 3.0 ms"),
        ("SDK", "serial submit->done, asyncio Node and Client", "-"),
        ("SDK", "asyncio/trio round trip (target <= 1.3)", "p50 None / p99 None"),
    ]
