"""The store behind ``redis+cluster://host:port,host:port[/][?password=...]``.

Rules of this module:

* **One namespace, one slot, one master.** Every key of a namespace carries the hash tag
  ``{<namespace>}`` (:mod:`schedd.store.keys`), so every command schedd sends, scripts included,
  belongs to the slot of ``{<namespace>}``. The store therefore talks to exactly one master — the
  one owning that slot — over one pipelined :class:`~schedd.store.redis_store.RedisStore`, and
  the Lua scripts run unchanged. Commands without keys (``PING``, ``SCRIPT LOAD``, ``INFO``) go
  there too, which is where the scripts must be loaded. Spreading load over a cluster means
  giving instances different namespaces whose slots live on different shards
  (docs/deployment.md).
* **Discovery** asks the seeds and every node seen since, in turn, ``CLUSTER SHARDS`` (falling
  back to ``CLUSTER SLOTS`` on Redis < 7) and picks the healthy master of the slot. It runs on
  every (re)connect: after a lost connection (the master died; its replica is promoted within the
  cluster node timeout), and after ``MOVED`` or ``CLUSTERDOWN`` on a live connection.
* ``MOVED`` to another slot than ours means a key of another namespace was used: that is a bug
  and is raised, not followed. ``ASK`` (the slot is being migrated) sends ``ASKING`` and the
  command to the named node on a one-off connection; ``TRYAGAIN`` waits briefly and retries.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any, Final

from redis.crc import key_slot

from schedd.errors import ConfigError, SchedError, StoreResponseError, StoreUnavailable
from schedd.store.keys import check_namespace
from schedd.store.redis_url import _mask_url
from schedd.store.topology import (
    Address,
    FollowingStore,
    Reroute,
    auth_command,
    open_following_store,
    parse_multi_host_url,
    query_once,
)

__all__ = ["ClusterStore", "namespace_slot", "open_cluster_store"]

SCHEME: Final = "redis+cluster"


def namespace_slot(namespace: str) -> int:
    """The cluster slot every key of ``namespace`` lives in."""
    return int(key_slot(("{" + check_namespace(namespace) + "}").encode()))


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _pairs(flat: Sequence[Any]) -> dict[str, Any]:
    return {_text(flat[i]): flat[i + 1] for i in range(0, len(flat) - 1, 2)}


def _from_shards(reply: Sequence[Any], slot: int) -> tuple[Address | None, list[Address]]:
    """(healthy master owning ``slot``, every node address) from ``CLUSTER SHARDS``."""
    master: Address | None = None
    nodes: list[Address] = []
    for shard_flat in reply:
        shard = _pairs(shard_flat)
        ranges = [int(x) for x in shard.get("slots", [])]
        owns = any(ranges[i] <= slot <= ranges[i + 1] for i in range(0, len(ranges) - 1, 2))
        for node_flat in shard.get("nodes", []):
            node = _pairs(node_flat)
            host = _text(node.get("endpoint") or b"")
            if host in ("", "?"):
                host = _text(node.get("ip", b"127.0.0.1"))
            address = (host, int(node["port"]))
            nodes.append(address)
            healthy = _text(node.get("health")) == "online"
            if owns and healthy and _text(node.get("role")) == "master":
                master = address
    return master, nodes


def _from_slots(reply: Sequence[Any], slot: int) -> tuple[Address | None, list[Address]]:
    """The same from ``CLUSTER SLOTS`` (each range: start, end, master, replicas...)."""
    master: Address | None = None
    nodes: list[Address] = []
    for entry in reply:
        start, end, *members = entry
        addresses = [(_text(m[0]), int(m[1])) for m in members]
        nodes += addresses
        if int(start) <= slot <= int(end) and addresses:
            master = addresses[0]
    return master, nodes


class ClusterStore(FollowingStore):
    """The master owning one namespace's slot in a Redis Cluster, followed across failovers."""

    def __init__(
        self,
        url: str,
        *,
        namespace: str,
        connect_timeout: float = 5.0,
        command_timeout: float = 5.0,
    ) -> None:
        masked = _mask_url(url)
        parsed = parse_multi_host_url(url, masked, allowed_params=frozenset())
        if parsed.scheme != SCHEME:
            raise ConfigError([f"store url {masked}: scheme must be {SCHEME}://"])
        if parsed.path:
            raise ConfigError([f"store url {masked}: a cluster URL has no path: /{parsed.path}"])
        if parsed.db:
            raise ConfigError([f"store url {masked}: Redis Cluster has only db 0"])
        self.namespace = namespace
        self.slot = namespace_slot(namespace)
        self.seeds: tuple[Address, ...] = parsed.hosts
        # most recently useful first; seeds stay in so a cluster rebuilt on them is found again
        self.known: list[Address] = list(parsed.hosts)
        super().__init__(
            masked,
            parsed.node_url(),
            connect_timeout=connect_timeout,
            command_timeout=command_timeout,
            auth=auth_command(parsed.username, parsed.password),
        )

    async def resolve_master(self) -> Address:
        problems: list[str] = []
        for address in list(self.known):
            where = f"{address[0]}:{address[1]}"
            try:
                replies = await query_once(
                    address,
                    [*self._auth, ("CLUSTER", "SHARDS")],
                    timeout=self._query_timeout,
                )
                if isinstance(replies[-1], SchedError):
                    replies = await query_once(
                        address,
                        [*self._auth, ("CLUSTER", "SLOTS")],
                        timeout=self._query_timeout,
                    )
                    parse = _from_slots
                else:
                    parse = _from_shards
            except StoreUnavailable as exc:
                problems.append(str(exc))
                continue
            reply = replies[-1]
            if isinstance(reply, SchedError):
                problems.append(f"{where}: {reply}")
                continue
            master, nodes = parse(reply, self.slot)
            for node in nodes:
                if node not in self.known:
                    self.known.append(node)
            if master is None:
                problems.append(f"{where} knows no healthy master for slot {self.slot}")
                continue
            # ask the node that answered first next time
            self.known.remove(address)
            self.known.insert(0, address)
            return master
        raise StoreUnavailable(
            f"no master for slot {self.slot} (namespace {self.namespace!r}) reachable: "
            + "; ".join(problems)
        )

    def reroute(self, error: StoreResponseError) -> Reroute | None:
        text = str(error)
        word, _, rest = text.partition(" ")
        if word in ("MOVED", "ASK"):
            slot_text, _, target = rest.partition(" ")
            if int(slot_text) != self.slot:
                raise StoreResponseError(
                    f"{text}: a key outside namespace {self.namespace!r} (slot {self.slot}) "
                    "was sent to this cluster store"
                ) from error
            host, _, port = target.rpartition(":")
            if word == "ASK":
                return Reroute(f"slot {self.slot} is migrating to {target}", ask=(host, int(port)))
            address = (host or self.redis.address.rpartition(":")[0], int(port))
            if address not in self.known:
                self.known.insert(0, address)
            return Reroute(f"slot {self.slot} moved from {self.redis.address} to {target}")
        if word in ("CLUSTERDOWN", "TRYAGAIN") or text.startswith("READONLY"):
            return Reroute(f"redis at {self.redis.address}: {text[:80]}")
        return None


@asynccontextmanager
async def open_cluster_store(
    url: str,
    *,
    namespace: str,
    connect_timeout: float = 5.0,
    command_timeout: float = 5.0,
) -> AsyncIterator[ClusterStore]:
    """Discover the master of ``namespace``'s slot, connect, and follow it until the block exits.

    Raises ``StoreUnavailable`` at once if no seed answers at open, and ``ConfigError`` for a
    malformed URL.
    """
    store = ClusterStore(
        url, namespace=namespace, connect_timeout=connect_timeout, command_timeout=command_timeout
    )
    async with open_following_store(store):
        yield store
