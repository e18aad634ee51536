"""What the Sentinel and Cluster stores share: multi-host URLs and one-shot discovery queries.

Rules of this module:

* Discovery never uses the shared, pipelined connection: each question (``SENTINEL
  get-master-addr-by-name``, ``CLUSTER SHARDS``, ``ROLE``) opens a short-lived connection of its
  own, bounded by a timeout, so a dead or slow node costs one timeout and never blocks a caller.
* Every failure to learn an address becomes :class:`~schedd.errors.StoreUnavailable`: while no
  master is known the store is unavailable, exactly as if Redis were down, and callers retry.
"""

from __future__ import annotations

import abc
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any, Final, TypeVar
from urllib.parse import parse_qsl, quote, unquote, urlsplit

import attrs
import hiredis
import trio

from schedd.errors import (
    ConfigError,
    SchedError,
    StoreResponseError,
    StoreUnavailable,
    error_from_reply,
)
from schedd.store.base import Arg, Store
from schedd.store.redis_store import RedisStore, open_redis_store
from schedd.store.resp import _INCOMPLETE, _STREAM_ERRORS, _describe, _encode, _read_reply

__all__ = [
    "Address",
    "FollowingStore",
    "MultiHostUrl",
    "Reroute",
    "open_following_store",
    "parse_multi_host_url",
    "query_once",
]

logger = logging.getLogger(__name__)

Address = tuple[str, int]
_T = TypeVar("_T")
_POLL: Final = 0.02


@attrs.frozen
class MultiHostUrl:
    """A ``redis+sentinel://`` or ``redis+cluster://`` URL taken apart."""

    scheme: str
    hosts: tuple[Address, ...]
    path: str
    username: str | None
    password: str | None
    db: int
    params: dict[str, str]

    def node_url(self) -> str:
        """A ``redis://`` URL carrying the credentials and db for the data nodes (no host)."""
        auth = ""
        if self.password is not None:
            auth = f"{quote(self.username or '', safe='')}:{quote(self.password, safe='')}@"
        return f"redis://{auth}resolved-at-connect/{self.db}"


def _host_port(text: str, url: str) -> Address:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ConfigError([f"store url {url}: {text!r} is not host:port"])
    return host.strip("[]"), int(port)


def parse_multi_host_url(
    url: str, masked: str, *, allowed_params: frozenset[str]
) -> MultiHostUrl:
    """Split ``scheme://[user:password@]h1:p1,h2:p2/path?query``; errors name the masked URL."""
    parts = urlsplit(url)
    netloc = parts.netloc
    userinfo, at, hostlist = netloc.rpartition("@")
    if not at:
        hostlist, userinfo = netloc, ""
    hosts = tuple(_host_port(item, masked) for item in hostlist.split(",") if item)
    if not hosts:
        raise ConfigError([f"store url {masked}: no host:port given"])
    username: str | None = None
    password: str | None = None
    if userinfo:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    params = dict(parse_qsl(parts.query, keep_blank_values=True))
    unknown = sorted(set(params) - allowed_params - {"password", "username", "db"})
    if unknown:
        raise ConfigError(
            [f"store url {masked}: unsupported parameter {key!r}" for key in unknown]
        )
    password = params.pop("password", password)
    username = params.pop("username", username)
    db_text = params.pop("db", "0")
    if not db_text.isdigit():
        raise ConfigError([f"store url {masked}: db must be a number, not {db_text!r}"])
    return MultiHostUrl(
        scheme=parts.scheme,
        hosts=hosts,
        path=parts.path.strip("/"),
        username=username,
        password=password,
        db=int(db_text),
        params=params,
    )


def auth_command(username: str | None, password: str | None) -> list[tuple[Arg, ...]]:
    if password is None:
        return []
    return [("AUTH", username, password) if username else ("AUTH", password)]


async def query_once(
    address: Address,
    commands: Sequence[Sequence[Arg]],
    *,
    timeout: float,  # noqa: ASYNC109  # per-host bound in discovery loops, reported as StoreUnavailable
) -> list[Any]:
    """Send ``commands`` on a fresh connection, return every reply, close.

    Error replies come back as exception values (the caller decides); an unreachable, slow or
    broken peer raises ``StoreUnavailable``.
    """
    host, port = address
    try:
        with trio.fail_after(timeout):
            stream = await trio.open_tcp_stream(host, port)
            try:
                reader = hiredis.Reader(replyError=error_from_reply, notEnoughData=_INCOMPLETE)
                await stream.send_all(b"".join(_encode(command) for command in commands))
                return [await _read_reply(stream, reader) for _ in commands]
            finally:
                await trio.aclose_forcefully(stream)
    except trio.TooSlowError:
        raise StoreUnavailable(f"{host}:{port} did not answer within {timeout:g} s") from None
    except _STREAM_ERRORS as exc:
        raise StoreUnavailable(f"cannot reach {host}:{port}: {_describe(exc)}") from exc


