"""What the node and client SDKs share: one link (dialling is schedd.sdk._dial).

Rules of this module:

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
import re
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final, NoReturn, TypeVar

import anyio
import attrs
from trio.lowlevel import checkpoint_if_cancelled

from schedd.errors import ProtocolError, SchedError
from schedd.protocol import (
    BatchElement,
    Error,
    Message,
    Ping,
    Pong,
    Welcome,
    encode,
    encode_batch,
    is_batch,
    split_batch,
)
from schedd.protocol.attachments import (
    SDK_MAX_ATTACHMENT,
    AttachmentError,
    Blob,
    Collector,
    declared,
    message_frames,
)
from schedd.protocol.codec import encode_with_ref
from schedd.sdk._native import event
from schedd.sdk._target import BROKEN
from schedd.transport.channel import Channel, ChannelClosed

__all__ = [
    "E_CLIENT_CLOSED",
    "Link",
    "LinkLost",
    "RequestFailed",
    "reraise_sole",
    "with_ref",
]

log = logging.getLogger(__name__)

ARRAY_BYTES: Final = 1 << 18
"""Most bytes of messages one array frame sent carries (below any daemon's ``max_frame``)."""
_MAX_ARRAY: Final = 1 << 16
"""Most messages of an array frame read (the daemon packs far fewer)."""

E_CLIENT_CLOSED: Final = "E_CLIENT_CLOSED"
"""SDK-local code (never on the wire): the client was closed before the answer came."""

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

    async def send_all(self, messages: Sequence[tuple[Message, Sequence[bytes]]]) -> None:
        """Send ``messages`` in order in one write of the channel (``send_many``): in array
        frames as :meth:`request_many` sends them, except a message with attachments, which
        goes in a frame of its own with the bytes of its attachments right behind it;
        :class:`LinkLost` if the connection is gone."""
        await self._send_frames([encode(message) if not data else message_frames(message, data)
                                 for message, data in messages], self.welcome.max_batch)

    async def request(self, message: Message, expect: type[_M],
                      data: Sequence[bytes] = (), *,
                      send: Callable[[Message], Awaitable[None]] | None = None) -> _M:
        """Send ``message`` (and its attachments' ``data``) with a fresh ``ref`` and return the
        reply of type ``expect``. ``send``: how to send it (default :meth:`send`), for a request
        that goes out with other messages (the node's batches, schedd.sdk._node_out).

        Raises :class:`RequestFailed` for an ``error`` reply (or a reply of another type) and
        :class:`LinkLost` if the connection ends first.
        """
        ref = self.next_ref()
        waiter = self._waiters[ref] = _Waiter()
        try:
            if send is not None:
                await send(with_ref(message, ref))
            else:
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

    async def request_many(self, messages: Sequence[Message], expect: type[_M],
                           ) -> list[_M | RequestFailed]:
        """Send ``messages`` (none with attachments), each with a fresh ``ref``, in array frames
        of at most the welcome's ``max_batch`` messages and ARRAY_BYTES (one message per frame
        to a daemon that gave none), and return each one's reply of type ``expect``, or its
        refusal, in order. Raises :class:`LinkLost` if the connection ends before every
        reply."""
        refs = [self.next_ref() for _ in messages]
        waiters = [self._waiters.setdefault(ref, _Waiter()) for ref in refs]
        try:
            frames = [encode_with_ref(message, ref)
                      for message, ref in zip(messages, refs, strict=True)]
            await self._send_frames(frames, self.welcome.max_batch)
            for waiter in waiters:
                await waiter.event.wait()
        finally:
            for ref in refs:
                self._waiters.pop(ref, None)
        replies: list[_M | RequestFailed] = []
        for waiter in waiters:
            try:
                replies.append(self._reply(waiter, expect))
            except RequestFailed as exc:
                replies.append(exc)
        return replies

    async def _send_frames(self, frames: Sequence[bytes | list[bytes]], max_batch: int) -> None:
        """Encoded messages as array frames (``max_batch`` > 1) or one frame each, in order; a
        list is a message with its attachment frames, sent as they are between arrays."""
        if self._closed:
            raise LinkLost(f"connection to {self.url} is closed")
        out: list[bytes] = []
        run: list[bytes] = []
        size = 0
        for frame in frames:
            if isinstance(frame, list):
                if run:
                    out.append(encode_batch(run) if len(run) > 1 else run[0])
                    run, size = [], 0
                out += frame
                continue
            if max_batch < 2:
                out.append(frame)
                continue
            if run and (len(run) >= max_batch or size + len(frame) > ARRAY_BYTES):
                out.append(encode_batch(run) if len(run) > 1 else run[0])
                run, size = [], 0
            run.append(frame)
            size += len(frame) + 1
        if run:
            out.append(encode_batch(run) if len(run) > 1 else run[0])
        try:  # the channel keeps one send_many whole and in order among concurrent senders
            await self._channel.send_many(out)
        except (ChannelClosed, *BROKEN, OSError) as exc:
            await self.aclose()
            raise LinkLost(f"connection to {self.url} lost: {exc}") from exc

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
            if not self._collector.waiting and not isinstance(data, Blob) and is_batch(data):
                try:  # an array frame: its messages, each as if it came in a frame of its own
                    items: list[Any] = split_batch(data, _MAX_ARRAY)
                except ProtocolError as exc:
                    log.warning("connection to %s: skipping an unreadable array: %s", self.url,
                                exc)
                    continue
            else:
                items = [data]
            for item in items:
                if not await self._read_one(item, on_message):
                    return

    async def _read_one(self, data: bytes | str | BatchElement | ProtocolError,
                        on_message: OnMessage) -> bool:
        """Handle one frame or array element; False when the connection must end."""
        if isinstance(data, ProtocolError):  # an element that is no message
            log.warning("connection to %s: skipping an unreadable message: %s", self.url, data)
            return True
        try:
            message = self._complete(data.data if isinstance(data, BatchElement) else data)
        except AttachmentError as exc:
            log.warning("connection to %s: %s; closing it", self.url, exc)
            return False
        except ProtocolError as exc:
            log.warning("connection to %s: skipping an unreadable message: %s", self.url, exc)
            return True
        if message is None:
            return True  # its attachments are still to come
        try:
            await self._dispatch(message, on_message)
        except LinkLost:
            return False
        except Exception:
            log.exception("connection to %s: handling %s failed", self.url, message.TYPE)
        finally:
            if message.ref is None:  # a reply's bytes are its requester's to take
                self._attached.pop(id(message), None)
        return True

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
