"""What the node and client SDKs share: dialling with failover, the handshake, and one link.

Rules of this module:

- A :class:`Dialer` knows the daemon URLs, in order of preference. :meth:`Dialer.dial` makes one
  round: it tries each URL once, starting with the current one, and stays on the first that
  answers ``hello`` with ``welcome``. A failed URL rotates to the next. Errors that another URL or
  a later try cannot fix (:data:`FATAL_HELLO_CODES`: bad token, unknown version...) end the round
  at once; they must reach the user, never be retried forever.
- A :class:`Link` is one connection after ``welcome``. Exactly one task reads it
  (:meth:`Link.serve`): it answers the daemon's ``ping``, hands a reply to the request waiting for
  its ``ref`` and passes every other message to the SDK's ``on_message``. A message that cannot be
  decoded, or that ``on_message`` fails on, is logged and skipped: one bad message never ends the
  reader. Only the end of the connection does, and it wakes every waiting request with
  :class:`LinkLost`.
- Refs are generated here, per link; a reply can only match a request of its own connection.
- Binary attachments: a message the daemon sends with attachments is handed on once its
  attachment frames are in (:mod:`schedd.protocol.attachments`); ``on_message`` (or the
  requester, for a reply) takes their bytes with :meth:`Link.take_attachments`. Frames that do not
  match their declaration end the connection, as the daemon's own rule.
- Replies are matched by ``ref``; requests without a reply on success (``cancel``,
  ``unavailable``) are confirmed by a ``ping`` sent after them (the protocol's order rule: the
  ``pong`` comes after the daemon has handled, or refused, everything sent before).
- Sends need no lock here: every channel the SDK opens keeps each message whole and the
  messages in the order of the ``send`` calls, whichever tasks make them (the trio channels
  through :func:`schedd.transport.sockets.send_in_order`, the asyncio ones under their FIFO
  lock), and a message and its attachments go in one ``send_many``.
- A message goes out with the channel's ``write_nowait`` when it can (a trio channel with no
  send in progress and room in the socket): one write and no trip through the scheduler, a
  cancellation point but not a schedule point (a request waits for its reply next; a task
  that only sends yields in its next wait). Otherwise, and under asyncio, with ``send``.
- A request's ``ref`` is written as the message is encoded
  (:func:`schedd.protocol.codec.encode_with_ref`), never by a copy of the message; a message
  that carries attachments is copied with :func:`with_ref`, which does not check the message
  again.
- Concurrency is anyio's (task groups, events, cancel scopes), so a link works under trio and
  asyncio alike; a request's event is the running loop's own (:mod:`schedd.sdk._native`).
"""

from __future__ import annotations

import itertools
import logging
import math
import random
import re
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AsyncExitStack
from typing import Any, Final, NoReturn, TypeVar

import anyio
import attrs
from trio.lowlevel import checkpoint_if_cancelled

from schedd.errors import ProtocolError, SchedError
from schedd.protocol import (
    PROTOCOL_VERSION,
    Error,
    Hello,
    Message,
    Ping,
    Pong,
    Role,
    Welcome,
    decode,
    encode,
)
from schedd.protocol.attachments import (
    SDK_MAX_ATTACHMENT,
    AttachmentError,
    Collector,
    declared,
    message_frames,
)
from schedd.protocol.codec import encode_with_ref
from schedd.sdk._native import event
from schedd.sdk._target import BROKEN
from schedd.sdk.connect import ConnectFailed, open_channel
from schedd.transport.channel import Channel, ChannelClosed

__all__ = [
    "E_CLIENT_CLOSED",
    "FATAL_HELLO_CODES",
    "Backoff",
    "Dialer",
    "Link",
    "LinkLost",
    "RequestFailed",
    "as_url_list",
    "reraise_sole",
    "with_ref",
]

log = logging.getLogger(__name__)

FATAL_HELLO_CODES: Final[frozenset[str]] = frozenset(
    {"E_AUTH", "E_VERSION", "E_BAD_FIELD", "E_ROLE", "E_MALFORMED", "E_UNKNOWN_TYPE"}
)
"""``hello`` refusals that no other URL or later try can fix; every other code is retried."""

E_CLIENT_CLOSED: Final = "E_CLIENT_CLOSED"
"""SDK-local code (never on the wire): the client was closed before the answer came."""

_MAX_BACKOFF: Final = 5.0
_RETRY_AFTER_RE: Final = re.compile(r"retry_after_ms=(\d+)")