def first_error(replies: Sequence[Any]) -> SchedError | None:
    for reply in replies:
        if isinstance(reply, SchedError):
            return reply
    return None


@attrs.frozen
class Reroute:
    """What to do about an error reply that means "not here": reconnect elsewhere (``ask`` is
    None), or send this one command to ``ask`` preceded by ``ASKING`` (a slot in migration)."""

    reason: str
    ask: Address | None = None


class FollowingStore(Store, abc.ABC):
    """A :class:`RedisStore` whose master may move, plus the rules for following it.

    Subclasses resolve the master's address (:meth:`resolve_master`, the RedisStore's
    ``resolve_address``) and classify error replies (:meth:`reroute`). A reply such as
    ``READONLY`` or ``MOVED`` means the command did not run, so it is retried here, on the new
    master, until ``command_timeout``; after that the caller gets ``StoreUnavailable``. A lost
    connection is the RedisStore's business: it reconnects with backoff, resolving again.
    """

    def __init__(
        self,
        masked: str,
        node_url: str,
        *,
        connect_timeout: float,
        command_timeout: float,
        auth: list[tuple[Arg, ...]],
    ) -> None:
        self.url = masked
        self.node_url = node_url
        self.connect_timeout = connect_timeout
        self.command_timeout = command_timeout
        self._auth = auth
        # one discovery query may not eat the whole connect budget: other hosts deserve a try
        self._query_timeout = min(1.0, connect_timeout / 2)
        self.redis: RedisStore  # set by open_following_store

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.url}>"

    @abc.abstractmethod
    async def resolve_master(self) -> Address:
        """The address of the master to use now; ``StoreUnavailable`` if none is known."""

    @abc.abstractmethod
    def reroute(self, error: StoreResponseError) -> Reroute | None:
        """How to follow ``error``, or None if it is an ordinary error for the caller."""

    # -- Store -------------------------------------------------------------------------------

    async def execute(self, *args: Arg) -> Any:
        generation = self.redis.generation
        try:
            return await self.redis.execute(*args)
        except StoreResponseError as exc:
            return await self._follow(exc, generation, args, lambda: self.redis.execute(*args))

    async def execute_many(self, commands: Sequence[Sequence[Arg]]) -> list[Any]:
        generation = self.redis.generation
        try:
            return await self.redis.execute_many(commands)
        except StoreResponseError as exc:
            route = self.reroute(exc)
            if route is not None and route.ask is not None:
                # A slot in migration answers per key; only single commands can follow ASK.
                return [await self.execute(*command) for command in commands]
            return await self._follow(
                exc, generation, None, lambda: self.redis.execute_many(commands)
            )

    async def execute_blocking(self, *args: Arg) -> Any:
        generation = self.redis.generation
        try:
            return await self.redis.execute_blocking(*args)
        except StoreResponseError as exc:
            return await self._follow(
                exc, generation, None, lambda: self.redis.execute_blocking(*args)
            )

    async def aclose(self) -> None:
        await self.redis.aclose()

    # -- following -----------------------------------------------------------------------------

    async def _follow(
        self,
        error: StoreResponseError,
        generation: int,
        args: Sequence[Arg] | None,
        again: Callable[[], Awaitable[_T]],
    ) -> _T:
        deadline = trio.current_time() + self.command_timeout
        while True:
            route = self.reroute(error)
            if route is None:
                raise error
            if route.ask is not None:
                if args is None:
                    raise StoreUnavailable(f"{route.reason}; try again") from error
                return await self._ask(route.ask, args)  # type: ignore[no-any-return]
            self.redis.reconnect(route.reason, generation=generation)
            await trio.sleep(_POLL)
            while not self.redis.connected:
                if trio.current_time() >= deadline:
                    raise StoreUnavailable(
                        f"{route.reason}; no master reachable within "
                        f"{self.command_timeout:g} s"
                    ) from error
                await trio.sleep(_POLL)
            generation = self.redis.generation
            try:
                return await again()
            except StoreResponseError as exc:
                error = exc
            if trio.current_time() >= deadline:
                raise StoreUnavailable(f"{route.reason}; still redirected") from error

    async def _ask(self, address: Address, args: Sequence[Arg]) -> Any:
        replies = await query_once(
            address,
            [*self._auth, ("ASKING",), tuple(args)],
            timeout=self.command_timeout,
        )
        failed = first_error(replies)
        if failed is not None:
            raise failed
        return replies[-1]


@asynccontextmanager
async def open_following_store(store: FollowingStore) -> AsyncIterator[FollowingStore]:
    """Connect (failing fast, like :func:`~schedd.store.redis_store.open_redis_store`, which
    does the work) and keep following the master until the block exits."""
    async with open_redis_store(
        store.node_url,
        connect_timeout=store.connect_timeout,
        command_timeout=store.command_timeout,
        resolve_address=store.resolve_master,
    ) as redis:
        redis.url = store.url
        store.redis = redis
        yield store
