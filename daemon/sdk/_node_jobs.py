"""The node's jobs: running each in its task, and what the node sends about them.

Rules of this module (the node's own are in schedd.sdk.node):

- A job's messages (``accept``, ``reject``, ``progress``, ``result``) go through the link's
  :class:`~schedd.sdk._node_out.Batcher`: messages ready together leave in one write. An
  ``accept`` is posted without waiting for its write and the job starts at once, so the result
  of a job that takes no time goes out in the same write as its accept. If that write fails the
  connection is lost: the job goes on, and is listed in ``running`` at the next registration,
  like every job that outlives its connection.
- A ``result`` stays in the outbox until a ``pong`` sent after it confirms that the daemon
  handled it. Results finished together, and their ``ping``, leave in one write.
- Job messages carry a ``ref`` naming their attempt (``j<attempt>.<n>``), so that an error about
  one is matched to the attempt.
"""

from __future__ import annotations

import contextlib
import logging
import random
from collections.abc import Sequence
from typing import Any, Final

import anyio

from schedd.protocol import Accept, Message, Ping, Pong, Progress, Reject, Result, encode
from schedd.sdk._conn import Link, LinkLost, with_ref
from schedd.sdk._native import TaskGroup
from schedd.sdk._node_out import Batcher
from schedd.sdk.job import (
    E_NODE_EXCEPTION,
    Handler,
    JobContext,
    JobError,
    failure_result,
    over_limits,
    success_result,
)

log = logging.getLogger("schedd.sdk.node")

_RESEND_DELAY: Final = 0.3
"""Seconds (±50 %) before a result the daemon could not store (``E_UNAVAILABLE``) goes again."""

JobMessage = Accept | Reject | Progress | Result


class NodeJobs:
    """The part of :class:`~schedd.sdk.node.Node` that runs jobs and sends their messages."""

    max_attachment: int
    max_attachments: int
    running: dict[str, JobContext]
    _handler: Handler
    _link: Link | None
    #: the batcher of the connection being served (set before it registers)
    _batcher: Batcher | None
    _outbox: dict[tuple[str, int], Result]
    _result_blobs: dict[tuple[str, int], list[bytes]]
    _jobs: TaskGroup | None

    def _drop(self, job_id: str, attempt: int | None) -> bool:
        """Stop an attempt the node must not finish; True if it was running here."""
        self._outbox = {
            key: result
            for key, result in self._outbox.items()
            if not (key[0] == job_id and (attempt is None or key[1] == attempt))
        }
        self._result_blobs = {key: blobs for key, blobs in self._result_blobs.items()
                              if key in self._outbox}
        ctx = self.running.get(job_id)
        if ctx is None or (attempt is not None and ctx.attempt != attempt):
            return False
        ctx._scope.cancel()
        del self.running[job_id]
        return True

    async def _run_job(self, ctx: JobContext) -> None:
        result: Result | None = None
        blobs: list[bytes] = []
        with ctx._scope:
            try:
                output = await self._handler(ctx)
            except JobError as exc:
                result = failure_result(ctx, exc.code, exc.message, retryable=exc.retryable)
            except Exception as exc:
                log.exception("job %s attempt %d: the handler raised", ctx.job_id, ctx.attempt)
                result = failure_result(ctx, E_NODE_EXCEPTION, f"{type(exc).__name__}: {exc}")
            else:
                result, blobs = success_result(ctx, output)
                too_large = over_limits(blobs, self.max_attachment, self.max_attachments)
                if too_large:
                    log.error("job %s attempt %d: %s", ctx.job_id, ctx.attempt, too_large)
                    result, blobs = failure_result(ctx, "E_TOO_LARGE", too_large), []
        if self.running.get(ctx.job_id) is ctx:
            del self.running[ctx.job_id]
        if ctx._scope.cancel_called or result is None:
            return  # cancelled or stale: send nothing more about this attempt
        key = (ctx.job_id, ctx.attempt)
        self._outbox[key] = result
        if blobs:
            self._result_blobs[key] = blobs
        link = self._link
        if link is not None:
            # On LinkLost the result stays in the outbox, sent again after the next registration.
            with contextlib.suppress(LinkLost):
                await self._flush(link, [result])

    async def _resend_result(self, link: Link, result: Result) -> None:
        await anyio.sleep(_RESEND_DELAY * (0.5 + random.random()))
        key = (result.job_id, result.attempt)
        if link is self._link and self._outbox.get(key) is result:
            with contextlib.suppress(LinkLost):
                await self._flush(link, [result])

    async def _flush(self, link: Link, results: list[Result]) -> None:
        """Send results, then a ping, in one write with what else is ready; once the pong comes
        they are handled: drop them."""
        batcher = self._batcher_of(link)
        if batcher is None:
            for result in results:
                await self._send_job(link, result.attempt, result)
            await link.request(Ping(), Pong)
        else:
            for result in results:
                self._post_job(batcher, result.attempt, result)
            await link.request(Ping(), Pong, send=batcher.send)
        for result in results:
            key = (result.job_id, result.attempt)
            if self._outbox.get(key) is result:
                del self._outbox[key]
                self._result_blobs.pop(key, None)

    async def _send_progress(self, ctx: JobContext, data: Any) -> None:
        message = Progress(job_id=ctx.job_id, attempt=ctx.attempt, data=data)
        encode(message)  # a TypeError for data JSON cannot carry, even while disconnected
        link = self._link
        if link is None or ctx._scope.cancel_called or self.running.get(ctx.job_id) is not ctx:
            return
        with contextlib.suppress(LinkLost):
            await self._send_job(link, ctx.attempt, message)

    def _batcher_of(self, link: Link) -> Batcher | None:
        batcher = self._batcher
        return batcher if batcher is not None and batcher.link is link else None

    def _post_job(self, batcher: Batcher, attempt: int, message: JobMessage) -> None:
        """Queue a job message for the batcher's next write (no wait); :class:`LinkLost` when
        the connection has ended."""
        batcher.post(*self._framed(batcher.link, attempt, message))

    async def _send_job(self, link: Link, attempt: int, message: JobMessage) -> None:
        """Send a job message (with what else is ready) and wait until it is written."""
        batcher = self._batcher_of(link)
        if batcher is None:
            await link.send(*self._framed(link, attempt, message))
        else:
            await batcher.send(*self._framed(link, attempt, message))

    def _framed(self, link: Link, attempt: int, message: JobMessage,
                ) -> tuple[Message, Sequence[bytes]]:
        # The ref names the attempt, so an error about this message is matched to it.
        data = (self._result_blobs.get((message.job_id, attempt), [])
                if isinstance(message, Result) else [])
        return with_ref(message, link.next_ref(f"j{attempt}.")), data
