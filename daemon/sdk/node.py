"""The Python node (worker) library: run a handler for every job a schedd daemon assigns.

::

    async def translate(ctx: JobContext) -> Any:
        await ctx.progress({"partial": "hel"})
        return {"text": "hello"}

    node = Node("tcp://127.0.0.1:8766", translate, capacity=2,
                capabilities={"asr_langs": ["zh"], "semantic_langs": ["en"]})  # pool zh>en
    await node.run()

Rules of this module:

- Jobs outlive connections. Each job runs in its own task, in :meth:`Node.run`'s nursery and
  under its own cancel scope; a dropped connection does not stop it. The node reconnects (next
  URL, backoff), registers again with the same ``node_id`` and lists in ``running`` every job it
  still works on, including those whose result is not yet confirmed.
- A ``result`` stays in the outbox until a ``pong`` sent after it confirms that the daemon handled
  it; results finished while disconnected, or sent but unconfirmed when the connection dropped,
  are sent again after the next ``registered`` (a repeated result is a no-op for the daemon).
- A job's messages ready together (the accepts of assigns read together, a job's accept and its
  result when it took no time, results and the ``ping`` confirming them) leave in one write
  (schedd.sdk._node_jobs, schedd.sdk._node_out).
- Fencing: ``cancel`` {job_id, attempt}, or an ``error`` saying the job moved on
  (``E_STALE_ATTEMPT``, ``E_NO_JOB``, ``E_IDENTITY``, ``E_BAD_STATE``) about the attempt the node
  runs, cancels that attempt's task; nothing more is sent about it. Job messages carry a ``ref``
  naming their attempt (``j<attempt>.<n>``) so an error is matched to the right attempt.
- ``drain`` from the daemon is about this connection (the instance may be shutting down): the
  node rejects new assigns ("draining") until it registers again or ``undrain`` comes (an
  operator lifted the drain). A drain the node asked for (:meth:`Node.drain`) is asked again
  after every re-registration and after an ``undrain``.
- A ``registered`` that answers no request means the daemon registered the node again on the
  same connection (its store had lost the registration): the node takes the new epoch and sends
  again its unavailable marks and unconfirmed results.
- Errors that retrying cannot fix (``E_AUTH`` at hello; ``E_IDENTITY``, ``E_BAD_ARG``,
  ``E_BAD_FIELD``, ``E_ROLE`` at register) end :meth:`Node.run` with :class:`RequestFailed`;
  everything else is retried forever.
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any, Final

import anyio
import anyio.abc
import attrs

from schedd.protocol import (
    MAX_RUNNING,
    Accept,
    Assign,
    Cancel,
    Drain,
    Error,
    ErrorInfo,
    Heartbeat,
    Message,
    Pong,
    Register,
    Registered,
    Reject,
    Result,
    RunningJob,
    Unavailable,
    Undrain,
)
from schedd.protocol.attachments import DEFAULT_MAX_ATTACHMENT, DEFAULT_MAX_ATTACHMENTS
from schedd.sdk._conn import Link, LinkLost, RequestFailed, reraise_sole
from schedd.sdk._dial import Backoff, Dialer
from schedd.sdk._native import TaskGroup, open_task_group
from schedd.sdk._node_jobs import NodeJobs
from schedd.sdk._node_out import Batcher
from schedd.sdk.job import (
    E_NODE_EXCEPTION,
    Handler,
    JobContext,
    JobError,
    JobResult,
)

__all__ = ["E_NODE_EXCEPTION", "JobContext", "JobError", "JobResult", "Node"]

log = logging.getLogger(__name__)

FATAL_REGISTER_CODES: Final[frozenset[str]] = frozenset(
    {"E_IDENTITY", "E_BAD_ARG", "E_BAD_FIELD", "E_ROLE"}
)
"""``register`` refusals that another try cannot fix."""

_JOB_GONE_CODES: Final[frozenset[str]] = frozenset(
    {"E_STALE_ATTEMPT", "E_NO_JOB", "E_IDENTITY", "E_BAD_STATE"}
)
"""Errors about a job meaning "the world moved on": drop the attempt."""

_REGISTRATION_GONE_CODES: Final[frozenset[str]] = frozenset(
    {"E_NO_NODE", "E_STALE_EPOCH", "E_WRONG_OWNER"}
)
"""Errors meaning this connection's registration is gone: reconnect and register again."""

