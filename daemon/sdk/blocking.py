"""A blocking client, for code with no event loop: a web view, a batch script, a notebook.

::

    with BlockingClient("tcp://127.0.0.1:8766", token="app-key") as client:
        handle = client.submit({"text": "你好"}, pools=["zh>en"])
        for partial in handle.progress():
            print(partial)
        done = handle.result(timeout=30)

Rules of this module:

- One :class:`BlockingClient` runs one background thread with an event loop (an anyio blocking
  portal) holding ONE :class:`~schedd.sdk.Client` connection, with its reconnects, failover,
  re-follows and lost-job checks. Every method hands a call to that loop and blocks the calling
  thread until it returns, so any number of threads can share one client: the async client is
  only ever touched from its loop's thread.
- It goes through the public async API only (``Client.connect`` and the client's and handles'
  methods): what they raise reaches the caller as it is (:class:`RequestFailed`,
  :class:`JobLost`, ``ConnectFailed``, ``ValueError``).
- ``result(timeout=...)`` and ``progress(timeout=...)`` raise the builtin ``TimeoutError`` when
  the time runs out; the job goes on (wait again, or cancel it).
- :meth:`BlockingClient.close` is idempotent and fails every waiting call and handle with
  :class:`RequestFailed` ``E_CLIENT_CLOSED``; so does any call made after it.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from concurrent.futures import CancelledError
from contextlib import AbstractContextManager
from functools import partial
from types import TracebackType
from typing import Any, Final, TypeVar

import anyio
from anyio.from_thread import BlockingPortal, start_blocking_portal

from schedd.protocol import Done, Job, StageDone
from schedd.sdk._conn import E_CLIENT_CLOSED, RequestFailed
from schedd.sdk.client import Client, JobHandle
from schedd.sdk.session import OrderedSession, SessionResult

__all__ = ["BlockingClient", "BlockingJobHandle", "BlockingOrderedSession"]

_T = TypeVar("_T")
_BACKEND: Final = "trio"
"""The event loop the background thread runs."""
_END: Final = object()
"""What a progress step returns once the job's stream has ended."""


def _closed() -> RequestFailed:
    return RequestFailed(E_CLIENT_CLOSED, "the client is closed")


class BlockingJobHandle:
    """One job of a :class:`BlockingClient`: its state, progress and result, from any thread.

    ``job_id``, ``state``, ``duplicate`` and ``finished`` are those of the async
    :class:`~schedd.sdk.JobHandle` it wraps (``state`` is the one the daemon last reported).
    """

    def __init__(self, client: BlockingClient, handle: JobHandle) -> None:
        self._client = client
        self._handle = handle
        self.job_id = handle.job_id

    def __repr__(self) -> str:
        return f"<BlockingJobHandle {self.job_id} {self.state}>"

    @property
    def state(self) -> str:
        return self._handle.state

    @property
    def duplicate(self) -> bool:
        return self._handle.duplicate

    @property
    def traceparent(self) -> str | None:
        """The job's W3C traceparent, as ``accepted`` gave it."""
        return self._handle.traceparent

    @property
    def tracestate(self) -> str | None:
        return self._handle.tracestate

    @property
    def finished(self) -> bool:
        return self._handle.finished

    @property
    def attachments(self) -> dict[str, bytes]:
        """The result's binary attachments, by name, once the job is done."""
        return self._handle.attachments

    def result(self, timeout: float | None = None) -> Done:
        """Block until the job's ``done`` and return it (whatever its state: check ``done.ok``).

        Raises ``TimeoutError`` when ``timeout`` seconds pass first, and
        :class:`RequestFailed` (:class:`JobLost`...) when the answer can no longer come, as
        :meth:`schedd.sdk.JobHandle.result` does.
        """
        return self._client._call(partial(_within, timeout, self._handle.result))

    def progress(self, timeout: float | None = None) -> Iterator[Any]:
        """The ``data`` of each ``progress`` message, in order, until the job is done.

        One stream per handle, as for the async handle: two iterators share (split) it.
        ``timeout`` bounds the wait for each message (``TimeoutError``).
        """
        return self._drain(self._handle.progress(), timeout)

    def stages(self, timeout: float | None = None) -> Iterator[StageDone]:
        """A pipeline's ``stage_done`` messages, in order, until its ``done`` (see
        :meth:`schedd.sdk.JobHandle.stages`); ``timeout`` as for :meth:`progress`."""
        return self._drain(self._handle.stages(), timeout)

    def _drain(self, stream: AsyncIterator[Any], timeout: float | None) -> Iterator[Any]:
        async def step() -> Any:
            try:
                return await stream.__anext__()
            except StopAsyncIteration:
                return _END

        while True:
            item = self._client._call(partial(_within, timeout, step))
            if item is _END:
                return
            yield item

    def cancel(self) -> None:
        """Cancel the job; its ``done`` (state ``canceled``) then completes :meth:`result`."""
        self._client.cancel(self.job_id)


class BlockingOrderedSession:
    """An ordered session's results, in seq order, from any thread (see
    :class:`schedd.sdk.OrderedSession`)."""

    def __init__(self, client: BlockingClient, session: OrderedSession) -> None:
        self._client = client
        self._session = session
        self.session_id = session.session_id

    def __repr__(self) -> str:
        return f"<BlockingOrderedSession {self.session_id}>"

    def next(self, timeout: float | None = None) -> SessionResult:
        """Block until the session's next result (``done`` or ``skipped``) and return it;
        ``TimeoutError`` when ``timeout`` seconds pass first."""
        return self._client._call(partial(_within, timeout, self._session.next))


