"""Real Redis Cluster and Sentinel set-ups for the scale-out tests (started here, on free ports).

Shared set-ups (``cluster``, ``sentinels``) are for tests that leave the topology as they found
it; a test that kills a master starts its own.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
import redis

from schedd.devtools.redis_process import REDIS_SERVER
from schedd.devtools.redis_topologies import REDIS_CLI, RedisCluster, RedisSentinels
from schedd.store import open_store
from schedd.store.base import Store

NAMESPACE = "t"  # the namespace tests/core/helpers.make_core uses


def need_redis() -> None:
    if REDIS_SERVER is None or REDIS_CLI is None:
        pytest.skip("redis-server / redis-cli are not installed (CI installs them)")


@pytest.fixture(scope="session")
def cluster() -> Iterator[RedisCluster]:
    need_redis()
    with RedisCluster() as started:
        yield started


@pytest.fixture(scope="session")
def sentinels() -> Iterator[RedisSentinels]:
    need_redis()
    with RedisSentinels() as started:
        yield started


@pytest.fixture
def own_cluster() -> Iterator[RedisCluster]:
    need_redis()
    with RedisCluster() as started:
        yield started


@pytest.fixture
def own_sentinels() -> Iterator[RedisSentinels]:
    need_redis()
    with RedisSentinels() as started:
        yield started


def flush_masters(ports: list[int]) -> None:
    for port in ports:
        with redis.Redis(port=port, socket_timeout=2) as client:
            if client.info("replication")["role"] == "master":
                client.flushall()


@pytest.fixture(params=["cluster", "sentinel"])
def topology_url(request: pytest.FixtureRequest) -> str:
    if request.param == "cluster":
        c: RedisCluster = request.getfixturevalue("cluster")
        flush_masters([n.port for n in c.live()])
        return c.url
    s: RedisSentinels = request.getfixturevalue("sentinels")
    flush_masters([s.current_master().port])
    return s.url


@pytest.fixture
async def store(topology_url: str) -> AsyncIterator[Store]:
    """Overrides tests/conftest.py's ``store``: the core suites run against both topologies."""
    async with open_store(topology_url, namespace=NAMESPACE) as opened:
        yield opened
