"""Dialling with failover and the handshake: a daemon URL to an open :class:`Link`.

Rules of this module:

- A :class:`Dialer` knows the daemon URLs, in order of preference. :meth:`Dialer.dial` makes one
  round: it tries each URL once, starting with the current one, and stays on the first that
  answers ``hello`` with ``welcome``. A failed URL rotates to the next. Errors that another URL or
  a later try cannot fix (:data:`FATAL_HELLO_CODES`: bad token, unknown version...) end the round
  at once; they must reach the user, never be retried forever.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Sequence
from contextlib import AsyncExitStack
from typing import Final

import anyio
import attrs

from schedd.errors import ProtocolError
from schedd.protocol import (
    PROTOCOL_VERSION,
    Error,
    Hello,
    Ping,
    Pong,
    Role,
    Welcome,
    decode,
    encode,
)
from schedd.sdk._conn import Link, RequestFailed
from schedd.sdk._target import BROKEN
from schedd.sdk.connect import ConnectFailed, open_channel
from schedd.transport.channel import Channel, ChannelClosed

__all__ = ["FATAL_HELLO_CODES", "Backoff", "Dialer", "as_url_list"]

log = logging.getLogger(__name__)

FATAL_HELLO_CODES: Final[frozenset[str]] = frozenset(
    {"E_AUTH", "E_VERSION", "E_BAD_FIELD", "E_ROLE", "E_MALFORMED", "E_UNKNOWN_TYPE"}
)
"""``hello`` refusals that no other URL or later try can fix; every other code is retried."""

_MAX_BACKOFF: Final = 5.0


def as_url_list(urls: str | Sequence[str]) -> list[str]:
    """One URL or several, as a non-empty list."""
    result = [urls] if isinstance(urls, str) else list(urls)
    if not result:
        raise ValueError("at least one daemon URL is needed")
    return result


class Backoff:
    """Exponential backoff with jitter, from ``initial`` seconds up to ``maximum``."""

    def __init__(self, initial: float, maximum: float = _MAX_BACKOFF) -> None:
        if not (math.isfinite(initial) and initial >= 0):
            raise ValueError(f"the reconnect delay must be a finite number >= 0, not {initial}")
        self.initial = initial
        self.maximum = max(maximum, initial)
        self._delay = initial

    def reset(self) -> None:
        self._delay = self.initial

    async def sleep(self) -> None:
        # Jitter spreads the reconnects of many peers after a daemon restart.
        await anyio.sleep(self._delay * random.uniform(0.8, 1.2))
        self._delay = min(self.maximum, max(self._delay * 2, 0.05))


class Dialer:
    """Opens links to the first daemon URL that answers, rotating on failure."""

    def __init__(
        self,
        urls: str | Sequence[str],
        *,
        role: Role,
        token: str | None,
        name: str | None,
        connect_timeout: float,
    ) -> None:
        self.urls = as_url_list(urls)
        if not (math.isfinite(connect_timeout) and connect_timeout > 0):
            raise ValueError(f"connect_timeout must be a number > 0, not {connect_timeout}")
        self.connect_timeout = connect_timeout
        # Built now so that a bad token or name fails at construction, not at the first dial.
        # batch: this SDK reads array frames (the daemon may pack what it sends at once)
        self._hello = Hello(role=role, version=PROTOCOL_VERSION, token=token, name=name,
                            batch=True)
        self._index = 0

    @property
    def url(self) -> str:
        """The URL the next dial starts with."""
        return self.urls[self._index]

    def rotate(self) -> None:
        """Make the next URL the first to try (after a failure or a lost connection)."""
        self._index = (self._index + 1) % len(self.urls)

    async def dial(self) -> tuple[AsyncExitStack, Link]:
        """Try every URL once; return the open connection's exit stack and its link.

        The caller enters the stack (``async with stack:``) for as long as it uses the link.
        Raises :class:`RequestFailed` for a ``hello`` refusal (at once if it is fatal), or
        ``ConnectFailed`` when no URL could be reached.
        """
        last: Exception | None = None
        for _ in range(len(self.urls)):
            url = self.url
            try:
                return await self._dial_one(url)
            except RequestFailed as exc:
                if exc.code in FATAL_HELLO_CODES:
                    raise
                log.info("daemon %s refused hello: %s", url, exc)
                last = exc
            except (ChannelClosed, OSError, ProtocolError, *BROKEN) as exc:
                log.info("cannot connect to %s: %s", url, exc)
                last = exc
            self.rotate()
        if isinstance(last, RequestFailed | ConnectFailed):
            raise last
        raise ConnectFailed(f"no daemon reachable at {', '.join(self.urls)}: {last}") from last

    async def dial_retrying(self, backoff: Backoff) -> tuple[AsyncExitStack, Link]:
        """Dial until a URL answers, sleeping ``backoff`` between rounds; fatal errors raise."""
        while True:
            try:
                return await self.dial()
            except RequestFailed as exc:
                if exc.code in FATAL_HELLO_CODES:
                    raise
            except ChannelClosed:  # ConnectFailed
                pass
            await backoff.sleep()

    async def _dial_one(self, url: str) -> tuple[AsyncExitStack, Link]:
        async with AsyncExitStack() as stack:
            channel = await stack.enter_async_context(
                open_channel(url, connect_timeout=self.connect_timeout)
            )
            welcome = await self._handshake(channel, url)
            # Success: hand the open channel to the caller's stack instead of closing it here.
            return stack.pop_all(), Link(channel, url, welcome)
        raise AssertionError("unreachable")  # pragma: no cover  (mypy: the stack may swallow)

    async def _handshake(self, channel: Channel, url: str) -> Welcome:
        with anyio.move_on_after(self.connect_timeout):
            await channel.send(encode(attrs.evolve(self._hello, ref="hello")))
            while True:
                message = decode(await channel.receive())
                if isinstance(message, Welcome):
                    log.debug("connected to %s (instance %s)", url, message.instance)
                    return message
                if isinstance(message, Error):
                    raise RequestFailed.from_error(message)
                if isinstance(message, Ping):
                    await channel.send(encode(Pong(ref=message.ref)))
                    continue
                raise ConnectFailed(f"{url}: expected 'welcome', got '{message.TYPE}'")
        raise ConnectFailed(f"{url}: no welcome within {self.connect_timeout} s")
