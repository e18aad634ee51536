"""RESP2 over one trio socket, parsed by hiredis: the store behind ``redis://``, ``rediss://`` and
``unix://`` URLs.

Rules of this module:

* **One shared connection, automatic pipelining.** Every :meth:`RedisStore.execute` caller encodes
  its command, appends it to the connection's *unsent* list and parks. A writer task moves
  everything unsent to the *pending* queue and writes it with one ``send_all``; a reader task feeds
  hiredis and hands replies to the pending callers strictly in FIFO order. Redis answers in the
  order it receives commands, so this order is the only thing that matches a reply to its caller.
* **On an idle connection the caller writes.** When nothing is pending and the writer is waiting, a
  caller on a plain socket (TCP or Unix, not TLS) writes its command itself with one non-blocking
  ``os.write`` and appends it to *pending* in the same step, so nothing can come between; only what
  that write leaves (a *rest*, sent by the writer before anything unsent) or a write that would
  block or fails wakes the writer. Under load, commands find others pending and still go out
  together through the writer. This spares a task switch and trio's stream per command at low rates
  (docs/decisions/0001-hand-written-resp-client.md). The reader of a plain socket waits for it to be
  readable and then reads until it is drained, without the read that finds nothing first.
* **Commands that mutate connection state are forbidden on the shared connection** (``SELECT``,
  ``WATCH``, ``SUBSCRIBE``, a bare ``MULTI``, blocking pops): they would leak into every other
  caller's commands. :meth:`RedisStore.execute_many` writes its commands contiguously, so a
  ``MULTI`` ... ``EXEC`` sent through it is safe. Blocking commands go to
  :meth:`RedisStore.execute_blocking`, which has a connection of its own.
* **Cancellation never desyncs the stream.** A caller cancelled before its command was written
  withdraws it (it is never sent); one cancelled after the write leaves its slot in the pending
  queue and the reply is read and thrown away. Either way the next reply still finds its owner.
* **Error replies are values until they reach their caller**, where they are raised as the
  exception :func:`schedd.errors.error_from_reply` maps them to; the connection stays usable.
  Errors nested inside array replies (e.g. from ``EXEC``) stay in the array as exception objects.
* **Failure is loud and fast.** If the connection breaks, or the oldest outstanding command gets
  no reply within ``command_timeout`` (the reply stream can no longer be trusted), every in-flight
  caller gets :class:`~schedd.errors.StoreUnavailable` naming the address and the cause, and the
  connection is torn down. Until a background task has reconnected (exponential backoff from
  50 ms to 2 s, with jitter), ``execute`` raises ``StoreUnavailable`` at once instead of waiting.
  Callers retry; they never have to reopen the store. Loss is logged once at WARNING, recovery at
  INFO.
* **The address may move.** Given ``resolve_address`` (an async callable returning ``(host,
  port)``), every connection attempt asks it where to go first: that is how the Sentinel and
  Cluster stores (:mod:`schedd.store.sentinel`, :mod:`schedd.store.cluster`) follow a failover
  while reusing this connection code. :meth:`RedisStore.reconnect` drops the shared connection on
  purpose (the server answered ``READONLY`` or ``MOVED``) so the address is resolved again.
* **Opening fails fast.** :func:`open_redis_store` connects before it yields and raises
  ``StoreUnavailable`` if the first attempt fails, so a misconfigured daemon stops at start-up
  instead of running against nothing.
"""

from __future__ import annotations

import logging
import os
import random
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any, Final
from urllib.parse import urlsplit

import hiredis
import outcome
import trio
from redis.connection import parse_url
from trio.lowlevel import current_task, reschedule, wait_task_rescheduled

from schedd.errors import ConfigError, SchedError, StoreUnavailable, error_from_reply
from schedd.store.base import Arg, Store
from schedd.store.redis_url import _URL_KEYS, _mask_url, handshake_commands, ssl_context
from schedd.store.resp import (
    _INCOMPLETE,
    _READ_SIZE,
    _STREAM_ERRORS,
    _blocking_budget,
    _Call,
    _Connection,
    _describe,
    _encode,
    _read_reply,
)

__all__ = ["AddressResolver", "RedisStore", "open_redis_store"]

