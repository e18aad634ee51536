"""What a client holds for each job: :class:`JobHandle` (state, progress, result) and
:class:`JobLost`.

Rules of this module: a handle is completed once, by the first ``done`` of its job or by a
failure; its progress queue is bounded (:data:`PROGRESS_BUFFER`) and never blocks the reader
that fills it (later messages are dropped and logged). The client's reader calls the
underscored methods; none of them blocks.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import AsyncIterator
from typing import Any, Final, Protocol

import anyio
import anyio.lowlevel

from schedd.protocol import Done, Skipped, StageDone
from schedd.sdk._conn import RequestFailed
from schedd.sdk._native import event

__all__ = ["PROGRESS_BUFFER", "JobHandle", "JobLost"]

log = logging.getLogger("schedd.sdk.client")

PROGRESS_BUFFER: Final = 1024
"""Progress messages kept per job for a slow (or absent) reader; later ones are dropped."""


class _Cancels(Protocol):
    """What a handle needs of its client (:class:`schedd.sdk.Client`)."""

    async def cancel(self, job_id: str) -> None: ...


class _ProgressQueue:
    """A bounded queue of progress data, read as an async iterator until it is closed.

    A deque and an event rather than a memory object stream: it is filled on the client's
    read path, once per ``progress`` message, and works unchanged under trio and asyncio.
    """

    __slots__ = ("_closed", "_items", "_size", "_wakeup")

    def __init__(self, size: int) -> None:
        self._items: deque[Any] = deque()
        self._size = size
        self._closed = False
        self._wakeup: anyio.Event | None = None

    def put_nowait(self, data: Any) -> bool:
        """Queue ``data``; False when the queue is full (or closed)."""
        if self._closed or len(self._items) >= self._size:
            return False
        self._items.append(data)
        self._wake()
        return True

    def close(self) -> None:
        """No more data: readers get what is queued, then the iteration ends."""
        self._closed = True
        self._wake()

    def _wake(self) -> None:
        wakeup, self._wakeup = self._wakeup, None
        if wakeup is not None:
            wakeup.set()

    def __aiter__(self) -> _ProgressQueue:
        return self

    async def __anext__(self) -> Any:
        items = self._items
        while not items:
            if self._closed:
                raise StopAsyncIteration
            if self._wakeup is None:
                self._wakeup = anyio.Event()
            await self._wakeup.wait()
        await anyio.lowlevel.checkpoint_if_cancelled()
        return items.popleft()


class JobLost(RequestFailed):
    """The daemon no longer knows a job this client was waiting for (code ``E_NO_JOB``): its
    store lost it (Redis restarted without persistence, flushed, or failed over to a replica
    that missed it). Its ``done`` will never come; submit it again if it must run."""

    def __init__(self, job_id: str, detail: str = "") -> None:
        super().__init__(
            "E_NO_JOB",
            f"job {job_id} no longer exists on the daemon; its result will never come"
            + (f" ({detail})" if detail else ""),
            job_id=job_id,
        )
        self.detail = detail

    def copy(self) -> JobLost:
        return JobLost(self.job_id or "", self.detail)


class JobHandle:
    """One job this client submitted or follows: its state, progress stream and result.

    ``state`` is the state the daemon last reported (``accepted``, ``job`` or ``done``).
    ``duplicate`` is ``accepted.duplicate``: the ``job_id`` existed before this submit (after a
    submit retried across a reconnect, that may be the job this very call created).
    ``traceparent`` and ``tracestate`` are the job's W3C trace context as ``accepted`` gave it.
    ``attachments`` holds, once the job is done, the bytes of its result's binary attachments
    by name (``media_types`` their media types; ``done.attachments`` their declarations).
    """

    def __init__(self, client: _Cancels, job_id: str) -> None:
        self.job_id = job_id
        self.state: str = "queued"
        self.duplicate = False
        self.traceparent: str | None = None
        self.tracestate: str | None = None
        self._client = client
        self._done: Done | None = None
        self.attachments: dict[str, bytes] = {}
        self.media_types: dict[str, str] = {}
        self._failure: RequestFailed | None = None
        self._finished = event()
        # made when first used: most jobs send no progress and have no stages
        self._progress: _ProgressQueue | None = None
        self._stages: _ProgressQueue | None = None
        # True once the daemon has acknowledged the job (accepted / job): only such jobs are
        # re-followed after a reconnect; an unacknowledged submit is retried by its caller.
        self._acknowledged = False
        self._dropped_progress = 0
        self._checked = anyio.current_time()  # when the job was last known to exist
        #: the ordered session whose follow brings the job's done after a reconnect, if any
        self._session: str | None = None
        self._seq: int | None = None  # the job's seq in that session

    def __repr__(self) -> str:
        return f"<JobHandle {self.job_id} {self.state}>"

    @property
    def finished(self) -> bool:
        """True once the job's ``done`` arrived (or the handle failed)."""
        return self._finished.is_set()

    async def result(self) -> Done:
        """Wait for the job's ``done`` and return it (whatever its state: check ``done.ok``).

        To bound the wait, use ``anyio.fail_after`` (:class:`TimeoutError` under trio and
        asyncio alike), ``trio.fail_after`` or ``asyncio.timeout``; the job goes on, and the
        handle can be waited on again.

        Raises :class:`RequestFailed` if the answer can no longer come: the job is gone
        (:class:`JobLost`, or ``E_NOT_YOURS`` when re-followed), another connection follows it
        (``E_DETACHED``), its ordered session reported its ``seq`` skipped (``E_SKIPPED``:
        read its outcome with ``status``), the connection was lost with ``reconnect=False``
        (``E_UNAVAILABLE``), or the client was closed (``E_CLIENT_CLOSED``).
        """
        await self._finished.wait()
        if self._done is not None:
            return self._done
        assert self._failure is not None
        raise self._failure.copy()

    def progress(self) -> AsyncIterator[Any]:
        """The ``data`` of each ``progress`` message, in order, until the job is done.

        There is one stream per handle: two iterators share (split) it. Up to 1024 messages
        are buffered for a slow reader; later ones are dropped (and logged).
        """
        return self._progress_queue()

    def stages(self) -> AsyncIterator[StageDone]:
        """A pipeline's ``stage_done`` messages, in the order they came, until its ``done``
        (nothing for a job that is not a pipeline). Buffered as :meth:`progress`."""
        return self._stages_queue()

    def _progress_queue(self) -> _ProgressQueue:
        queue = self._progress
        if queue is None:
            queue = self._progress = self._new_queue()
        return queue

    def _stages_queue(self) -> _ProgressQueue:
        queue = self._stages
        if queue is None:
            queue = self._stages = self._new_queue()
        return queue

    def _new_queue(self) -> _ProgressQueue:
        queue = _ProgressQueue(PROGRESS_BUFFER)
        if self.finished:  # made after the end: it holds nothing and ends at once
            queue.close()
        return queue

    def _close_queues(self) -> None:
        for queue in (self._progress, self._stages):
            if queue is not None:
                queue.close()

    async def cancel(self) -> None:
        """Cancel the job; its ``done`` (state ``canceled``) then completes :meth:`result`."""
        await self._client.cancel(self.job_id)

    # The client's reader calls these; none of them blocks.

    def _skipped_by(self, skipped: Skipped) -> bool:
        """True when ``skipped`` names this job's seq: its ``done`` will never come here."""
        return (not self.finished and self._seq is not None
                and self._session == skipped.session_id
                and skipped.from_seq <= self._seq <= skipped.to_seq)

    def _push_progress(self, data: Any) -> None:
        if self.finished:
            return
        if not self._progress_queue().put_nowait(data):
            self._dropped_progress += 1
            if self._dropped_progress == 1:
                log.warning("job %s: progress is not being read; dropping", self.job_id)

    def _push_stage(self, stage: StageDone) -> None:
        if not self.finished and not self._stages_queue().put_nowait(stage):
            log.warning("job %s: stage %s dropped (stages are not being read)", self.job_id,
                        stage.stage)

    def _finish(self, done: Done, attachments: dict[str, bytes] | None = None) -> None:
        if self.finished:
            return
        self._done = done
        self.attachments = dict(attachments or {})
        self.media_types = {spec.name: spec.media_type for spec in done.attachments}
        self.state = done.state
        self._finished.set()
        self._close_queues()

    def _fail(self, failure: RequestFailed) -> None:
        if self.finished:
            return
        self._failure = failure
        self._finished.set()
        self._close_queues()
