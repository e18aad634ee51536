"""The one small async interface over Redis that the rest of schedd uses.

Two implementations: :class:`schedd.store.redis_store.RedisStore` (a trio-native RESP connection
with automatic pipelining, for ``redis://``, ``rediss://`` and ``unix://``) and
:class:`schedd.store.memory.MemoryStore` (fakeredis with Lua, for ``memory://``). Everything above
this layer (scripts, core, queries) is written against :class:`Store` only.

Replies keep Redis's shapes: bulk strings are ``bytes``, integers ``int``, arrays ``list``, nil
``None``. Error replies are raised as exceptions via :func:`schedd.errors.error_from_reply`.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Any, TypeAlias

Arg: TypeAlias = bytes | str | int | float


class Store(abc.ABC):
    """An open connection to one Redis deployment."""

    url: str

    @abc.abstractmethod
    async def execute(self, *args: Arg) -> Any:
        """Send one command and return its reply.

        Concurrent callers are pipelined: their commands go out together and replies are matched
        in order. Raises :class:`~schedd.errors.StoreUnavailable` quickly when Redis is down.
        """

    async def execute_many(self, commands: Sequence[Sequence[Arg]]) -> list[Any]:
        """Send several commands back to back; return their replies (errors are raised)."""
        return [await self.execute(*command) for command in commands]

    @abc.abstractmethod
    async def execute_blocking(self, *args: Arg) -> Any:
        """Run a blocking command (``XREAD BLOCK``) on a connection of its own.

        Cancelling the caller is safe: the blocking connection is discarded and reopened.
        """

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Close every connection. Further calls raise :class:`~schedd.errors.StoreUnavailable`."""
