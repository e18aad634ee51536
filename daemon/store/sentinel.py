"""The store behind ``redis+sentinel://host:port,host:port/master-name[?db=N&password=...]``.

Rules of this module:

* The sentinels are asked, in turn, ``SENTINEL get-master-addr-by-name``; the first answer whose
  server confirms ``ROLE`` = master wins, and the sentinel that gave it is asked first next time.
* One :class:`~schedd.store.redis_store.RedisStore` talks to that master, with the address
  resolved again on every reconnect: after a lost connection (the master died) and after a
  ``READONLY`` reply (the master was demoted while our connection stayed up).
* While no sentinel names a reachable master, commands raise ``StoreUnavailable``; the store
  recovers by itself once the failover is over.

URL: ``password`` / ``username`` (or ``user:password@``) are for the Redis servers;
``sentinel_password`` / ``sentinel_username`` for the sentinels when they require auth.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Final

from schedd.errors import ConfigError, SchedError, StoreResponseError, StoreUnavailable
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

__all__ = ["SentinelStore", "open_sentinel_store"]

SCHEME: Final = "redis+sentinel"
_SENTINEL_PARAMS: Final = frozenset({"sentinel_password", "sentinel_username"})


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class SentinelStore(FollowingStore):
    """The master a set of sentinels names, followed across failovers."""

    def __init__(
        self, url: str, *, connect_timeout: float = 5.0, command_timeout: float = 5.0
    ) -> None:
        masked = _mask_url(url)
        parsed = parse_multi_host_url(url, masked, allowed_params=_SENTINEL_PARAMS)
        if parsed.scheme != SCHEME:
            raise ConfigError([f"store url {masked}: scheme must be {SCHEME}://"])
        if not parsed.path or "/" in parsed.path:
            raise ConfigError([f"store url {masked}: name the master: {SCHEME}://h:p,h:p/NAME"])
        self.master_name = parsed.path
        self.sentinels: list[Address] = list(parsed.hosts)
        self._sentinel_auth = auth_command(
            parsed.params.get("sentinel_username"), parsed.params.get("sentinel_password")
        )
        super().__init__(
            masked,
            parsed.node_url(),
            connect_timeout=connect_timeout,
            command_timeout=command_timeout,
            auth=auth_command(parsed.username, parsed.password),
        )

    async def resolve_master(self) -> Address:
        problems: list[str] = []
        for sentinel in list(self.sentinels):
            where = f"sentinel {sentinel[0]}:{sentinel[1]}"
            try:
                ask = ("SENTINEL", "get-master-addr-by-name", self.master_name)
                replies = await query_once(
                    sentinel, [*self._sentinel_auth, ask], timeout=self._query_timeout
                )
            except StoreUnavailable as exc:
                problems.append(str(exc))
                continue
            reply = replies[-1]
            if isinstance(reply, SchedError) or not reply:
                problems.append(f"{where}: {reply or 'does not know ' + repr(self.master_name)}")
                continue
            address = (_text(reply[0]), int(reply[1]))
            try:
                role = (await query_once(address, [*self._auth, ("ROLE",)],
                                         timeout=self._query_timeout))[-1]
            except StoreUnavailable as exc:
                problems.append(f"{where} names {address[0]}:{address[1]}, but {exc}")
                continue
            if isinstance(role, SchedError) or _text(role[0]) != "master":
                # The sentinels have not finished the failover yet (or AUTH failed).
                problems.append(f"{where} names {address[0]}:{address[1]}, not a master: {role}")
                continue
            if sentinel != self.sentinels[0]:
                self.sentinels.remove(sentinel)
                self.sentinels.insert(0, sentinel)
            return address
        raise StoreUnavailable(
            f"no master {self.master_name!r} reachable via sentinels: " + "; ".join(problems)
        )

    def reroute(self, error: StoreResponseError) -> Reroute | None:
        text = str(error)
        if text.startswith("READONLY") or "-READONLY" in text[:80] or text.startswith(
            "MASTERDOWN"
        ):
            return Reroute(
                f"redis at {self.redis.address} is no longer a master ({text[:60]}); "
                "asking the sentinels again"
            )
        return None


@asynccontextmanager
async def open_sentinel_store(
    url: str, *, connect_timeout: float = 5.0, command_timeout: float = 5.0
) -> AsyncIterator[SentinelStore]:
    """Resolve the master, connect, and follow it until the block exits.

    Raises ``StoreUnavailable`` at once if no master can be reached at open, and
    ``ConfigError`` for a malformed URL.
    """
    store = SentinelStore(url, connect_timeout=connect_timeout, command_timeout=command_timeout)
    async with open_following_store(store):
        yield store
