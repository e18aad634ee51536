"""RESP2 on one connection: encoding commands, the calls waiting for replies, the connection's
queues and direct writes, reading a reply, and what a failure reads as
(schedd.store.redis_store's rules apply: this is its wire side).
"""

from __future__ import annotations

import math
import os
import socket
import ssl
from collections import deque
from collections.abc import Sequence
from typing import Any, Final, cast

import hiredis
import outcome
import trio
from trio.lowlevel import Abort, RaiseCancelT, Task, reschedule

from schedd.errors import StoreUnavailable
from schedd.store.base import Arg

_READ_SIZE: Final = 65536

# hiredis's default "no complete reply yet" marker is False, which RESP3 could one day produce as
# a real value; a private sentinel cannot collide with anything on the wire.
_INCOMPLETE: Final = object()

# Errors that mean the byte stream itself is gone or garbled, as opposed to a Redis error reply.
_STREAM_ERRORS: Final = (
    OSError,
    trio.BrokenResourceError,
    trio.ClosedResourceError,
    hiredis.HiredisError,
)


def _encode(args: Sequence[Arg]) -> bytes:
    """One command in RESP. hiredis's C encoder takes str, bytes, int and float (3x faster
    than Python: 0.37 against 1.08 ms for a heartbeat batch of 1,000 nodes); whatever it
    refuses (bool, int subclasses, other types) goes through :func:`_encode_each`, which
    encodes int subclasses and raises a specific error for the rest."""
    if not args:
        # Redis silently ignores an empty multibulk and sends no reply, which would shift every
        # later reply onto the wrong caller.
        raise ValueError("cannot send an empty command")
    try:
        # (hiredis's stub declares a 1-tuple: any length is accepted)
        packed: bytes = hiredis.pack_command(cast(Any, tuple(args)))
        return packed
    except TypeError:
        return _encode_each(args)


def _encode_each(args: Sequence[Arg]) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, bytes):
            data = arg
        elif isinstance(arg, str):
            data = arg.encode()
        elif isinstance(arg, int):
            if isinstance(arg, bool):
                # It would go out as "True"/"False", which no Redis command means: always a bug.
                raise TypeError(f"cannot send a bool to redis: {arg!r}")
            # %d rather than str(): ``class E(int, Enum)`` members stringify as "E.X".
            data = b"%d" % arg
        elif isinstance(arg, float):
            data = float.__repr__(arg).encode()
        else:
            raise TypeError(f"cannot send {type(arg).__name__} to redis: {arg!r}")
        out.append(b"$%d\r\n%b\r\n" % (len(data), data))
    return b"".join(out)


def _describe(exc: BaseException) -> str:
    """The most useful short text for a connection failure, e.g. ``Connection refused``."""
    for _ in range(8):
        if isinstance(exc, BaseExceptionGroup) and exc.exceptions:
            exc = exc.exceptions[0]
        elif isinstance(exc, ssl.SSLError | hiredis.HiredisError):
            break
        elif isinstance(exc, socket.gaierror):
            return exc.strerror or str(exc)
        elif isinstance(exc, OSError) and exc.errno is not None and exc.errno > 0:
            # trio's messages prefix the address we already report; strerror alone reads better.
            return os.strerror(exc.errno)
        elif exc.__cause__ is not None:
            exc = exc.__cause__
        else:
            break
    return str(exc) or type(exc).__name__


def _blocking_budget(args: Sequence[Arg], command_timeout: float) -> float:
    """How long a blocking command may legitimately take: its ``BLOCK`` time plus the timeout."""
    for index, arg in enumerate(args[1:-1], start=1):
        word = arg.upper() if isinstance(arg, str | bytes) else None
        if word in ("STREAMS", b"STREAMS"):
            break  # key names follow; a key called "block" is not the option
        if word in ("BLOCK", b"BLOCK"):
            try:
                block_ms = int(args[index + 1])
            except (TypeError, ValueError):
                break  # Redis will reject it; the normal timeout covers that reply
            return math.inf if block_ms == 0 else block_ms / 1000 + command_timeout
    return command_timeout


class _Call:
    """One caller waiting for ``count`` replies (``replies`` is None for a single command)."""

    __slots__ = ("count", "data", "deadline", "replies", "task")

    def __init__(
        self,
        task: Task,
        data: bytes,
        deadline: float,
        replies: list[Any] | None = None,
        count: int = 1,
    ) -> None:
        self.task: Task | None = task
        self.data = data
        self.deadline = deadline
        self.replies = replies
        self.count = count

    def abort(self, raise_cancel: RaiseCancelT) -> Abort:
        # Clearing the task is the whole protocol: the writer skips unsent calls without a task
        # and the reader drops replies for sent ones, so the queue order is never disturbed.
        self.task = None
        return Abort.SUCCEEDED


class _Connection:
    __slots__ = ("dropped", "pending", "reader", "rest", "sock", "stream", "unsent", "writer")

    def __init__(self, stream: trio.abc.Stream, reader: hiredis.Reader) -> None:
        self.stream = stream
        self.reader = reader
        self.unsent: list[_Call] = []
        self.pending: deque[_Call] = deque()
        self.writer: Task | None = None
        self.dropped = False
        # A plain socket, written and read without trio's stream (None: TLS)
        self.sock = stream.socket if isinstance(stream, trio.SocketStream) else None
        # The end of a command written directly in part: the writer sends it before the rest
        self.rest = b""

    def send(self, call: _Call) -> None:
        """Write ``call`` now when :meth:`write_now` can, else queue it for the writer."""
        if self.write_now(call):
            return
        self.unsent.append(call)
        writer = self.writer
        if writer is not None:
            self.writer = None
            reschedule(writer)

    def write_now(self, call: _Call) -> bool:
        """Write ``call`` at once, in the caller's task, when the connection is idle (nothing
        pending, the writer waiting) and its socket is plain; True when it was written, whole
        or (the writer woken for the rest) in part. False: queue it for the writer."""
        if self.sock is None or self.pending or self.writer is None or self.dropped:
            return False
        fd = self.sock.fileno()
        if fd < 0:
            return False
        data = call.data
        try:
            sent = os.write(fd, data)
        except OSError:  # would block, or broken: the writer waits, or finds out and drops
            return False
        self.pending.append(call)
        if sent < len(data):
            self.rest = data[sent:]
            writer, self.writer = self.writer, None
            reschedule(writer)
        return True

    def abort_writer(self, raise_cancel: RaiseCancelT) -> Abort:
        self.writer = None
        return Abort.SUCCEEDED

    def fail_all(self, message: str) -> None:
        calls = [*self.pending, *self.unsent]
        self.pending.clear()
        self.unsent = []
        for call in calls:
            if call.task is not None:
                reschedule(call.task, outcome.Error(StoreUnavailable(message)))
                call.task = None


async def _read_reply(stream: trio.abc.Stream, reader: hiredis.Reader) -> Any:
    while True:
        reply = reader.gets()
        if reply is not _INCOMPLETE:
            return reply
        data = await stream.receive_some(_READ_SIZE)
        if not data:
            raise trio.BrokenResourceError("connection closed by the server")
        reader.feed(data)  # type: ignore[arg-type]  # stub omits bytearray; C accepts it
