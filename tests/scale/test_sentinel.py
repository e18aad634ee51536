"""The ``redis+sentinel://`` store against 1 master, 1 replica and 3 real sentinels."""

from __future__ import annotations

import pytest
import redis
import trio

from schedd.devtools.chaos import ChaosSettings, run_chaos
from schedd.devtools.redis_process import free_port
from schedd.devtools.redis_topologies import RedisSentinels
from schedd.errors import ConfigError, StoreUnavailable
from schedd.store import open_store
from schedd.store.sentinel import SentinelStore

pytestmark = pytest.mark.redis_server


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("redis+sentinel://h:1", "name the master"),
        ("redis+sentinel://h:1/a/b", "name the master"),
        ("redis+sentinel:///m", "no host:port"),
        ("redis+sentinel://h:1/m?db=x", "db must be a number"),
    ],
)
def test_bad_urls_are_config_errors(url: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        SentinelStore(url)


async def test_no_sentinel_reachable_fails_fast_at_open() -> None:
    with trio.fail_after(10), pytest.raises(StoreUnavailable, match="no master 'mymaster'"):
        async with open_store(f"redis+sentinel://127.0.0.1:{free_port()}/mymaster",
                              connect_timeout=1.0):
            pass


async def test_unknown_master_name_is_unavailable(sentinels: RedisSentinels) -> None:
    url = sentinels.url.replace("/mymaster", "/nosuchmaster")
    with trio.fail_after(10), pytest.raises(StoreUnavailable, match="nosuchmaster"):
        async with open_store(url, connect_timeout=1.0):
            pass


async def test_sentinel_failover_is_followed(own_sentinels: RedisSentinels) -> None:
    """``SENTINEL FAILOVER``: the old master is demoted; the store finds the new one."""
    old = own_sentinels.current_master()
    with trio.fail_after(60):
        async with open_store(own_sentinels.url, command_timeout=2.0) as store:
            assert isinstance(store, SentinelStore)
            assert store.redis.address == f"127.0.0.1:{old.port}"
            await store.execute("SET", "{t}:k", "before")
            await store.execute("WAIT", 1, 1000)
            with redis.Redis(port=own_sentinels.sentinel_ports[0]) as sentinel:
                sentinel.execute_command("SENTINEL", "FAILOVER", own_sentinels.name)
            new = await trio.to_thread.run_sync(own_sentinels.wait_failover, old)
            while True:  # writes fail (StoreUnavailable) or are followed, never lost silently
                try:
                    await store.execute("SET", "{t}:k", "after")
                except StoreUnavailable:
                    await trio.sleep(0.05)
                    continue
                if store.redis.address == f"127.0.0.1:{new.port}":
                    break
                await trio.sleep(0.05)
            assert await store.execute("GET", "{t}:k") == b"after"


async def test_daemons_carry_on_when_the_master_is_killed(
    own_sentinels: RedisSentinels,
) -> None:
    settings = ChaosSettings(nodes=12, jobs=400, instances=2, rate=100.0, kill_instance=False,
                             kill_nodes=0.0, restart_node=False, kill_redis=True, settle=40.0)
    with trio.fail_after(90):
        report = await run_chaos(own_sentinels.url, settings, topology=own_sentinels,
                                 topology_name="sentinel")
    print("\n".join(report.lines()))
    assert report.redis_recovery is not None
    assert report.accepted == settings.jobs
    assert report.ok, report.lines()