class RequestFailed(SchedError):
    """The daemon answered a request with ``error`` (or the SDK gave up on it).

    ``code`` is the protocol's error code (``E_AUTH``, ``E_NO_JOB``...); the SDK itself uses
    ``E_UNAVAILABLE`` when the connection was lost before the reply and cannot be retried, and
    :data:`E_CLIENT_CLOSED` when the client was closed.
    """

    def __init__(self, code: str, message: str = "", *, job_id: str | None = None) -> None:
        super().__init__(f"{code}: {message}" if message else code)
        self.code = code
        self.message = message
        self.job_id = job_id

    @property
    def retry_after(self) -> float | None:
        """Seconds the daemon asks to wait before sending the request again (``E_RATE_LIMITED``
        ends its message with ``retry_after_ms=<ms>``); None when it names none."""
        found = _RETRY_AFTER_RE.search(self.message)
        return int(found.group(1)) / 1000 if found else None

    @classmethod
    def from_error(cls, error: Error) -> RequestFailed:
        return cls(error.code, error.message, job_id=error.job_id)

    def copy(self) -> RequestFailed:
        """A fresh exception with the same fields (raising one instance twice chains tracebacks)."""
        return RequestFailed(self.code, self.message, job_id=self.job_id)


class LinkLost(Exception):
    """The connection ended before the reply came (internal; the SDKs map it)."""


def reraise_sole(group: BaseExceptionGroup[BaseException]) -> NoReturn:
    """Raise the one exception a nursery wrapped, as it was; the group if it holds several.

    The SDKs' background tasks never raise, so a group coming out of their nursery holds the
    caller's own exception (or a cancellation), which callers expect unwrapped.
    """
    if len(group.exceptions) != 1:
        raise group
    sole = group.exceptions[0]
    context = sole.__context__
    try:
        raise sole
    finally:
        sole.__context__ = context  # not the group left behind
        del sole, context


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


_M = TypeVar("_M", bound=Message)
_FIELDS: dict[type[Any], tuple[str, ...]] = {}
_set: Final = object.__setattr__


def with_ref(message: _M, ref: str) -> _M:
    """``attrs.evolve(message, ref=ref)`` without running the class's validators again: the
    message was checked when it was built, and ``ref`` is one of :meth:`Link.next_ref` (an
    id by construction)."""
    cls: type[_M] = type(message)
    names = _FIELDS.get(cls)
    if names is None:
        names = _FIELDS[cls] = tuple(field.name for field in attrs.fields(cls))
    copy: _M = object.__new__(cls)
    for name in names:
        _set(copy, name, getattr(message, name))
    _set(copy, "ref", ref)
    return copy


class _Waiter:
    __slots__ = ("event", "reply")

    def __init__(self) -> None:
        self.event = event()
        self.reply: Message | None = None


OnMessage = Callable[[Message], Awaitable[None]]


