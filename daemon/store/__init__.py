"""Redis access: the :class:`Store` interface, its two backends, key names and scripts."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from schedd.store.base import Store
from schedd.store.keys import Keys
from schedd.store.scripts import Scripts

__all__ = ["Keys", "Scripts", "Store", "open_store"]

SCHEMES = (
    "memory://",
    "redis://",
    "rediss://",
    "unix://",
    "redis+sentinel://",
    "redis+cluster://",
)

DEFAULT_NAMESPACE = "schedd"


@asynccontextmanager
async def open_store(
    url: str,
    *,
    connect_timeout: float = 5.0,
    command_timeout: float = 5.0,
    namespace: str = DEFAULT_NAMESPACE,
) -> AsyncIterator[Store]:
    """Open the store a URL names: ``memory://[name]``, ``redis://``, ``rediss://``, ``unix://``,
    ``redis+sentinel://h:p,h:p/master-name`` or ``redis+cluster://h:p,h:p``.

    ``namespace`` matters only to a cluster: the store talks to the master of that namespace's
    slot (every key of a namespace lives in one slot).
    """
    if url.startswith("memory://"):
        from schedd.store.memory import open_memory_store

        async with open_memory_store(url) as memory:
            yield memory
    elif url.startswith(("redis://", "rediss://", "unix://")):
        from schedd.store.redis_store import open_redis_store

        async with open_redis_store(
            url, connect_timeout=connect_timeout, command_timeout=command_timeout
        ) as real:
            yield real
    elif url.startswith("redis+sentinel://"):
        from schedd.store.sentinel import open_sentinel_store

        async with open_sentinel_store(
            url, connect_timeout=connect_timeout, command_timeout=command_timeout
        ) as sentinel:
            yield sentinel
    elif url.startswith("redis+cluster://"):
        from schedd.store.cluster import open_cluster_store

        async with open_cluster_store(
            url,
            namespace=namespace,
            connect_timeout=connect_timeout,
            command_timeout=command_timeout,
        ) as cluster:
            yield cluster
    else:
        raise ValueError(f"unsupported store URL {url!r}: use one of {', '.join(SCHEMES)}")