_JOB_REF: Final = re.compile(r"j(\d+)\.")


class Node(NodeJobs):
    """A worker connection to a schedd daemon: registers, heartbeats, and runs assigned jobs."""

    def __init__(
        self,
        urls: str | Sequence[str],
        handler: Handler,
        *,
        pools: Sequence[str] = (),
        capacity: int = 1,
        capabilities: Mapping[str, Any] | None = None,
        labels: Mapping[str, str] | None = None,
        node_id: str | None = None,
        token: str | None = None,
        name: str | None = None,
        heartbeat_interval: float | None = None,
        reconnect_delay: float = 0.2,
        max_attachment: int = DEFAULT_MAX_ATTACHMENT,
        max_attachments: int = DEFAULT_MAX_ATTACHMENTS,
    ) -> None:
        #: the daemon's ``[limits] max_attachment`` and ``max_attachments``: a result whose
        #: attachments pass them fails its attempt with ``E_TOO_LARGE`` instead of being sent
        #: (the daemon would refuse it, and one over ``max_attachment`` with its connection)
        self.max_attachment, self.max_attachments = max_attachment, max_attachments
        self._dialer = Dialer(urls, role="node", token=token, name=name, connect_timeout=5.0)
        self._handler = handler
        self._pools = list(pools)
        self._capabilities = dict(capabilities or {})
        self._capabilities_changed = False
        self._labels = dict(labels or {})
        # Fail at construction on what register would refuse anyway.
        Register(
            capacity=capacity,
            node_id=node_id,
            capabilities=self._capabilities,
            labels=self._labels,
            pools=self._pools,
        )
        if heartbeat_interval is not None and not (
            math.isfinite(heartbeat_interval) and heartbeat_interval > 0
        ):
            raise ValueError(f"heartbeat_interval must be > 0, not {heartbeat_interval}")
        self.capacity = capacity
        self.node_id: str | None = node_id
        self.epoch: int | None = None
        self.draining = False
        self.running: dict[str, JobContext] = {}
        self._heartbeat_interval = heartbeat_interval
        self._backoff = Backoff(reconnect_delay)
        self._link: Link | None = None  # set while registered
        self._batcher: Batcher | None = None  # the connection's, set while it is served
        self._outbox: dict[tuple[str, int], Result] = {}
        # the bytes of the attachments of a result in the outbox, sent with it every time
        self._result_blobs: dict[tuple[str, int], list[bytes]] = {}
        self._drain_requested = False
        self._unavailable: dict[str, float] = {}  # service -> event-loop time its ttl ends
        self._jobs: TaskGroup | None = None

    # ----------------------------------------------------------------------------------------
    # Public API.
    # ----------------------------------------------------------------------------------------

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Connect, register and serve jobs until cancelled; reconnect whenever needed.

        Reports ``started()`` after the first ``registered``. Raises :class:`RequestFailed` for
        an error no retry can fix (``E_AUTH``, ``E_IDENTITY``...).
        """
        if self._jobs is not None:
            raise RuntimeError("this node is already running")
        fatal: RequestFailed | None = None
        status: anyio.abc.TaskStatus[None] | None = task_status
        try:
            async with open_task_group() as jobs:
                self._jobs = jobs
                while True:
                    try:
                        stack, link = await self._dialer.dial_retrying(self._backoff)
                        async with stack:
                            registered = await self._session(link, status)
                    except RequestFailed as exc:
                        fatal = exc
                        jobs.cancel_scope.cancel()
                        break
                    if registered:
                        status = None
                        log.warning("connection to %s lost; reconnecting", link.url)
                    self._dialer.rotate()
                    await self._backoff.sleep()
        except BaseExceptionGroup as group:
            reraise_sole(group)
        finally:
            self._jobs = None
            self._link = None
        if fatal is not None:
            raise fatal

    def set_capabilities(self, capabilities: Mapping[str, Any]) -> None:
        """Change what the node declares (languages learnt or lost, say).

        The next heartbeat carries the new capabilities; the daemon moves the node's pools in one
        step and answers with a new ``registered``. A reconnect registers with them anyway.
        """
        self._capabilities = dict(capabilities)
        self._capabilities_changed = True

    async def drain(self) -> None:
        """Ask the daemon to stop assigning to this node; running jobs go on to their end.

        The request is repeated after every reconnect. Raises :class:`RequestFailed` if the
        daemon refuses it.
        """
        self.draining = True
        self._drain_requested = True
        link = self._link
        if link is None:
            return  # sent after the next registration
        with contextlib.suppress(LinkLost):
            await link.request(Drain(reason="requested by the node"), Drain)

    async def mark_unavailable(self, service: str, ttl: float) -> None:
        """Tell the daemon that ``service`` is unreachable from this node for ``ttl`` seconds.

        While disconnected it is remembered and sent (with the remaining ttl) after the next
        registration. Raises :class:`RequestFailed` if the daemon refuses it.
        """
        message = Unavailable(service=service, ttl=ttl)  # validates
        self._unavailable[service] = anyio.current_time() + ttl
        link = self._link
        if link is None:
            return
        with contextlib.suppress(LinkLost):
            await link.send_confirmed(message)

    # ----------------------------------------------------------------------------------------
    # One connection.
    # ----------------------------------------------------------------------------------------

    async def _session(self, link: Link, status: anyio.abc.TaskStatus[None] | None) -> bool:
        """Register on ``link`` and serve it until it ends; True if it got registered.

        Raises :class:`RequestFailed` for a fatal refusal of ``register``.
        """
        registered: Registered | None = None
        failure: RequestFailed | None = None
        interval = self._heartbeat_interval or link.welcome.heartbeat_interval

        async def serve(cancel_scope: anyio.CancelScope) -> None:
            await link.serve(
                lambda message: self._on_message(link, message), keepalive=3 * interval
            )
            cancel_scope.cancel()

        # A drain ordered by the daemon belonged to the previous connection (its instance may
        # have been shutting down); one the node asked for stays. Reset before register: the
        # daemon may send drain right behind registered.
        self.draining = self._drain_requested
        batcher = self._batcher = Batcher(link)
        async with anyio.create_task_group() as nursery:
            nursery.start_soon(batcher.serve)
            nursery.start_soon(serve, nursery.cancel_scope)
            try:
                registered = await link.request(self._register_message(), Registered)
            except LinkLost:
                nursery.cancel_scope.cancel()
            except RequestFailed as exc:
                failure = exc
                await link.aclose()
                nursery.cancel_scope.cancel()
            else:
                self._on_registered(link, registered)
                if status is not None:
                    status.started()
                nursery.start_soon(self._heartbeats, link, interval)
                # What the node asked for while it had no registration, taken now: from here
                # on drain(), mark_unavailable() and finished jobs send on this link themselves.
                nursery.start_soon(
                    self._resume,
                    link,
                    self._drain_requested,
                    dict(self._unavailable),
                    list(self._outbox.values()),
                )
        self._link = None
        if self._batcher is batcher:
            self._batcher = None
        if failure is not None:
            if failure.code in FATAL_REGISTER_CODES:
                raise failure
            log.warning("daemon %s refused register: %s", link.url, failure)
        return registered is not None

    def _register_message(self) -> Register:
        running = [
            RunningJob(job_id=ctx.job_id, attempt=ctx.attempt) for ctx in self.running.values()
        ]
        # A job whose result is not confirmed is still ours: listing it keeps it from being
        # given to another node before the result is sent again.
        running += [RunningJob(job_id=job_id, attempt=attempt) for job_id, attempt in self._outbox]
        return Register(
            capacity=self.capacity,
            node_id=self.node_id,
            capabilities=self._capabilities,
            labels=self._labels,
            pools=self._pools,
            running=running[:MAX_RUNNING],
        )

    def _on_registered(self, link: Link, registered: Registered) -> None:
        self._backoff.reset()
        self.node_id = registered.node_id
        self.epoch = registered.epoch
        self._link = link
        log.info(
            "registered as %s (epoch %d) on %s, pools %s",
            registered.node_id,
            registered.epoch,
            link.url,
            registered.pools,
        )

    def _on_registered_again(self, link: Link, registered: Registered) -> None:
        """A ``registered`` that answers no request: the daemon stored this connection's
        registration again (its store had lost it). Take the new epoch, and send again what the
        store may have lost with it: unavailable marks and unconfirmed results."""
        if link is not self._link or registered.node_id != self.node_id:
            log.warning("ignoring registered for %s on %s", registered.node_id, link.url)
            return
        self.epoch = registered.epoch
        log.info(
            "registered again as %s (epoch %d) on %s, pools %s",
            registered.node_id,
            registered.epoch,
            link.url,
            registered.pools,
        )
        if self._jobs is not None:
            self._jobs.start_soon(
                self._resume, link, False, dict(self._unavailable), list(self._outbox.values())
            )

    async def _resume(
        self, link: Link, drain: bool, unavailable: dict[str, float], results: list[Result]
    ) -> None:
        """After (re)registration: send again what an earlier connection may have missed."""
        try:
            if drain:
                await link.request(Drain(reason="requested by the node"), Drain)
            now = anyio.current_time()
            for service, until in unavailable.items():
                if until > now:
                    await link.send_confirmed(Unavailable(service=service, ttl=until - now))
                elif self._unavailable.get(service) == until:
                    del self._unavailable[service]
            if results:
                await self._flush(link, results)
        except LinkLost:
            pass
        except RequestFailed as exc:
            log.warning("resuming on %s: %s", link.url, exc)

    async def _heartbeats(self, link: Link, interval: float) -> None:
        while True:
            inflight = len(self.running)
            changed, self._capabilities_changed = self._capabilities_changed, False
            message = Heartbeat(
                inflight=inflight,
                running=list(self.running)[:MAX_RUNNING],
                load=inflight / self.capacity,
                capabilities=self._capabilities if changed else None,
            )
            try:
                await link.send(message)
            except LinkLost:
                return
            await anyio.sleep(interval)

    # ----------------------------------------------------------------------------------------
    # Messages from the daemon.
    # ----------------------------------------------------------------------------------------

    async def _on_message(self, link: Link, message: Message) -> None:
        if isinstance(message, Assign):
            await self._on_assign(link, message)
        elif isinstance(message, Cancel):
            if self._drop(message.job_id, message.attempt):
                log.info(
                    "job %s attempt %s cancelled by the daemon", message.job_id, message.attempt
                )
        elif isinstance(message, Drain):
            if not self.draining:
                log.info("daemon %s drains this node: %s", link.url, message.reason)
            self.draining = True
        elif isinstance(message, Undrain):
            log.info("daemon %s lifted this node's drain: %s", link.url, message.reason)
            self.draining = self._drain_requested
            if self._drain_requested:  # the node still wants it: ask again
                await link.send(Drain(reason="requested by the node"))
        elif isinstance(message, Error):
            await self._on_error(link, message)
        elif isinstance(message, Registered):
            self._on_registered_again(link, message)
        elif not isinstance(message, Pong):
            log.debug("ignoring unexpected %r", message)

    async def _on_assign(self, link: Link, assign: Assign) -> None:
        job_id, attempt = assign.job_id, assign.attempt
        attachments = link.take_attachments(assign)
        current = self.running.get(job_id)
        if current is not None:
            if current.attempt == attempt:  # a repeat: accepting again is harmless
                await self._send_job(link, attempt, Accept(job_id=job_id, attempt=attempt))
                return
            if current.attempt > attempt:
                log.warning(
                    "ignoring assign of job %s attempt %d: attempt %d runs",
                    job_id,
                    attempt,
                    current.attempt,
                )
                return
            self._drop(job_id, current.attempt)  # superseded by the new attempt
        if self.draining or len(self.running) >= self.capacity or self._jobs is None:
            reason = "draining" if self.draining else "no free slot"
            log.info("rejecting job %s attempt %d: %s", job_id, attempt, reason)
            await self._send_job(
                link, attempt, Reject(job_id=job_id, attempt=attempt, reason=reason)
            )
            return
        ctx = JobContext(
            self,
            job_id=job_id,
            attempt=attempt,
            payload=assign.payload,
            session_id=assign.session_id,
            deadline_ms=assign.deadline,
            traceparent=assign.traceparent,
            tracestate=assign.tracestate,
            attachments=attachments,
            media_types={spec.name: spec.media_type for spec in assign.attachments},
        )
        self.running[job_id] = ctx
        batcher = self._batcher_of(link)
        try:
            if batcher is None:
                await self._send_job(link, attempt, Accept(job_id=job_id, attempt=attempt))
            else:  # written with what else is ready: the result of a job that takes no time
                self._post_job(batcher, attempt, Accept(job_id=job_id, attempt=attempt))
        except LinkLost:
            # The accept cannot reach the daemon: do not start the job.
            if self.running.get(job_id) is ctx:
                del self.running[job_id]
            raise
        self._jobs.start_soon(self._run_job, ctx, name=f"job {job_id}#{attempt}")

    async def _on_error(self, link: Link, error: Error) -> None:
        attempt: int | None = None
        if error.ref is not None and (match := _JOB_REF.match(error.ref)):
            attempt = int(match.group(1))
        if error.code == "E_TOO_LARGE" and error.job_id is not None and attempt is not None \
                and self._result_blobs.pop((error.job_id, attempt), None) is not None:
            # The daemon refused the result's attachments (over its limits): the attempt fails
            # with that reason instead, since sending them again would be refused again.
            log.error("job %s attempt %d: the daemon refused the result's attachments: %s",
                      error.job_id, attempt, error.message)
            failed = Result(job_id=error.job_id, attempt=attempt, ok=False,
                            error=ErrorInfo(code="E_TOO_LARGE", message=error.message))
            self._outbox[(error.job_id, attempt)] = failed
            if self._jobs is not None:
                self._jobs.start_soon(self._resend_result, link, failed)
            return
        if error.code == "E_UNAVAILABLE" and error.job_id is not None and attempt is not None:
            result = self._outbox.get((error.job_id, attempt))
            if result is not None and self._jobs is not None:
                # The daemon could not store the result (its Redis is failing over). A copy
                # replaces it in the outbox, so the pong that follows does not count it as
                # handled; it is sent again shortly (found by the chaos run: without this the
                # job waited for its run timeout).
                again = attrs.evolve(result)
                self._outbox[(error.job_id, attempt)] = again
                self._jobs.start_soon(self._resend_result, link, again)
                return
        if (
            error.job_id is not None
            and error.code in _JOB_GONE_CODES
            and self._drop(error.job_id, attempt)
        ):
            log.warning(
                "job %s attempt %s dropped: %s %s", error.job_id, attempt, error.code, error.message
            )
            return
        log.warning(
            "daemon %s: %s %s (job %s, ref %s)",
            link.url,
            error.code,
            error.message,
            error.job_id,
            error.ref,
        )
        if error.code in _REGISTRATION_GONE_CODES:
            # The registration is over; the daemon closes the connection, make sure of it.
            await link.aclose()
