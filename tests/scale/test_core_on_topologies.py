"""Every core job, node, reaper and event test, run against Redis Cluster and Sentinel.

The test functions are the ones in tests/core (imported, so there is one copy of each); this
folder's conftest overrides ``store`` with a ``redis+cluster://`` and a ``redis+sentinel://``
store, so every Lua script runs on both, unchanged.
"""

from __future__ import annotations

import pytest

from tests.core import test_events, test_jobs, test_nodes, test_reaper

pytestmark = pytest.mark.redis_server

for _module in (test_jobs, test_nodes, test_reaper, test_events):
    for _name, _test in vars(_module).items():
        if _name.startswith("test_") and callable(_test):
            globals()[f"{_name}__{_module.__name__.rpartition('.')[2]}"] = _test
