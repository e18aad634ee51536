"""The client role: a client's messages, its concurrent submits, and the jobs it follows.

A client connection sees and cancels only the jobs of its principal. Its ``submit``s run
concurrently with the messages after them (see :meth:`schedd.session.Session._receive_loop`).
"""

from __future__ import annotations

from typing import Any

import attrs
import orjson
import trio

import schedd.protocol as p
from schedd.core import DoneDelivery, JobFilter, JobInfo, JobSpec, Submitted, new_id
from schedd.errors import ProtocolError, StoreError
from schedd.operators import MAX_REQUEUE, RequeueFilter
from schedd.session.base import CloseConnection, SessionBase, checked_pools, log, log_job
from schedd.session.deliveries import done_message, job_message
from schedd.session.errors import answer
from schedd.session.stages import plan_stages
from schedd.transport.channel import ChannelClosed

_UNLIST_TIMEOUT = 2.0
"""Seconds a closing connection waits for its removal from the clients view."""


class ClientRole(SessionBase):
    """The session's handlers of a client's messages (schedd.session.handshake.HANDLERS)."""

    async def _list_client(self) -> None:
        """Enter this client connection in the clients view (after its ``welcome``). The view
        is informational: a store that fails here does not refuse the connection."""
        # Named before the call: a connection cancelled while the script runs still removes
        # its entry (the store runs one connection's commands in order).
        self.listed = conn_id = new_id("conn")
        try:
            await self.app.core.client_open(conn_id, principal=self.principal, peer=self.peer,
                                            protocol=self.protocol, name=self.name)
        except StoreError as exc:
            log.warning("client %s is not in the clients view: %s", self.peer, exc)

    async def _unlist_client(self) -> None:
        """Take this connection out of the clients view (the connection ended). Shielded and
        bounded: it runs while the session is cancelled; a failure leaves the entry to the
        reaper, which drops this instance's entries when its presence expires."""
        conn_id, self.listed = self.listed, None
        if conn_id is None:
            return
        with trio.CancelScope(shield=True, deadline=trio.current_time() + _UNLIST_TIMEOUT):
            try:
                await self.app.core.client_close(conn_id)
            except StoreError as exc:
                log.warning("client %s stays in the clients view: %s", self.peer, exc)

    def _submit_started(self, job_id: str | None) -> None:
        if self._submits == 0:
            self._submits_idle = trio.Event()
        self._submits += 1
        if job_id is not None:
            self._submitting.add(job_id)

    async def _concurrent_submit(self, message: p.Submit) -> None:
        try:
            await self._handle(message)
        except (CloseConnection, ChannelClosed):
            self.close()  # as the reading loop would have ended: after what is queued
        finally:
            if message.job_id is not None:
                self._submitting.discard(message.job_id)
            self._submits -= 1
            if self._submits == 0:
                self._submits_idle.set()

    def _may_submit(self, m: p.Submit) -> bool:
        """Whether the connection may submit now; if not, the submit is answered here."""
        if not self.app.accepting:
            self._error(p.E_SHUTTING_DOWN, "this daemon is shutting down; submit to another "
                        "instance", ref=m.ref, job_id=m.job_id)
            return False
        limit = self.app.limits.max_inflight_submits
        if len(self.inflight) >= limit:
            self._error(p.E_INFLIGHT, f"{limit} submits of this connection are still unfinished",
                        ref=m.ref, job_id=m.job_id)
            return False
        return True

    async def _submit(self, m: p.Submit) -> None:
        if not self._may_submit(m):
            return
        job_id = m.job_id or new_id("job")
        if m.stages is not None:
            await self._submit_pipeline(m, job_id)
            return
        built = self._job_spec(m, job_id)
        if built is not None:
            await self._store_submit(m, job_id, *built)

    def _job_spec(self, m: p.Submit, job_id: str) -> tuple[JobSpec, list[str]] | None:
        """The core's spec of a submit without stages, and its pools; None when it names no
        pool (answered here). Raises what the pool hook raises."""
        pools = checked_pools(
            self.app.plugins.job_pools(job_id, dict(m.requirements), list(m.pools)),
            f"job {job_id}")
        if not pools:
            self._error("E_BAD_ARG", "the job names no candidate pool: give pools, or "
                        "requirements that an enabled plugin maps to pools", ref=m.ref,
                        job_id=job_id)
            return None
        spec = JobSpec(
            pools=tuple(pools), payload_json=orjson.dumps(m.payload).decode(), job_id=job_id,
            session_id=m.session_id, priority=m.priority, services=tuple(m.services),
            ack_timeout=m.ack_timeout, run_timeout=m.run_timeout, queue_timeout=m.queue_timeout,
            max_attempts=m.max_attempts, delay=m.delay, not_before=m.not_before,
            backoff_base=m.backoff_base, backoff_max=m.backoff_max, result_ttl=m.result_ttl,
            keep_payload=m.keep_payload, cost=m.cost,
            trace=p.join_trace(m.traceparent, m.tracestate) if m.traceparent else "",
            seq=m.seq, gap_timeout=m.gap_timeout, attachments=self._attachments_of(m),
        )
        return spec, pools

    async def _submit_pipeline(self, m: p.Submit, job_id: str) -> None:
        """A submit with ``stages``: every stage's pools resolved and the chain checked here,
        then stored with its first stage placed in one script (schedd.session.stages). A
        pipeline is not delayed and costs no slots itself: ``delay``, ``not_before`` and ``cost``
        are refused rather than ignored."""
        unused = [name for name, given in (("delay", m.delay is not None),
                                           ("not_before", m.not_before is not None),
                                           ("cost", m.cost != 1)) if given]
        if unused:
            raise ProtocolError("E_BAD_ARG", f"a pipeline (a submit with stages) takes no "
                                f"{', '.join(unused)}")
        s = self.app.core.settings
        defaults = {"ack_timeout": m.ack_timeout or s.ack_timeout,
                    "run_timeout": m.run_timeout or s.run_timeout,
                    "queue_timeout": m.queue_timeout or s.queue_timeout,
                    "max_attempts": m.max_attempts or s.max_attempts}

        def resolve(stage_id: str, requirements: dict[str, object], declared: list[str],
                    ) -> list[str]:
            return checked_pools(self.app.plugins.job_pools(stage_id, requirements, declared),
                                 f"stage job {stage_id}")

        stages_json = plan_stages(job_id, m.stages or [], resolve, defaults)
        spec = JobSpec(
            pools=(), payload_json=orjson.dumps(m.payload).decode(), job_id=job_id,
            session_id=m.session_id, priority=m.priority, stages_json=stages_json,
            fail_fast=m.fail_fast, seq=m.seq, gap_timeout=m.gap_timeout,
            trace=p.join_trace(m.traceparent, m.tracestate) if m.traceparent else "",
            attachments=self._attachments_of(m),
        )
        await self._store_submit(m, job_id, spec, ["<stages>"])

    def _attachments_of(self, m: p.Submit) -> tuple[tuple[str, str, bytes], ...]:
        """The submit's attachments as the core takes them: (name, media type, bytes)."""
        return tuple((spec.name, spec.media_type, data)
                     for spec, data in zip(m.attachments, self.attached.get(id(m), []),
                                           strict=True))

    async def _store_submit(self, m: p.Submit, job_id: str, spec: JobSpec,
                            pools: list[str]) -> None:
        if spec.seq is not None and spec.session_id is not None:
            # the session's results come here from this submit on (its principal's session)
            self.app.routes.follow_session(spec.session_id, self.session)
        # A candidate while the script runs: a done delivered meanwhile waits for the reply
        candidate = self.app.routes.expect(job_id, self.session)
        self.inflight.add(job_id)
        try:
            sub = await self.app.core.submit(spec, principal=self.principal)
        except BaseException:
            self.inflight.discard(job_id)
            self.app.routes.settle(job_id, candidate, None)
            raise
        traceparent, tracestate = p.split_trace(sub.trace)
        self.post(p.Accepted(job_id=job_id, state=sub.state,  # type: ignore[arg-type]
                             duplicate=sub.duplicate, traceparent=traceparent,
                             tracestate=tracestate, ref=m.ref))
        log_job(sub.trace, "job %s %s by %s: %s, pools %s", job_id,
                "submitted again" if sub.duplicate else "submitted", self.principal, sub.state,
                pools)
        self.app.routes.settle(job_id, candidate, sub.follows, sub.done)

    async def _submit_burst(self, run: list[p.Submit]) -> None:
        """A run of plain submits (Session._gather), stored with one ``Core.submit_many`` call
        per ``max_batch``; each answered as :meth:`_submit` would answer it alone, the
        ``accepted`` replies posted together (one array frame for a peer that reads them)."""
        try:
            await self._store_burst(run)
        except (CloseConnection, ChannelClosed):
            self.close()  # as the reading loop would have ended: after what is queued
        finally:
            for message in run:
                if message.job_id is not None:
                    self._submitting.discard(message.job_id)
            self._submits -= len(run)
            if self._submits == 0:
                self._submits_idle.set()

    async def _store_burst(self, run: list[p.Submit]) -> None:
        ready: list[tuple[p.Submit, JobSpec, list[str], Any]] = []
        for m in run:
            if not self._may_submit(m):  # the burst's jobs before it are in inflight already
                continue
            job_id = m.job_id or new_id("job")
            try:
                built = self._job_spec(m, job_id)
            except Exception as exc:
                self._refuse_submit(exc, m, job_id)
                continue
            if built is not None:
                candidate = self.app.routes.expect(job_id, self.session)
                self.inflight.add(job_id)
                ready.append((m, *built, candidate))
        if not ready:
            return
        try:
            answers: list[Submitted | Exception] = await self.app.core.submit_many(
                [spec for _, spec, _, _ in ready], principal=self.principal,
                max_jobs=self.app.limits.max_batch)
        except Exception as exc:  # every job of the burst is answered with the failure
            answers = [exc] * len(ready)
        except BaseException:
            for _, spec, _, candidate in ready:
                self.inflight.discard(spec.job_id or "")
                self.app.routes.settle(spec.job_id or "", candidate, None)
            raise
        replies: list[p.Message] = []
        settled: list[tuple[str, Any, Submitted]] = []
        failed: list[tuple[Exception, p.Submit, str]] = []
        for (m, spec, pools, candidate), sub in zip(ready, answers, strict=True):
            job_id = spec.job_id or ""
            if isinstance(sub, Submitted):
                traceparent, tracestate = p.split_trace(sub.trace)
                replies.append(p.Accepted(job_id=job_id, state=sub.state,  # type: ignore[arg-type]
                                          duplicate=sub.duplicate, traceparent=traceparent,
                                          tracestate=tracestate, ref=m.ref))
                log_job(sub.trace, "job %s %s by %s: %s, pools %s", job_id,
                        "submitted again" if sub.duplicate else "submitted", self.principal,
                        sub.state, pools)
                settled.append((job_id, candidate, sub))
            else:
                self.inflight.discard(job_id)
                self.app.routes.settle(job_id, candidate, None)
                failed.append((sub, m, job_id))
        self.outbox.post_many(replies)
        for job_id, candidate, sub in settled:
            self.app.routes.settle(job_id, candidate, sub.follows, sub.done)
        for refusal, m, job_id in failed:
            self._refuse_submit(refusal, m, job_id)

    def _refuse_submit(self, exc: Exception, m: p.Submit, job_id: str) -> None:
        """Answer one submit of a burst refused with ``exc``, as Session._handle would."""
        reply = answer(exc, m, self.role, self.peer, job_id)
        if reply.violation:
            self._violation(reply.code, reply.message, m.ref)
            return
        self._error(reply.code, reply.message, ref=m.ref, job_id=job_id)
        if reply.close:
            raise CloseConnection

    async def _cancel_job(self, m: p.Cancel) -> None:
        await self.app.core.cancel(m.job_id, principal=self.principal,
                                   reason=f"canceled by client {self.name or self.principal}")

    async def _status(self, m: p.Status) -> None:
        info = await self.app.queries.job(m.job_id)
        if info is None:
            self._error("E_NO_JOB", f"job {m.job_id} does not exist (or its retention ended)",
                        ref=m.ref, job_id=m.job_id)
            return
        if info.principal != self.principal:
            self._error("E_NOT_YOURS", f"job {m.job_id} belongs to another client", ref=m.ref,
                        job_id=m.job_id)
            return
        await self._post_job(info, m.ref)

    async def _post_job(self, info: JobInfo, ref: str | None) -> None:
        """Send the ``job`` message of ``info``, with its result's attachments if it has any."""
        message = job_message(info, ref)
        if not message.attachments:
            self.post(message)
            return
        try:
            data = await self.app.queries.attachments(
                info.job_id, "out", [spec.name for spec in message.attachments])
        except (LookupError, StoreError) as exc:  # removed since the job was read; store down
            log.warning("job %s: its job message goes without attachments: %s", info.job_id,
                        exc)
            self.post(attrs.evolve(message, attachments=[]))
            return
        self.outbox.post_attached(message, data)

    async def _follow(self, m: p.Follow) -> None:
        # A candidate while the scripts run: it takes the job's deliveries only once the store
        # said the job is its principal's (schedd.routes)
        candidate = self.app.routes.expect(m.job_id, self.session)
        try:
            followed = await self.app.core.follow(m.job_id, principal=self.principal)
            try:
                info = await self.app.queries.job(m.job_id)
            except StoreError:
                info = None  # the follow holds: the reply says what its script said
        except BaseException:
            self.app.routes.settle(m.job_id, candidate, None)
            raise
        if info is not None and info.principal == self.principal:
            await self._post_job(info, m.ref)  # the job as status shows it, node and info too
        else:  # its retention ended between the two reads, or the read failed
            self.post(p.Job(job_id=m.job_id, state=followed.state,  # type: ignore[arg-type]
                            attempt=followed.attempt, ref=m.ref))
        self.app.routes.settle(m.job_id, candidate, followed.follows, followed.done)

    async def _follow_session(self, m: p.FollowSession) -> None:
        """Take an ordered session of this principal: the reply, then the results that waited
        (held while the script runs), then the later ones."""
        session_id, ref = m.session_id, m.ref
        self.app.routes.expect_session(session_id, self.session)
        try:
            followed = await self.app.core.follow_session(session_id, principal=self.principal)
        except BaseException:
            self.app.routes.settle_session(session_id, self.session, followed=False)
            raise
        self.post(p.Session(session_id=session_id, next_seq=followed.next_seq,
                            held=followed.held, ref=ref))
        self.app.routes.settle_session(session_id, self.session, followed=True)

    async def _query(self, m: p.Query) -> None:
        if m.what == "jobs":
            # a connection lists its own principal's jobs only; naming another is refused
            if m.principal is not None and m.principal != self.principal:
                self._error("E_NOT_YOURS", "a client lists only its own principal's jobs "
                            f"(this connection is {self.principal!r})", ref=m.ref)
                return
            page = await self.app.queries.list_jobs(
                JobFilter(**{**m.filters(), "principal": self.principal})
            )
            data = {"jobs": [attrs.asdict(job) for job in page.jobs], "cursor": page.cursor}
        elif m.what == "usage" and self.admin:  # an operator sees every principal's usage
            data = await self.app.queries.answer(m.what)
        else:
            data = await self.app.queries.answer(m.what, principal=self.principal)
        self.post(p.Answer(what=m.what, data=data, ref=m.ref))

    async def _admin(self, m: p.Admin) -> None:
        """An operator action: only for a connection whose hello token is an admin token."""
        if not self.admin:
            log.warning("refused admin %s from client %s %s: not an admin token", m.action,
                        self.principal, self.peer)
            self._error(p.E_FORBIDDEN, f"{m.action} is an operator action: connect with an "
                        "[auth] admin_tokens token", ref=m.ref, job_id=m.job_id)
            return
        wanted = None
        if m.action == "requeue" and m.job_id is None:
            wanted = RequeueFilter(states=tuple(m.states) or ("failed",), pool=m.pool,
                                   since=m.since, limit=m.limit or MAX_REQUEUE)
        results = await self.app.operators.run(
            m.action, m.node_id or m.job_id, wanted, who=f"{self.principal} ({self.peer})")
        self.post(p.Acted(action=m.action, results=results, ref=m.ref))

    def detached(self, job_id: str) -> None:
        """Another connection of this principal followed the job: its deliveries go there."""
        self.inflight.discard(job_id)
        self._error(p.E_DETACHED, f"job {job_id} is now followed by another connection; its "
                    "progress and done go there (send follow to take it back)", job_id=job_id)

    def deliver_done(self, done: DoneDelivery) -> None:
        """The job this client follows finished (schedd.routes)."""
        if done.attachments_json:  # its attachments are read first, in order with the rest
            self.deliver(done)
            return
        self.inflight.discard(done.job_id)
        self.post(done_message(done))
        log_job(done.trace, "job %s %s after %s attempt(s): done sent to %s", done.job_id,
                done.state, done.attempts, self.principal)
