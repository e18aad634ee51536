"""The ``redis+cluster://`` store against a real 3-master, 3-replica Redis Cluster."""

from __future__ import annotations

import contextlib

import pytest
import redis
import trio

from schedd.devtools.chaos import ChaosSettings, run_chaos
from schedd.devtools.redis_topologies import RedisCluster
from schedd.errors import ConfigError, StoreResponseError
from schedd.store import open_store
from schedd.store.cluster import ClusterStore, namespace_slot
from schedd.store.keys import Keys

pytestmark = pytest.mark.redis_server


def test_namespace_slot_is_the_slot_of_every_key() -> None:
    from redis.crc import key_slot

    keys = Keys("tenant-a")
    slot = namespace_slot("tenant-a")
    assert {key_slot(k.encode()) for k in (keys.job("x"), keys.node("{y}"), keys.alive)} == {slot}


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("redis+cluster://", "no host:port"),
        ("redis+cluster://h:1/2", "no path"),
        ("redis+cluster://h:1?db=1", "only db 0"),
        ("redis+cluster://h:x", "not host:port"),
        ("redis+cluster://h:1?bogus=1", "unsupported parameter 'bogus'"),
    ],
)
def test_bad_urls_are_config_errors(url: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        ClusterStore(url, namespace="t")


async def test_commands_go_to_the_master_of_the_namespace_slot(cluster: RedisCluster) -> None:
    with trio.fail_after(20):
        async with open_store(cluster.url, namespace="tenant-a") as store:
            assert isinstance(store, ClusterStore)
            master = cluster.master_of(namespace_slot("tenant-a"))
            assert store.redis.address == f"127.0.0.1:{master.port}"
            assert await store.execute("PING") == b"PONG"
            key = Keys("tenant-a").counts
            await store.execute("HSET", key, "x", 1)
            assert await store.execute_many([("HGET", key, "x"), ("HLEN", key)]) == [b"1", 1]
            # a key of another namespace is a bug, reported, not followed
            with pytest.raises(StoreResponseError, match="outside namespace"):
                await store.execute("GET", Keys("zz-other-namespace-7").counts)


async def test_manual_failover_moves_the_slot_and_the_store_follows(
    own_cluster: RedisCluster,
) -> None:
    """A graceful ``CLUSTER FAILOVER`` keeps our connection open: the old master answers MOVED."""
    slot = namespace_slot("t")
    old = own_cluster.master_of(slot)
    with trio.fail_after(60):
        async with open_store(own_cluster.url, namespace="t", command_timeout=5.0) as store:
            assert isinstance(store, ClusterStore)
            await store.execute("SET", "{t}:k", "before")
            replica = next(
                n for n in own_cluster.live()
                if n is not old and redis.Redis(port=n.port).info("replication").get(
                    "master_port") == old.port
            )
            # Redis aborts a manual failover that does not complete in time (a vote or the
            # replica's catch-up delayed on a loaded machine) and does not retry it: ask again
            for attempt in range(3):
                # (a ResponseError: the previous attempt completed meanwhile, it is a master)
                with contextlib.suppress(redis.ResponseError):
                    redis.Redis(port=replica.port).execute_command(  # type: ignore[no-untyped-call]
                        "CLUSTER", "FAILOVER")
                try:
                    await trio.to_thread.run_sync(own_cluster.wait_failover, slot, old, 10.0)
                    break
                except RuntimeError:
                    if attempt == 2:
                        raise
            assert await store.execute("GET", "{t}:k") == b"before"
            await store.execute("SET", "{t}:k", "after")
            assert store.redis.address == f"127.0.0.1:{replica.port}"


async def test_daemons_carry_on_when_the_slot_master_is_killed(own_cluster: RedisCluster) -> None:
    """2 daemons, nodes and clients on a cluster; kill -9 of the namespace's master mid-load."""
    settings = ChaosSettings(nodes=12, jobs=400, instances=2, rate=100.0, kill_instance=False,
                             kill_nodes=0.0, restart_node=False, kill_redis=True, settle=40.0)
    with trio.fail_after(90):
        report = await run_chaos(own_cluster.url, settings, topology=own_cluster,
                                 topology_name="cluster")
    print("\n".join(report.lines()))
    assert report.redis_recovery is not None
    assert report.accepted == settings.jobs
    assert report.ok, report.lines()