class Link:
    """One connection to a daemon, after ``welcome``."""

    def __init__(self, channel: Channel, url: str, welcome: Welcome) -> None:
        self.url = url
        self.welcome = welcome
        self._channel = channel
        self._waiters: dict[str, _Waiter] = {}
        self._refs = itertools.count(1)
        self._closed = False
        self._ended = anyio.Event()
        # what follows a message the daemon declared attachments on; no limit of our own
        # beyond the channel's frame limit: the daemon keeps to its own
        self._collector = Collector(SDK_MAX_ATTACHMENT, 1 << 62)
        self._attached: dict[int, list[bytes]] = {}

    @property
    def closed(self) -> bool:
        """True once the connection is ending (the reader stopped, or a send failed)."""
        return self._closed

    async def wait_ended(self) -> None:
        """Wait until :meth:`serve` has finished (the connection is closed for good)."""
        await self._ended.wait()

    def next_ref(self, prefix: str = "r") -> str:
        return f"{prefix}{next(self._refs)}"

    def take_attachments(self, message: Message) -> dict[str, bytes]:
        """The bytes of the attachments ``message`` declared, by name (once: later calls get
        ``{}``)."""
        data = self._attached.pop(id(message), [])
        return {spec.name: blob for spec, blob in zip(declared(message), data, strict=False)}

    async def send(self, message: Message, data: Sequence[bytes] = (), *,
                   ref: str | None = None) -> None:
        """Send one message (with ``ref`` as its ``ref`` when given), and the bytes of the
        attachments it declares right behind it; :class:`LinkLost` if the connection is gone."""
        if self._closed:
            raise LinkLost(f"connection to {self.url} is closed")
        try:
            if data:
                if ref is not None:
                    message = with_ref(message, ref)
                await self._channel.send_many(message_frames(message, data))
            else:
                frame = encode(message) if ref is None else encode_with_ref(message, ref)
                channel = self._channel
                if not channel.write_nowait(frame):
                    await channel.send(frame)
                elif channel.write_pending:
                    await channel.send_many([])  # what the socket did not take at once
                else:
                    await checkpoint_if_cancelled()
        except (ChannelClosed, *BROKEN, OSError) as exc:
            # A broken send means a broken connection: close it so the reader stops too.
            await self.aclose()
            raise LinkLost(f"connection to {self.url} lost: {exc}") from exc

    async def request(self, message: Message, expect: type[_M],
                      data: Sequence[bytes] = ()) -> _M:
        """Send ``message`` (and its attachments' ``data``) with a fresh ``ref`` and return the
        reply of type ``expect``.

        Raises :class:`RequestFailed` for an ``error`` reply (or a reply of another type) and
        :class:`LinkLost` if the connection ends first.
        """
        ref = self.next_ref()
        waiter = self._waiters[ref] = _Waiter()
        try:
            await self.send(message, data, ref=ref)
            await waiter.event.wait()
        finally:
            self._waiters.pop(ref, None)
        return self._reply(waiter, expect)

    async def send_confirmed(self, message: Message) -> None:
        """Send a message that has no reply on success; return once the daemon has handled it.

        Raises :class:`RequestFailed` if the daemon refused it, :class:`LinkLost` if the
        connection ended before the confirming ``pong``.
        """
        ref = self.next_ref()
        waiter = self._waiters[ref] = _Waiter()
        try:
            await self.send(message, ref=ref)
            await self.request(Ping(), Pong)
        finally:
            self._waiters.pop(ref, None)
        if isinstance(waiter.reply, Error):
            raise RequestFailed.from_error(waiter.reply)

    def _reply(self, waiter: _Waiter, expect: type[_M]) -> _M:
        reply = waiter.reply
        if reply is not None:  # a reply's attachments are not kept (no request asks for them)
            self._attached.pop(id(reply), None)
        if reply is None:
            raise LinkLost(f"connection to {self.url} lost before the reply")
        if isinstance(reply, expect):
            return reply
        if isinstance(reply, Error):
            raise RequestFailed.from_error(reply)
        raise RequestFailed("E_INTERNAL", f"expected '{expect.TYPE}', got '{reply.TYPE}'")

    async def aclose(self) -> None:
        """Close the connection (idempotent); the reader then ends."""
        self._closed = True
        with anyio.CancelScope(shield=True):
            try:
                await self._channel.aclose()
            except Exception:  # Channel.aclose never raises by contract; be safe anyway
                log.debug("closing %s failed", self.url, exc_info=True)

    async def serve(
        self,
        on_message: OnMessage,
        *,
        keepalive: float | None = None,
        keepalive_timeout: float | None = None,
    ) -> None:
        """Read until the connection ends; then wake every waiting request and return.

        With ``keepalive``, send ``ping`` every ``keepalive`` seconds and close the connection
        when no ``pong`` comes within ``keepalive_timeout`` (default ``max(5 * keepalive,
        10)``): a daemon that went silent is noticed even though no byte says so.
        """
        try:
            async with anyio.create_task_group() as nursery:
                if keepalive is not None:
                    timeout = keepalive_timeout or max(5 * keepalive, 10.0)
                    nursery.start_soon(self._keepalive, keepalive, timeout)
                await self._read(on_message)
                nursery.cancel_scope.cancel()
        finally:
            self._closed = True
            for waiter in self._waiters.values():
                waiter.event.set()
            await self.aclose()
            self._ended.set()

    async def _read(self, on_message: OnMessage) -> None:
        while True:
            try:
                data = await self._channel.receive()
            except (ChannelClosed, *BROKEN, OSError):
                return
            except ProtocolError as exc:
                # The transport lost the framing (E_TOO_LARGE...): the stream cannot be trusted.
                log.warning("connection to %s: %s; closing it", self.url, exc)
                return
            try:
                message = self._complete(data)
            except AttachmentError as exc:
                log.warning("connection to %s: %s; closing it", self.url, exc)
                return
            except ProtocolError as exc:
                log.warning("connection to %s: skipping an unreadable message: %s", self.url, exc)
                continue
            if message is None:
                continue  # its attachments are still to come
            try:
                await self._dispatch(message, on_message)
            except LinkLost:
                return
            except Exception:
                log.exception("connection to %s: handling %s failed", self.url, message.TYPE)
            finally:
                if message.ref is None:  # a reply's bytes are its requester's to take
                    self._attached.pop(id(message), None)

    def _complete(self, data: bytes | str) -> Message | None:
        """The message ``data`` completes (with its attachments), or None while its
        attachment frames are still to come."""
        whole = self._collector.receive(data, untagged_blobs=self._channel.untagged_blobs)
        if whole is None:
            return None
        message, blobs = whole
        if blobs:
            self._attached[id(message)] = blobs
        return message

    async def _dispatch(self, message: Message, on_message: OnMessage) -> None:
        if isinstance(message, Ping):
            await self.send(Pong(ref=message.ref))
            return
        if message.ref is not None:
            waiter = self._waiters.get(message.ref)
            if waiter is not None and waiter.reply is None:
                waiter.reply = message
                waiter.event.set()
                return
        await on_message(message)

    async def _keepalive(self, interval: float, pong_timeout: float) -> None:
        while True:
            await anyio.sleep(interval)
            with anyio.move_on_after(pong_timeout) as scope:
                try:
                    await self.request(Ping(), Pong)
                except LinkLost:
                    return
                except RequestFailed as exc:  # e.g. E_RATE: the daemon is alive
                    log.debug("keepalive ping to %s refused: %s", self.url, exc)
            if scope.cancelled_caught:
                log.warning(
                    "no pong from %s within %.1f s; closing the connection", self.url, pong_timeout
                )
                await self.aclose()
                return


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
        self._hello = Hello(role=role, version=PROTOCOL_VERSION, token=token, name=name)
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
