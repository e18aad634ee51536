"""The Python client: submit jobs to a schedd daemon and wait for their results.

::

    async with Client.connect("ws://127.0.0.1:8765/", token="app-key") as client:
        handle = await client.submit({"text": "你好"}, pools=["zh>en"])
        async for partial in handle.progress():
            print(partial)
        done = await handle.result()

Rules of this module:

- Every job has a :class:`JobHandle`, registered *before* its ``submit`` or ``follow`` is sent,
  so a ``done`` that arrives right behind the reply is never lost. The first ``done`` of a job
  completes its handle; later ones (a duplicate submit, a re-follow after a reconnect) are
  ignored: ``done`` is idempotent by ``job_id``.
- ``submit`` always carries a ``job_id`` (generated here when the caller gives none), which makes
  every client request idempotent: with ``reconnect=True`` a request whose connection drops is
  sent again on the next connection, instead of failing. ``E_SHUTTING_DOWN`` on ``submit`` moves
  the client to another daemon URL and submits again.
- After a reconnect the client sends ``follow`` for every job it still waits for, so
  :meth:`JobHandle.result` completes whichever instance the job finished on.
- A ``submit`` with a ``seq`` puts the job in an ordered session of the principal; the session's
  results (``done``, ``skipped``) also go, in ``seq`` order, to its :class:`OrderedSession`
  (:meth:`Client.session`). A ``skipped`` range fails the handles of its seqs with
  :data:`E_SKIPPED` (their ``done`` never comes). After a reconnect the client sends
  ``follow_session`` for every session it has, so results that waited in the daemon for a
  follower come to it (its jobs' handles too: they are not re-followed one by one).
- A job followed by another connection of the principal since (``E_DETACHED`` for the job: the
  daemon sends its ``progress`` and ``done`` there) fails its handle with
  :class:`RequestFailed`; :meth:`Client.follow` takes it back.
- With ``reconnect=False``, or after a fatal error when reconnecting (``E_AUTH``...), waiting
  requests and handles fail with :class:`RequestFailed`.
- A job the daemon no longer knows (its store lost it: Redis restarted without persistence,
  flushed, or failed over to a replica that missed it) fails its handle with :class:`JobLost`
  instead of leaving it waiting forever. It is noticed when a re-follow after a reconnect gets
  ``E_NO_JOB``, and by a ``status`` sent for each handle that has waited ``lost_check_interval``
  seconds since it was last checked (at most ``_LOST_CHECK_BATCH`` per interval, the longest
  unchecked first).
- The first connection is tried once per URL: :meth:`Client.connect` raises if no daemon answers.
  Later reconnects retry with backoff until they succeed (bound them with ``anyio.fail_after``,
  ``trio.fail_after`` or ``asyncio.timeout``).
- A ``submit`` refused with ``E_RATE_LIMITED`` (the principal's submit rate) is sent again after
  the wait the daemon names, up to ``rate_limited_retries`` times and only when that wait is at
  most ``_MAX_RATE_WAIT`` seconds (:mod:`schedd.sdk._upkeep`); then the refusal is raised.
- The same code runs under trio and asyncio (anyio); see :mod:`schedd.sdk.connect` for the
  channels each uses.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from functools import partial
from typing import Any, Final, TypeVar

import anyio
import anyio.abc
import anyio.lowlevel

from schedd.protocol import (
    E_DETACHED,
    E_SHUTTING_DOWN,
    E_UNAVAILABLE,
    Accepted,
    Acted,
    Admin,
    Answer,
    Cancel,
    Done,
    Error,
    Follow,
    FollowSession,
    Job,
    Message,
    Pong,
    Progress,
    Query,
    Session,
    Skipped,
    StageDone,
    Status,
    Submit,
)
from schedd.protocol.attachments import DEFAULT_MAX_ATTACHMENT, DEFAULT_MAX_ATTACHMENTS
from schedd.sdk._conn import E_CLIENT_CLOSED, Link, LinkLost, RequestFailed, reraise_sole
from schedd.sdk._dial import Backoff, Dialer
from schedd.sdk._submits import acknowledge, submit_many, submit_message
from schedd.sdk._upkeep import submit_paced, watch_lost
from schedd.sdk.handle import JobHandle, JobLost
from schedd.sdk.job import Attachments
from schedd.sdk.session import E_SKIPPED, OrderedSession

__all__ = ["E_CLIENT_CLOSED", "E_SKIPPED", "Client", "JobHandle", "JobLost", "OrderedSession",
           "RequestFailed"]

log = logging.getLogger(__name__)

_RECONNECT_DELAY: Final = 0.2
_FOLLOW_RETRIES: Final = 5
"""Tries to re-follow a job after a reconnect when the daemon says "retry later"."""
_GONE_CODES: Final = frozenset({"E_NO_JOB", "E_NOT_YOURS"})
_LOST_CHECK_INTERVAL: Final = 30.0
"""Default seconds a handle waits between two checks that its job still exists."""
_M = TypeVar("_M", bound=Message)


class Client:
    """A connection (kept alive and re-established) to a schedd daemon, as a client.

    Create it with :meth:`connect`; ``principal`` and ``instance`` come from ``welcome`` (of
    the current connection).
    """

    principal: str
    instance: str

    def __init__(
        self,
        urls: str | Sequence[str],
        *,
        token: str | None = None,
        name: str | None = None,
        connect_timeout: float = 5.0,
        reconnect: bool = True,
        lost_check_interval: float | None = _LOST_CHECK_INTERVAL,
        rate_limited_retries: int = 3,
    ) -> None:
        self._rate_limited_retries = rate_limited_retries
        self._dialer = Dialer(
            urls, role="client", token=token, name=name, connect_timeout=connect_timeout
        )
        self._reconnect = reconnect
        self._lost_check_interval = lost_check_interval
        self._link: Link | None = None
        self._connected = anyio.Event()
        self._handles: dict[str, JobHandle] = {}
        self._sessions: dict[str, OrderedSession] = {}
        self._closed = False
        self._broken: RequestFailed | None = None
        self._nursery: anyio.abc.TaskGroup | None = None
        self.principal = ""
        self.instance = ""
        #: the daemon's ``[limits] max_attachment`` and ``max_attachments`` (defaults: the
        #: daemon's): a submit over them is refused here (``E_TOO_LARGE``), never sent, since
        #: the daemon would refuse it, and one over ``max_attachment`` with the connection
        self.max_attachment = DEFAULT_MAX_ATTACHMENT
        self.max_attachments = DEFAULT_MAX_ATTACHMENTS

    @classmethod
    @asynccontextmanager
    async def connect(
        cls,
        urls: str | Sequence[str],
        *,
        token: str | None = None,
        name: str | None = None,
        connect_timeout: float = 5.0,
        reconnect: bool = True,
        lost_check_interval: float | None = _LOST_CHECK_INTERVAL,
        rate_limited_retries: int = 3,
    ) -> AsyncIterator[Client]:
        """Connect to the first of ``urls`` that answers; close everything on exit.

        A job waited for longer than ``lost_check_interval`` seconds is checked (``status``)
        every that many seconds; one the daemon no longer knows fails its handle with
        :class:`JobLost`. ``None``: no checks (a lost job is then noticed only on a reconnect).

        A ``submit`` refused with ``E_RATE_LIMITED`` is sent again after the daemon's
        ``retry_after``, at most ``rate_limited_retries`` times (0: raise at once).

        Raises :class:`RequestFailed` when a daemon refuses ``hello`` (``E_AUTH``,
        ``E_VERSION``...) and ``ConnectFailed`` when no URL can be reached.
        """
        client = cls(
            urls, token=token, name=name, connect_timeout=connect_timeout, reconnect=reconnect,
            lost_check_interval=lost_check_interval, rate_limited_retries=rate_limited_retries,
        )
        # The first dial happens out of the nursery so that its errors reach the caller as
        # they are, not wrapped in an ExceptionGroup.
        stack, link = await client._dialer.dial()
        client._attach(link)
        # The first connection's channel is closed here, in the task that opened it (a ws://
        # channel holds a nursery, which must be exited by the task that entered it).
        async with stack:
            try:
                async with anyio.create_task_group() as nursery:
                    client._nursery = nursery
                    nursery.start_soon(client._supervise, link)
                    if lost_check_interval is not None:
                        nursery.start_soon(watch_lost, client._handles.values,
                                           client._get_open_link, client._lose,
                                           lost_check_interval)
                    try:
                        yield client
                    finally:
                        client._close()
                        nursery.cancel_scope.cancel()
            except BaseExceptionGroup as group:
                reraise_sole(group)

    # ----------------------------------------------------------------------------------------
    # Requests.
    # ----------------------------------------------------------------------------------------

    async def submit(
        self,
        payload: Any = None,
        *,
        pools: Sequence[str] = (),
        requirements: Mapping[str, Any] | None = None,
        job_id: str | None = None,
        session_id: str | None = None,
        priority: int = 0,
        services: Sequence[str] = (),
        ack_timeout: float | None = None,
        run_timeout: float | None = None,
        queue_timeout: float | None = None,
        max_attempts: int | None = None,
        cost: int = 1,
        traceparent: str | None = None,
        tracestate: str | None = None,
        delay: float | None = None,
        not_before: float | None = None,
        backoff_base: float | None = None,
        backoff_max: float | None = None,
        result_ttl: float | None = None,
        keep_payload: bool = False,
        stages: Sequence[Mapping[str, Any]] | None = None,
        fail_fast: bool = False,
        seq: int | None = None,
        gap_timeout: float | None = None,
        attachments: Attachments | None = None,
    ) -> JobHandle:
        """Submit a job and return its handle once the daemon has accepted it.

        With ``stages`` (docs/protocol.md, "Pipelines") the job is a pipeline: each stage object
        names its ``pools`` or ``requirements`` (and optionally timeouts, ``max_attempts``,
        ``with`` and ``branches``); ``handle.stages()`` yields each stage's ``stage_done`` as it
        comes and ``handle.result()`` is the pipeline's ``done``, whose ``output`` holds every
        stage's output. ``fail_fast``: the first branch that fails cancels the others.

        ``attachments``: binary data sent beside the payload as bytes, never base64
        (``{"audio.wav": data}``, ``{name: (data, media_type)}`` or ``[(name, data,
        media_type)]``); the node's handler finds them in ``JobContext.attachments``, and the
        attachments its result returns come back in ``handle.attachments``. Attachments over
        :attr:`max_attachment` or :attr:`max_attachments` raise :class:`RequestFailed`
        ``E_TOO_LARGE`` without being sent.

        Without ``job_id`` one is generated, so the submit can be retried safely; without
        ``traceparent`` (W3C Trace Context) the daemon makes one (``handle.traceparent``).
        ``delay`` (seconds) or ``not_before`` (unix seconds) hold the job back; ``backoff_*``
        shape the waits between retryable failures; ``result_ttl`` and ``keep_payload`` what the
        daemon keeps of the finished job (docs/protocol.md, ``submit``). ``cost``: the slots of
        its node the job takes (1 to 4096). Raises
        ``ValueError`` (``InvalidField``) for an argument the protocol forbids and
        :class:`RequestFailed` when the daemon refuses the job (``E_DUPLICATE_SEQ``...).

        With ``seq`` (and ``session_id``) the job is the ``seq``-th of that ordered session: its
        done comes after every lower seq's, to its handle and to :meth:`session`'s stream.
        ``gap_timeout``: seconds a missing lower seq may hold the session's results.
        """
        message, blobs = submit_message(
            self, job_id=job_id, pools=pools, requirements=requirements, services=services,
            stages=stages, payload=payload, session_id=session_id, priority=priority,
            ack_timeout=ack_timeout, run_timeout=run_timeout, queue_timeout=queue_timeout,
            max_attempts=max_attempts, traceparent=traceparent, tracestate=tracestate,
            delay=delay, not_before=not_before, backoff_base=backoff_base,
            backoff_max=backoff_max, result_ttl=result_ttl, keep_payload=keep_payload,
            fail_fast=fail_fast, seq=seq, gap_timeout=gap_timeout, cost=cost,
            attachments=attachments)
        assert message.job_id is not None
        handle, created = self._handle(message.job_id)
        try:
            accepted = await submit_paced(partial(self._request, message, Accepted, blobs),
                                          message.job_id, self._rate_limited_retries)
        except BaseException:
            if created and not handle._acknowledged:
                self._forget(handle)
            raise
        return acknowledge(handle, accepted, message)

    async def submit_many(self, jobs: Sequence[Mapping[str, Any]]) -> list[JobHandle]:
        """Submit several jobs at once: each mapping holds :meth:`submit`'s keyword arguments
        (``payload`` among them). They go in array frames of the daemon's ``max_batch``, which
        stores each frame's run of jobs with one script call. Returns a handle per job, in
        order, once every job is answered: a job the daemon refused has a finished handle whose
        ``result()`` raises its :class:`RequestFailed`. Raises ``ValueError`` before sending
        anything for an argument the protocol forbids or a job with attachments."""
        return await submit_many(self, jobs)

    async def status(self, job_id: str) -> Job:
        """A snapshot of the job (``E_NO_JOB``, ``E_NOT_YOURS`` raise :class:`RequestFailed`)."""
        return await self._request(Status(job_id=job_id), Job)

    async def cancel(self, job_id: str) -> None:
        """Cancel a job. Returns once the daemon has handled the request; the job's ``done``
        (state ``canceled``) confirms the cancellation. A finished job is left as it is."""
        message = Cancel(job_id=job_id)
        while True:
            link = await self._get_link()
            try:
                await link.send_confirmed(message)
                return
            except LinkLost:
                self._check_retry()

    async def follow(self, job_id: str) -> JobHandle:
        """Attach to a job submitted earlier (by this principal); its progress and done come
        to this client from now on."""
        handle, created = self._handle(job_id)
        try:
            job = await self._request(Follow(job_id=job_id), Job)
        except BaseException:
            if created and not handle._acknowledged:
                self._forget(handle)
            raise
        if not handle.finished:
            handle.state = job.state
        handle._acknowledged = True
        return handle

    def session(self, session_id: str) -> OrderedSession:
        """The stream of an ordered session's results, in seq order (the same object for the
        same ``session_id``); it receives what comes from now on."""
        session = self._sessions.get(session_id)
        if session is None:
            session = self._sessions[session_id] = OrderedSession(session_id)
        return session

    async def follow_session(self, session_id: str) -> OrderedSession:
        """Attach this connection to an ordered session of the principal (submitted to by an
        earlier connection): the results that waited for a follower, then the later ones, come
        to the returned stream. :class:`RequestFailed` ``E_NO_SESSION`` when there is none."""
        session = self.session(session_id)
        await self._request(FollowSession(session_id=session_id), Session)
        return session

    async def query(self, what: str, **filters: Any) -> dict[str, Any]:
        """A global view from the daemon: ``nodes``, ``pools``, ``stats`` or ``clients``
        (``answer.data``); or ``jobs``: one page of this principal's jobs, ``{"jobs": [...],
        "cursor": ...}``, narrowed by ``filters`` (``state``, ``pool``, ``node``, ``since``,
        ``until`` in unix ms, ``limit`` up to 500, ``cursor`` of the previous page)."""
        answer = await self._request(Query(what=what, **filters), Answer)
        return answer.data

    async def admin(self, action: str, **fields: Any) -> list[dict[str, Any]]:
        """An operator action (``admin``, fields as docs/protocol.md gives them): its results.
        Needs an admin token (else :class:`RequestFailed` ``E_FORBIDDEN``); idempotent."""
        return (await self._request(Admin(action=action, **fields), Acted)).results

    async def _request(self, message: Message, expect: type[_M],
                       data: Sequence[bytes] = ()) -> _M:
        # Every client request is idempotent (submits always carry a job_id), so a request cut
        # off by a lost connection is sent again on the next one.
        shutting_down_retries = 0
        while True:
            link = await self._get_link()
            try:
                return await link.request(message, expect, data)
            except LinkLost:
                self._check_retry()
            except RequestFailed as exc:
                if (
                    exc.code == E_SHUTTING_DOWN
                    and isinstance(message, Submit)
                    and self._reconnect
                    and shutting_down_retries < 2 * len(self._dialer.urls)
                ):
                    shutting_down_retries += 1
                    log.info("%s is shutting down; moving to another daemon", link.url)
                    await link.aclose()  # the supervisor reconnects to the next URL
                    continue
                raise

    def _check_retry(self) -> None:
        if not self._reconnect:
            raise RequestFailed(E_UNAVAILABLE, "the connection was lost before the reply")

    async def _get_link(self) -> Link:
        while True:
            if self._closed:
                raise RequestFailed(E_CLIENT_CLOSED, "the client is closed")
            if self._broken is not None:
                raise self._broken.copy()
            link = self._link
            if link is None:
                await self._connected.wait()
            elif link.closed:
                # Lost, but the supervisor has not noticed yet: wait for it to move on.
                await link.wait_ended()
                await anyio.lowlevel.checkpoint()
            else:
                return link

    # ----------------------------------------------------------------------------------------
    # Handles.
    # ----------------------------------------------------------------------------------------

    def _handle(self, job_id: str) -> tuple[JobHandle, bool]:
        handle = self._handles.get(job_id)
        if handle is not None and not handle.finished:
            return handle, False
        handle = self._handles[job_id] = JobHandle(self, job_id)
        return handle, True

    def _forget(self, handle: JobHandle) -> None:
        if self._handles.get(handle.job_id) is handle:
            del self._handles[handle.job_id]

    # ----------------------------------------------------------------------------------------
    # The connection: reader, reconnects, re-follows.
    # ----------------------------------------------------------------------------------------

    async def _supervise(self, link: Link) -> None:
        backoff = Backoff(_RECONNECT_DELAY)
        # The first link's channel belongs to connect(); later ones are opened and closed here.
        stack = AsyncExitStack()
        first = True
        while True:
            async with stack:
                self._attach(link)
                if not first:
                    assert self._nursery is not None
                    self._nursery.start_soon(self._refollow, link)
                first = False
                await link.serve(self._on_message, keepalive=link.welcome.heartbeat_interval)
            self._detach(link)
            if not self._reconnect:
                self._break(RequestFailed(E_UNAVAILABLE, f"the connection to {link.url} was lost"))
                return
            log.warning("connection to %s lost; reconnecting", link.url)
            self._dialer.rotate()
            await backoff.sleep()
            try:
                stack, link = await self._dialer.dial_retrying(backoff)
            except RequestFailed as exc:
                log.error("cannot reconnect: %s", exc)
                self._break(exc)
                return
            backoff.reset()

    def _attach(self, link: Link) -> None:
        self._link = link
        self.principal = link.welcome.principal
        self.instance = link.welcome.instance
        self._connected.set()

    def _detach(self, link: Link) -> None:
        if self._link is link:
            self._link = None
            self._connected = anyio.Event()

    def _break(self, failure: RequestFailed) -> None:
        """No connection will come back: fail every waiter and handle."""
        self._broken = failure
        self._fail_all(failure)

    def _close(self) -> None:
        self._closed = True
        self._fail_all(RequestFailed(E_CLIENT_CLOSED, "the client is closed"))

    def _fail_all(self, failure: RequestFailed) -> None:
        for handle in list(self._handles.values()):
            handle._fail(failure.copy())
        self._handles.clear()
        self._connected.set()

    async def _refollow(self, link: Link) -> None:
        # a job of an ordered session comes back with its session's follow, in its turn (a
        # follow of the job would send a done the session is about to send again)
        handles = [h for h in self._handles.values()
                   if h._acknowledged and not h.finished and h._session is None]
        if handles:
            log.info("re-following %d jobs on %s", len(handles), link.url)
        async with anyio.create_task_group() as nursery:
            for session_id in list(self._sessions):
                nursery.start_soon(self._refollow_session, link, session_id)
            for handle in handles:
                nursery.start_soon(self._refollow_one, link, handle)

    async def _refollow_session(self, link: Link, session_id: str) -> None:
        backoff = Backoff(_RECONNECT_DELAY)
        for _ in range(_FOLLOW_RETRIES):
            try:
                await link.request(FollowSession(session_id=session_id), Session)
                return
            except LinkLost:
                return  # the next connection follows it again
            except RequestFailed as exc:
                if exc.code == "E_NO_SESSION":
                    return  # nothing of it in the daemon yet (or any more)
                log.info("following session %s failed (%s); retrying", session_id, exc)
                await backoff.sleep()
        await link.aclose()  # try another connection rather than miss the session's results

    async def _refollow_one(self, link: Link, handle: JobHandle) -> None:
        backoff = Backoff(_RECONNECT_DELAY)
        for _ in range(_FOLLOW_RETRIES):
            try:
                job = await link.request(Follow(job_id=handle.job_id), Job)
            except LinkLost:
                return  # the next connection follows it again
            except RequestFailed as exc:
                if exc.code in _GONE_CODES:
                    log.warning("job %s cannot be followed any more: %s", handle.job_id, exc)
                    self._lose(handle, exc)
                    return
                log.info("following job %s failed (%s); retrying", handle.job_id, exc)
                await backoff.sleep()
                continue
            if not handle.finished:
                handle.state = job.state
            return
        log.error(
            "job %s could not be followed on %s; closing the connection", handle.job_id, link.url
        )
        await link.aclose()  # try another connection rather than wait forever for its done

    def _get_open_link(self) -> Link | None:
        link = self._link
        return None if link is None or link.closed else link

    def _lose(self, handle: JobHandle, error: RequestFailed) -> None:
        """The daemon answered ``error`` about a job this client waits for: fail its handle
        (:class:`JobLost` for ``E_NO_JOB``)."""
        handle._fail(JobLost(handle.job_id, error.message) if error.code == "E_NO_JOB" else error)
        self._forget(handle)

    async def _on_message(self, message: Message) -> None:
        if isinstance(message, Done | Skipped) and message.session_id is not None:
            session = self._sessions.get(message.session_id)
            if session is not None:
                session._push(message)
            if isinstance(message, Skipped):
                for gone in [h for h in self._handles.values() if h._skipped_by(message)]:
                    gone._fail(RequestFailed(E_SKIPPED, f"seq {gone._seq} of session "
                                             f"{message.session_id} was skipped",
                                             job_id=gone.job_id))
                    self._forget(gone)
                return
        if isinstance(message, Done):
            handle = self._handles.get(message.job_id)
            if handle is None or handle.finished:
                log.debug("ignoring done of job %s (not followed, or already done)", message.job_id)
                return
            # the link serving is the one reading this message (its bytes are its to hand out)
            link = self._link
            handle._finish(message, link.take_attachments(message) if link is not None else {})
            self._forget(handle)
        elif isinstance(message, StageDone):
            handle = self._handles.get(message.job_id)
            if handle is not None:
                handle._push_stage(message)
        elif isinstance(message, Progress):
            handle = self._handles.get(message.job_id)
            if handle is not None:
                handle._push_progress(message.data)
        elif isinstance(message, Error) and message.code == E_DETACHED and message.job_id:
            handle = self._handles.get(message.job_id)
            if handle is not None and not handle.finished:
                log.warning("job %s: %s", message.job_id, message.message)
                handle._fail(RequestFailed.from_error(message))
                self._forget(handle)
        elif isinstance(message, Error):
            log.warning(
                "daemon error not matching a request: %s %s (job %s)",
                message.code,
                message.message,
                message.job_id,
            )
        elif not isinstance(message, Pong):
            log.debug("ignoring unexpected %r", message)
