"""Throw-away Redis Cluster and Sentinel set-ups on free loopback ports (tests, chaos runs).

Real ``redis-server`` processes only (``redis-server --sentinel`` for the sentinels, ``redis-cli
--cluster create`` to form the cluster); nothing here stands in for Redis. Like
:mod:`schedd.devtools.redis_process`, nothing touches a Redis these classes did not start.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import redis

from schedd.devtools.redis_process import REDIS_SERVER, RedisServer, free_port

__all__ = ["REDIS_CLI", "RedisCluster", "RedisSentinels"]

REDIS_CLI = shutil.which("redis-cli")


# Diskless full syncs start 5 s after a replica asks by default; a replica that has not synced
# cannot be promoted, so a kill in that window would lose the shard.
_FAST_SYNC = ["--repl-diskless-sync-delay", "0"]


def _int(value: Any) -> int:
    return int(value.decode() if isinstance(value, bytes) else value)


def _client(port: int) -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=port, socket_timeout=2, socket_connect_timeout=2)


def _wait(what: str, check: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except (redis.RedisError, OSError) as exc:
            last = exc
        time.sleep(0.05)
    raise RuntimeError(f"timed out waiting for {what}" + (f": {last}" if last else ""))


def kill(server: RedisServer) -> None:
    """``kill -9``: no shutdown, no final AOF flush, no goodbye to replicas."""
    if server.proc is not None and server.proc.poll() is None:
        server.proc.send_signal(signal.SIGKILL)
        server.proc.wait()
    server.proc = None


class RedisCluster:
    """``masters`` masters with ``replicas`` replicas each, formed by ``redis-cli --cluster``."""

    def __init__(self, masters: int = 3, replicas: int = 1, node_timeout_ms: int = 1000) -> None:
        if REDIS_SERVER is None or REDIS_CLI is None:
            raise RuntimeError("redis-server and redis-cli are needed for a cluster")
        self.node_timeout_ms = node_timeout_ms
        self.replicas = replicas
        self.nodes = [
            RedisServer(
                extra_args=[
                    "--cluster-enabled", "yes",
                    "--cluster-config-file", "nodes.conf",
                    "--cluster-node-timeout", str(node_timeout_ms),
                    # the default bus port (port + 10000) may be taken or beyond 65535
                    "--cluster-port", str(free_port()),
                    # a node that lost its slots' master keeps answering reads of other slots
                    "--cluster-require-full-coverage", "no",
                    *_FAST_SYNC,
                ]
            )
            for _ in range(masters * (1 + replicas))
        ]

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes[:3])

    def start(self) -> RedisCluster:
        assert REDIS_CLI is not None
        for node in self.nodes:
            node.start()
        subprocess.run(
            [
                REDIS_CLI, "--cluster", "create",
                *[f"127.0.0.1:{n.port}" for n in self.nodes],
                "--cluster-replicas", str(self.replicas), "--cluster-yes",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=60,
        )
        self.wait_ok()
        return self

    def live(self) -> list[RedisServer]:
        return [n for n in self.nodes if n.proc is not None and n.proc.poll() is None]

    def wait_ok(self, timeout: float = 30.0) -> None:
        """Until every live node reports ``cluster_state:ok`` and every master has its replicas
        connected (so a kill right after cannot lose the whole data set)."""

        def ok() -> bool:
            for node in self.live():
                with _client(node.port) as c:
                    if c.execute_command("CLUSTER", "INFO").find(b"cluster_state:ok") < 0:
                        return False
                    info = c.info("replication")
                    if (
                        info["role"] == "master"
                        and self._owns_slots(node.port)
                        and int(info.get("connected_slaves", 0)) < self._expected_replicas()
                    ):
                        return False
                    if info["role"] == "slave" and info.get("master_link_status") != "up":
                        return False
            return True

        _wait("cluster_state:ok", ok, timeout)

    def _expected_replicas(self) -> int:
        # after a kill the shard may be one short until the dead node comes back
        return 1 if self.replicas and len(self.live()) == len(self.nodes) else 0

    def _owns_slots(self, port: int) -> bool:
        with _client(port) as c:
            myself = c.execute_command("CLUSTER", "MYID")
            for entry in c.execute_command("CLUSTER", "SLOTS"):
                if entry[2][2] == myself:
                    return True
        return False

    def master_of(self, slot: int) -> RedisServer:
        """The node that currently serves ``slot``, asked of any live node."""
        for node in self.live():
            try:
                with _client(node.port) as c:
                    for entry in c.execute_command("CLUSTER", "SLOTS"):
                        if int(entry[0]) <= slot <= int(entry[1]):
                            port = int(entry[2][1])
                            return next(n for n in self.nodes if n.port == port)
            except redis.RedisError:
                continue
        raise RuntimeError(f"no live node knows slot {slot}")

    def wait_failover(self, slot: int, old: RedisServer, timeout: float = 30.0) -> RedisServer:
        """Until a live node other than ``old`` is master of ``slot``; return it."""
        found: list[RedisServer] = []

        def promoted() -> bool:
            master = self.master_of(slot)
            if master is old or master.proc is None:
                return False
            with _client(master.port) as c:
                if c.info("replication")["role"] != "master":
                    return False
            found.append(master)
            return True

        _wait(f"a new master for slot {slot}", promoted, timeout)
        return found[-1]

    def stop(self) -> None:
        for node in self.nodes:
            node.__exit__()

    def __enter__(self) -> RedisCluster:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()


class RedisSentinels:
    """One master, ``replicas`` replicas and ``sentinels`` sentinels watching ``name``."""

    def __init__(
        self,
        name: str = "mymaster",
        replicas: int = 1,
        sentinels: int = 3,
        down_after_ms: int = 1000,
    ) -> None:
        if REDIS_SERVER is None:
            raise RuntimeError("redis-server is not installed")
        self.name = name
        self.down_after_ms = down_after_ms
        self.master = RedisServer(extra_args=_FAST_SYNC)
        self.replicas = [
            RedisServer(
                extra_args=["--replicaof", "127.0.0.1", str(self.master.port), *_FAST_SYNC]
            )
            for _ in range(replicas)
        ]
        self.sentinel_ports = [free_port() for _ in range(sentinels)]
        self.dir = Path(tempfile.mkdtemp(prefix="schedd-sentinel-"))
        self.sentinel_procs: list[subprocess.Popen[bytes]] = []

    @property
    def servers(self) -> list[RedisServer]:
        return [self.master, *self.replicas]

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports)
        return f"redis+sentinel://{hosts}/{self.name}"

    def start(self) -> RedisSentinels:
        assert REDIS_SERVER is not None
        for server in self.servers:
            server.start()
        for port in self.sentinel_ports:
            conf = self.dir / f"sentinel-{port}.conf"
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {self.dir}\n"
                f"logfile {self.dir / f'sentinel-{port}.log'}\n"
                f"sentinel monitor {self.name} 127.0.0.1 {self.master.port} 2\n"
                f"sentinel down-after-milliseconds {self.name} {self.down_after_ms}\n"
                f"sentinel failover-timeout {self.name} 10000\n"
                f"sentinel parallel-syncs {self.name} 1\n"
            )
            self.sentinel_procs.append(
                subprocess.Popen(
                    [REDIS_SERVER, str(conf), "--sentinel"],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        self.wait_ready()
        return self

    def current_master(self) -> RedisServer:
        with _client(self.sentinel_ports[0]) as c:
            _host, port = c.execute_command("SENTINEL", "get-master-addr-by-name", self.name)
        return next(s for s in self.servers if s.port == int(port))

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Until every sentinel sees the master, the replicas and the other sentinels."""

        def ready() -> bool:
            for port in self.sentinel_ports:
                with _client(port) as c:
                    info = dict(c.execute_command("SENTINEL", "MASTER", self.name))
                    # redis-py returns the flat reply as a dict already for some versions
                    replicas = _int(info.get(b"num-slaves", info.get("num-slaves", 0)))
                    others = _int(info.get(b"num-other-sentinels",
                                           info.get("num-other-sentinels", 0)))
                    if replicas < len(self.replicas) or others < len(self.sentinel_ports) - 1:
                        return False
            for server in self.servers:
                if server.proc is None or server is self.current_master():
                    continue
                with _client(server.port) as c:
                    if c.info("replication").get("master_link_status") != "up":
                        return False
            return True

        _wait("sentinels to see the whole set-up", ready, timeout)

    def wait_failover(self, old: RedisServer, timeout: float = 30.0) -> RedisServer:
        found: list[RedisServer] = []

        def moved() -> bool:
            master = self.current_master()
            if master is old or master.proc is None:
                return False
            with _client(master.port) as c:
                if c.info("replication")["role"] != "master":
                    return False
            found.append(master)
            return True

        _wait("the sentinels to promote a replica", moved, timeout)
        return found[-1]

    def stop(self) -> None:
        for proc in self.sentinel_procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        self.sentinel_procs = []
        for server in self.servers:
            server.__exit__()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> RedisSentinels:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()