AddressResolver = Callable[[], Awaitable[tuple[str, int]]]
"""Where to connect next: ``(host, port)``, or raise ``StoreUnavailable`` if nowhere is known."""

logger = logging.getLogger(__name__)

_BACKOFF_START: Final = 0.05
_BACKOFF_MAX: Final = 2.0
_BACKOFF_JITTER: Final = 0.1







class RedisStore(Store):
    """A Redis deployment reached over one pipelined connection plus one for blocking reads.

    Create it with :func:`open_redis_store`; the constructor only parses the URL.
    """

    def __init__(
        self,
        url: str,
        *,
        connect_timeout: float = 5.0,
        command_timeout: float = 5.0,
        resolve_address: AddressResolver | None = None,
    ) -> None:
        if not connect_timeout > 0 or not command_timeout > 0:
            raise ValueError("connect_timeout and command_timeout must be positive")
        self.url = _mask_url(url)
        self._connect_timeout = connect_timeout
        self._command_timeout = command_timeout
        try:
            # redis-py's parser, so URLs mean exactly what they mean to every other Redis tool.
            options: dict[str, Any] = parse_url(url)  # type: ignore[no-untyped-call]
        except ValueError as exc:
            raise ConfigError([f"store url {self.url}: {exc}"]) from None
        unknown = sorted(set(options) - _URL_KEYS)
        if unknown:
            raise ConfigError(
                [f"store url {self.url}: unsupported parameter {key!r}" for key in unknown]
            )
        self._path: str | None = options.get("path")
        self._host: str = options.get("host", "127.0.0.1")
        self._port: int = options.get("port", 6379)
        self._address = self._path if self._path is not None else f"{self._host}:{self._port}"
        self._ssl_context: ssl.SSLContext | None = None
        if urlsplit(url).scheme == "rediss":
            self._ssl_context = ssl_context(options)
        self._handshake = handshake_commands(options)
        self._resolve_address = resolve_address
        self._serve_scope: trio.CancelScope | None = None

        self._conn: _Connection | None = None
        self._down_cause = "not connected yet"
        self._closed = False
        # The scope of the store's own tasks (open_redis_store's nursery also holds the caller's
        # block): aclose() cancels this one, so closing ends the store, not the caller's code.
        self._tasks_scope = trio.CancelScope()
        self._blocking: _Connection | None = None
        self._blocking_lock = trio.Lock()
        # Bumped whenever the shared connection is lost; the blocking connection remembers the
        # value it was opened under, so it is replaced after an outage instead of being reused.
        self._epoch = 0
        self._blocking_epoch = 0

    def __repr__(self) -> str:
        return f"<RedisStore {self.url}>"

    # -- the pipelined connection ----------------------------------------------------------

    async def execute(self, *args: Arg) -> Any:
        # a caller cancelled already sends nothing (write_now would send before any checkpoint)
        await trio.lowlevel.checkpoint_if_cancelled()
        conn = self._conn
        if conn is None:
            raise self._unavailable()
        call = _Call(current_task(), _encode(args), trio.current_time() + self._command_timeout)
        conn.send(call)
        reply = await wait_task_rescheduled(call.abort)
        if isinstance(reply, SchedError):
            try:
                raise reply
            finally:
                # the error's traceback holds this frame: the frame must not hold the error
                # (a reference cycle that keeps the caller's frames until a full collection)
                del reply
        return reply

    async def execute_many(self, commands: Sequence[Sequence[Arg]]) -> list[Any]:
        if not commands:
            return []
        await trio.lowlevel.checkpoint_if_cancelled()
        conn = self._conn
        if conn is None:
            raise self._unavailable()
        data = b"".join([_encode(command) for command in commands])
        call = _Call(
            current_task(),
            data,
            trio.current_time() + self._command_timeout,
            replies=[],
            count=len(commands),
        )
        conn.send(call)
        replies: list[Any] = await wait_task_rescheduled(call.abort)
        for reply in replies:
            if isinstance(reply, SchedError):
                del call, replies  # they hold the error too (see execute)
                try:
                    raise reply
                finally:
                    del reply
        return replies

    def _unavailable(self) -> StoreUnavailable:
        if self._closed:
            return StoreUnavailable("store is closed")
        return StoreUnavailable(f"redis is unavailable (reconnecting): {self._down_cause}")

    async def _connect(self) -> _Connection:
        """Open a stream and run the handshake; every failure becomes ``StoreUnavailable``."""
        where = self._address
        try:
            with trio.fail_after(self._connect_timeout):
                if self._resolve_address is not None:
                    self._host, self._port = await self._resolve_address()
                    self._address = where = f"{self._host}:{self._port}"
                stream = await self._open_stream()
                try:
                    reader = hiredis.Reader(replyError=error_from_reply, notEnoughData=_INCOMPLETE)
                    await stream.send_all(b"".join(_encode(c) for c in self._handshake))
                    replies = [await _read_reply(stream, reader) for _ in self._handshake]
                except BaseException:
                    await trio.aclose_forcefully(stream)
                    raise
        except trio.TooSlowError:
            raise StoreUnavailable(
                f"cannot reach redis at {where}: timed out after {self._connect_timeout:g} s"
            ) from None
        except _STREAM_ERRORS as exc:
            raise StoreUnavailable(f"cannot reach redis at {where}: {_describe(exc)}") from exc
        for command, reply in zip(self._handshake, replies, strict=True):
            if isinstance(reply, SchedError):
                await trio.aclose_forcefully(stream)
                raise StoreUnavailable(
                    f"redis at {where} refused {command[0]!s}: {reply}"
                ) from reply
        return _Connection(stream, reader)

    async def _open_stream(self) -> trio.abc.Stream:
        if self._path is not None:
            return await trio.open_unix_socket(self._path)
        if self._ssl_context is not None:
            return await trio.open_ssl_over_tcp_stream(
                self._host, self._port, ssl_context=self._ssl_context
            )
        return await trio.open_tcp_stream(self._host, self._port)

    def _start(self, nursery: trio.Nursery, conn: _Connection) -> None:
        self._conn = conn
        nursery.start_soon(self._run_tasks, conn)

    async def _run_tasks(self, conn: _Connection) -> None:
        with self._tasks_scope:  # cancelled before it is entered, it cancels at once
            await self._maintain(conn)

    async def _maintain(self, conn: _Connection) -> None:
        """Serve a connection until it breaks, then reconnect with backoff; forever."""
        while True:
            await self._serve(conn)
            lost_at = trio.current_time()
            logger.warning("%s; reconnecting", self._down_cause)
            delay = _BACKOFF_START
            attempts = 0
            while True:
                await trio.sleep(delay * random.uniform(1 - _BACKOFF_JITTER, 1 + _BACKOFF_JITTER))
                attempts += 1
                try:
                    conn = await self._connect()
                except StoreUnavailable as exc:
                    self._down_cause = str(exc)
                    logger.debug("reconnect attempt %d failed: %s", attempts, exc)
                    delay = min(delay * 2, _BACKOFF_MAX)
                    continue
                break
            if self._closed:
                # aclose() ran after the handshake finished but before this task resumed, so the
                # cancellation never reached an await here; publishing the connection would leave
                # callers queueing on a socket nobody serves.
                await trio.aclose_forcefully(conn.stream)
                return
            logger.info(
                "reconnected to redis at %s after %.1f s (%d attempts)",
                self._address,
                trio.current_time() - lost_at,
                attempts,
            )
            self._conn = conn

    @property
    def connected(self) -> bool:
        """Whether the shared connection is up (``execute`` would not fail at once)."""
        return self._conn is not None

    @property
    def generation(self) -> int:
        """Changes whenever the shared connection is lost; names the connection a reply came on."""
        return self._epoch

    @property
    def address(self) -> str:
        """``host:port`` (or socket path) of the current or last connection."""
        return self._address

    def reconnect(self, reason: str, *, generation: int | None = None) -> None:
        """Drop the shared connection now; the maintainer reconnects (resolving the address
        again) with the usual backoff. Callers still waiting get ``StoreUnavailable``.

        With ``generation``, only if the connection is still the one of that generation, so many
        callers reacting to the same ``MOVED`` drop one connection, not its replacements too.
        """
        conn = self._conn
        if conn is None or (generation is not None and generation != self._epoch):
            return
        self._drop(conn, reason)
        if self._serve_scope is not None:
            self._serve_scope.cancel()

    async def _serve(self, conn: _Connection) -> None:
        async with trio.open_nursery() as nursery:
            self._serve_scope = nursery.cancel_scope

            async def run(loop: Callable[[_Connection], Awaitable[str]]) -> None:
                message = await loop(conn)
                self._drop(conn, message)
                nursery.cancel_scope.cancel()

            nursery.start_soon(run, self._read_loop)
            nursery.start_soon(run, self._write_loop)
            nursery.start_soon(run, self._watch_loop)
        await trio.aclose_forcefully(conn.stream)

    def _drop(self, conn: _Connection, message: str) -> None:
        # Synchronous on purpose: between noticing the failure and failing the callers there must
        # be no checkpoint, or a new caller could queue onto the dead connection and hang.
        if conn.dropped:
            return
        conn.dropped = True
        if self._conn is conn:
            self._conn = None
            self._down_cause = message
            self._epoch += 1
        conn.fail_all(message)

    async def _read_loop(self, conn: _Connection) -> str:
        closed = f"lost connection to redis at {self._address}: connection closed by the server"
        closed_here = f"lost connection to redis at {self._address}: connection closed"
        try:
            sock = conn.sock
            if sock is None:
                stream = conn.stream
                while True:
                    data = await stream.receive_some(_READ_SIZE)
                    if not data:
                        return closed
                    if (lost := self._hand_replies(conn, data)) is not None:
                        return lost
            # A plain socket: wait until it is readable, then read until it is drained. Trying
            # the read first (as receive_some does) found nothing in half the tries, and every
            # receive_some also yields once more to the scheduler after a read that succeeded.
            while True:
                fd = sock.fileno()
                if fd < 0:
                    return closed_here
                await trio.lowlevel.wait_readable(sock)
                while True:
                    try:
                        data = os.read(fd, _READ_SIZE)
                    except BlockingIOError:
                        break
                    if not data:
                        return closed
                    if (lost := self._hand_replies(conn, data)) is not None:
                        return lost
                    if len(data) < _READ_SIZE:
                        break
        except _STREAM_ERRORS as exc:
            return f"lost connection to redis at {self._address}: {_describe(exc)}"

    def _hand_replies(self, conn: _Connection, data: bytes | bytearray) -> str | None:
        """Feed ``data`` to the parser and hand every complete reply to its caller, in order;
        the reason the connection is lost when a reply has no caller."""
        reader = conn.reader
        pending = conn.pending
        reader.feed(data)  # type: ignore[arg-type]  # stub omits bytearray; C accepts it
        reply = reader.gets()
        while reply is not _INCOMPLETE:
            if not pending:
                return (
                    f"lost connection to redis at {self._address}: "
                    "protocol error: a reply arrived with no command waiting for it"
                )
            call = pending[0]
            replies = call.replies
            if replies is not None:
                replies.append(reply)
                if len(replies) < call.count:
                    reply = reader.gets()
                    continue
                reply = replies
            pending.popleft()
            task = call.task
            if task is not None:
                call.task = None
                reschedule(task, outcome.Value(reply))
            reply = reader.gets()
        return None

    async def _write_loop(self, conn: _Connection) -> str:
        stream = conn.stream
        pending = conn.pending
        try:
            while True:
                rest = conn.rest
                if rest:  # the end of a command written in part by its caller goes first
                    conn.rest = b""
                    await stream.send_all(rest)
                    continue
                batch = conn.unsent
                if not batch:
                    conn.writer = current_task()
                    await wait_task_rescheduled(conn.abort_writer)
                    continue
                conn.unsent = []
                if len(batch) == 1:
                    # The serial case; skip building a list and a join for one command.
                    call = batch[0]
                    if call.task is None:
                        continue
                    pending.append(call)
                    await stream.send_all(call.data)
                    continue
                live = [call for call in batch if call.task is not None]
                if live:
                    pending.extend(live)
                    await stream.send_all(b"".join([call.data for call in live]))
        except _STREAM_ERRORS as exc:
            return f"lost connection to redis at {self._address}: {_describe(exc)}"

    async def _watch_loop(self, conn: _Connection) -> str:
        # Replies come back in order, so only the oldest outstanding command can be overdue
        # first; one task sleeping until its deadline replaces a cancel scope per call.
        timeout = self._command_timeout
        while True:
            head = conn.pending[0] if conn.pending else conn.unsent[0] if conn.unsent else None
            if head is None:
                await trio.sleep(timeout)
            elif head.deadline <= trio.current_time():
                return (
                    f"command timed out after {timeout:g} s waiting for redis at "
                    f"{self._address}; connection reset"
                )
            else:
                await trio.sleep_until(head.deadline)

    # -- the blocking connection -----------------------------------------------------------

    async def execute_blocking(self, *args: Arg) -> Any:
        data = _encode(args)
        budget = _blocking_budget(args, self._command_timeout)
        async with self._blocking_lock:
            if self._conn is None:
                # Fail as fast as execute() does while the store is down, rather than have
                # consumer loops hammer a dead server with connection attempts.
                raise self._unavailable()
            conn = self._blocking
            if conn is not None and self._blocking_epoch != self._epoch:
                # Redis may have restarted since; an idle socket to a dead server would only
                # reveal that by failing this call, which a fresh connection can serve.
                self._blocking = None
                await trio.aclose_forcefully(conn.stream)
                conn = None
            if conn is None:
                epoch = self._epoch
                conn = await self._connect()
                if self._closed:
                    # aclose() ran while we were connecting and could not see this connection.
                    await trio.aclose_forcefully(conn.stream)
                    raise self._unavailable()
                self._blocking = conn
                self._blocking_epoch = epoch
            finished = False
            try:
                with trio.fail_after(budget):
                    await conn.stream.send_all(data)
                    reply = await _read_reply(conn.stream, conn.reader)
                finished = True
            except trio.TooSlowError:
                raise StoreUnavailable(
                    f"blocking command timed out after {budget:g} s waiting for redis at "
                    f"{self._address}; connection reset"
                ) from None
            except _STREAM_ERRORS as exc:
                if self._closed:
                    raise StoreUnavailable("store is closed") from None
                raise StoreUnavailable(
                    f"lost blocking connection to redis at {self._address}: {_describe(exc)}"
                ) from exc
            finally:
                if not finished:
                    # Cancelled, timed out or broken mid-command: a reply may still be on its
                    # way, so this connection can never be trusted to line up again.
                    self._blocking = None
                    await trio.aclose_forcefully(conn.stream)
        if isinstance(reply, SchedError):
            try:
                raise reply
            finally:
                del reply  # see execute
        return reply

    # -- closing ---------------------------------------------------------------------------

    async def aclose(self) -> None:
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        self._closed = True
        streams = []
        conn = self._conn
        if conn is not None:
            self._drop(conn, "store is closed")
            streams.append(conn.stream)
        if self._blocking is not None:
            streams.append(self._blocking.stream)
            self._blocking = None
        self._tasks_scope.cancel()
        # Shielded so that closing from an already-cancelled context still releases the sockets;
        # aclose_forcefully cannot block, so the shield cannot hang.
        with trio.CancelScope(shield=True):
            for stream in streams:
                await trio.aclose_forcefully(stream)


@asynccontextmanager
async def open_redis_store(
    url: str,
    *,
    connect_timeout: float = 5.0,
    command_timeout: float = 5.0,
    resolve_address: AddressResolver | None = None,
) -> AsyncIterator[RedisStore]:
    """Connect to Redis at ``url`` and keep the connection alive until the block exits.

    Raises :class:`~schedd.errors.StoreUnavailable` at once if the first connection fails, and
    :class:`~schedd.errors.ConfigError` if the URL is not one this store understands.
    """
    store = RedisStore(
        url,
        connect_timeout=connect_timeout,
        command_timeout=command_timeout,
        resolve_address=resolve_address,
    )
    conn = await store._connect()
    # Trio wraps anything raised inside a nursery body in an ExceptionGroup. The body here is the
    # caller's code, so its exception is carried out of the nursery and re-raised unwrapped.
    body_error: BaseException | None = None
    async with trio.open_nursery() as nursery:
        store._start(nursery, conn)
        try:
            yield store
        except BaseException as exc:
            body_error = exc
        finally:
            # Shielded: a cancelled body must still close, and aclose() cannot block.
            with trio.CancelScope(shield=True):
                await store.aclose()
    if body_error is not None:
        raise body_error
