"""The embedded store for ``memory://`` URLs: fakeredis with its Lua engine, in process.

It runs the same Lua scripts as a real Redis, so ``schedd run`` works on a machine with no Redis
server. Commands run synchronously in the calling trio task (there is no I/O to wait for), and
replies keep raw RESP shapes (redis-py's reply callbacks are removed) so the layers above see
exactly what :class:`~schedd.store.redis_store.RedisStore` returns.

``memory://`` opens a private server; ``memory://<name>`` shares one named server between every
store opened with that URL in this process (two daemon instances in one test, for example).
Nothing is persisted: the embedded store is for development, demos and tests.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import fakeredis
import redis
import trio

from schedd.errors import StoreUnavailable, error_from_reply
from schedd.store.base import Arg, Store

_SHARED: dict[str, fakeredis.FakeServer] = {}
_BLOCKING = {"BLOCK"}


class MemoryStore(Store):
    """A :class:`Store` over an in-process fakeredis server."""

    def __init__(self, url: str, server: fakeredis.FakeServer) -> None:
        self.url = url
        self._client = fakeredis.FakeStrictRedis(server=server, protocol=2)
        self._client.response_callbacks.clear()
        self._changed = trio.Event()
        self._closed = False

    async def execute(self, *args: Arg) -> Any:
        await trio.lowlevel.checkpoint()
        return self._run(args)

    def _run(self, args: tuple[Arg, ...]) -> Any:
        if self._closed:
            raise StoreUnavailable("store is closed")
        try:
            reply = self._client.execute_command(*args)  # type: ignore[no-untyped-call]
        except redis.exceptions.NoScriptError as exc:
            # redis-py strips the error code; restore it so every backend reads the same.
            raise error_from_reply(f"NOSCRIPT {exc}") from None
        except redis.ResponseError as exc:
            raise error_from_reply(str(exc)) from None
        finally:
            # Wake blocked readers: any command may have appended to a stream they wait on.
            self._changed.set()
            self._changed = trio.Event()
        return reply

    async def execute_blocking(self, *args: Arg) -> Any:
        """Emulate ``XREAD BLOCK ms ...``: poll without BLOCK, wait for the next write."""
        words = [a.upper() if isinstance(a, str) else a for a in args]
        timeout_ms: float | None = None
        plain = list(args)
        if "BLOCK" in words:
            index = words.index("BLOCK")
            timeout_ms = float(args[index + 1])
            del plain[index : index + 2]
        deadline = trio.current_time() + (timeout_ms / 1000 if timeout_ms else float("inf"))
        while True:
            reply = self._run(tuple(plain))
            # The event the next command sets, taken after this poll (which set the previous
            # one itself; waiting on that returned at once, and an idle reader spun a core).
            # No checkpoint since the poll: no write can have come between.
            changed = self._changed
            if reply or timeout_ms is None:
                return reply
            with trio.move_on_at(deadline):
                await changed.wait()
            if trio.current_time() >= deadline:
                return None

    async def aclose(self) -> None:
        self._closed = True
        self._client.close()


@asynccontextmanager
async def open_memory_store(url: str) -> AsyncIterator[MemoryStore]:
    name = url.partition("://")[2].strip("/")
    server = _SHARED.setdefault(name, fakeredis.FakeServer()) if name else fakeredis.FakeServer()
    store = MemoryStore(url, server)
    try:
        yield store
    finally:
        await store.aclose()
