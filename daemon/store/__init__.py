"""Redis access: the :class:`Store` interface, its two backends, key names and scripts."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from schedd.store.base import Store
from schedd.store.keys import Keys
from schedd.store.scripts import Scripts

__all__ = ["Keys", "Scripts", "Store", "open_store"]

SCHEMES = ("memory://", "redis://", "rediss://", "unix://")


@asynccontextmanager
async def open_store(
    url: str, *, connect_timeout: float = 5.0, command_timeout: float = 5.0
) -> AsyncIterator[Store]:
    """Open the store a URL names: ``memory://[name]``, ``redis://``, ``rediss://``, ``unix://``."""
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
    else:
        raise ValueError(f"unsupported store URL {url!r}: use one of {', '.join(SCHEMES)}")