async def _within(limit: float | None, wait: Callable[[], Awaitable[_T]]) -> _T:
    with anyio.fail_after(limit):
        return await wait()


class BlockingClient:
    """A :class:`~schedd.sdk.Client` for threads: connects on creation, one background loop.

    Takes the same arguments as :meth:`schedd.sdk.Client.connect`. Connecting raises what that
    raises (``ConnectFailed`` when no URL answers, :class:`RequestFailed` when the daemon
    refuses ``hello``). Use it as a context manager, or call :meth:`close`: the background
    thread runs until then.
    """

    def __init__(
        self,
        urls: str | Sequence[str],
        *,
        token: str | None = None,
        name: str | None = None,
        connect_timeout: float = 5.0,
        reconnect: bool = True,
        lost_check_interval: float | None = 30.0,
        rate_limited_retries: int = 3,
    ) -> None:
        self._lock = threading.Lock()
        self._closed = False
        self._portal_cm: AbstractContextManager[BlockingPortal] = start_blocking_portal(_BACKEND)
        self._portal = self._portal_cm.__enter__()
        try:
            self._client_cm = self._portal.wrap_async_context_manager(
                Client.connect(
                    urls, token=token, name=name, connect_timeout=connect_timeout,
                    reconnect=reconnect, lost_check_interval=lost_check_interval,
                    rate_limited_retries=rate_limited_retries,
                )
            )
            self._client = self._client_cm.__enter__()
        except BaseException:
            self._portal_cm.__exit__(None, None, None)
            raise

    def __enter__(self) -> BlockingClient:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def principal(self) -> str:
        """The principal of the current connection (from ``welcome``)."""
        return self._client.principal

    @property
    def instance(self) -> str:
        """The daemon instance of the current connection (from ``welcome``)."""
        return self._client.instance

    # ----------------------------------------------------------------------------------------
    # Requests: the async client's, run in the background loop.
    # ----------------------------------------------------------------------------------------

    def submit(self, payload: Any = None, **options: Any) -> BlockingJobHandle:
        """Submit a job; return its handle once the daemon has accepted it. ``options`` are
        :meth:`schedd.sdk.Client.submit`'s keyword arguments (``pools``, ``job_id``,
        ``traceparent``...), passed on as they are, so the two clients take the same."""
        return BlockingJobHandle(self, self._call(partial(self._client.submit, payload, **options)))

    def submit_many(self, jobs: Sequence[Mapping[str, Any]]) -> list[BlockingJobHandle]:
        """Submit several jobs at once; a handle per job, in order (see
        :meth:`schedd.sdk.Client.submit_many`: a refused job's ``result()`` raises)."""
        handles = self._call(partial(self._client.submit_many, jobs))
        return [BlockingJobHandle(self, handle) for handle in handles]

    def status(self, job_id: str) -> Job:
        """A snapshot of the job (``E_NO_JOB``, ``E_NOT_YOURS`` raise :class:`RequestFailed`)."""
        return self._call(partial(self._client.status, job_id))

    def cancel(self, job_id: str) -> None:
        """Cancel a job (see :meth:`schedd.sdk.Client.cancel`)."""
        self._call(partial(self._client.cancel, job_id))

    def follow(self, job_id: str) -> BlockingJobHandle:
        """Attach to a job submitted earlier by this principal."""
        return BlockingJobHandle(self, self._call(partial(self._client.follow, job_id)))

    def query(self, what: str, **filters: Any) -> dict[str, Any]:
        """A global view from the daemon, or a page of this principal's jobs (see
        :meth:`schedd.sdk.Client.query`)."""
        return self._call(partial(self._client.query, what, **filters))

    def admin(self, action: str, **fields: Any) -> list[dict[str, Any]]:
        """An operator action (needs an admin token; see :meth:`schedd.sdk.Client.admin`)."""
        return self._call(partial(self._client.admin, action, **fields))

    def session(self, session_id: str) -> BlockingOrderedSession:
        """An ordered session's results in seq order (see :meth:`schedd.sdk.Client.session`)."""
        async def get() -> OrderedSession:
            return self._client.session(session_id)

        return BlockingOrderedSession(self, self._call(get))

    def follow_session(self, session_id: str) -> BlockingOrderedSession:
        """Attach to an ordered session of this principal (see
        :meth:`schedd.sdk.Client.follow_session`)."""
        return BlockingOrderedSession(
            self, self._call(partial(self._client.follow_session, session_id)))

    # ----------------------------------------------------------------------------------------
    # The background loop.
    # ----------------------------------------------------------------------------------------

    def close(self) -> None:
        """Close the connection and stop the background thread. Idempotent.

        Calls waiting in other threads fail with :class:`RequestFailed` ``E_CLIENT_CLOSED``.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
        try:
            self._client_cm.__exit__(None, None, None)
        finally:
            # Calls still running (a submit waiting for a connection...) are cancelled; their
            # callers get E_CLIENT_CLOSED from _call.
            try:
                self._portal.call(self._portal.stop, True)
            finally:
                self._portal_cm.__exit__(None, None, None)

    def _call(self, func: Callable[[], Awaitable[_T]]) -> _T:
        """Run ``func()`` in the background loop; block until it returns."""
        if self._closed:
            raise _closed()
        try:
            return self._portal.call(func)
        except (CancelledError, RuntimeError) as exc:
            # The portal stopped under the call (close() in another thread) or before it.
            if self._closed:
                raise _closed() from exc
            raise
