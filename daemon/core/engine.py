"""The core: every node and job operation, each one Lua script call.

Rules of this module:
  * Redis is the single source of truth; this class keeps no state about nodes or jobs. Any
    decision (selection, reservation, state change, fencing) happens inside one script.
  * Every script returns ``{result, local deliveries}``. Deliveries for this instance come back in
    the reply and are handed to ``on_delivery`` at once (the fast path); deliveries for other
    instances were appended to their inbox streams by the same script.
  * Every job state change and node taken offline comes back as an event for ``on_event``, on
    the instance whose script made it, exactly once.
  * ``on_delivery`` is synchronous and must not block: it hands the delivery to a connection's
    send queue (or drops it if the connection is gone: deadlines are the safety net).
"""

from __future__ import annotations

import logging
import math
import random
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import orjson

from schedd.core.burst import BurstItem, Outcome, burst_args, outcomes
from schedd.core.model import (
    CoreSettings,
    Delivery,
    DoneDelivery,
    Event,
    Followed,
    JobSpec,
    Registration,
    SessionFollowed,
    Submitted,
    decode_delivery,
    decode_event,
)
from schedd.core.submits import attachment_args, burst_calls, burst_item, submit_args, submitted
from schedd.errors import BadArgument
from schedd.store.base import Arg, Store
from schedd.store.keys import Keys, order_id
from schedd.store.scripts import Scripts

log = logging.getLogger(__name__)

DeliveryHandler = Callable[[Delivery], None]
EventHandler = Callable[[Event], None]


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def _text(value: bytes | str | None) -> str:
    if value is None:
        return ""
    return value.decode() if isinstance(value, bytes) else value


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:16]}"


class Core:
    """Node, pool and job management for one daemon instance over one store."""

    def __init__(
        self,
        store: Store,
        settings: CoreSettings,
        on_delivery: DeliveryHandler | None = None,
        scripts: Scripts | None = None,
        on_event: EventHandler | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.instance = settings.instance
        self.keys = Keys(settings.namespace)
        self.scripts = scripts or Scripts()
        self.on_delivery: DeliveryHandler = on_delivery or (lambda delivery: None)
        self.on_event: EventHandler = on_event or (lambda event: None)
        #: seconds until the next delayed job is due, as the last reaper pass saw it (None: none)
        self.next_delayed_in: float | None = None
        #: the random draw in [0, 1) a retryable failure's backoff jitter takes
        self.draw: Callable[[], float] = random.random

    async def start(self) -> None:
        """Check Redis answers and load every script (so the first calls need no reload)."""
        await self.store.execute("PING")
        await self.scripts.load_all(self.store)
        await self.set_pool_rates(self.settings.pool_rates)
        await self.set_fair_hold(self.settings.fair_hold)

    async def set_fair_hold(self, hold: float) -> int:
        """Set the fair reservation's hold (seconds; 0: off), shared by every instance of the
        namespace. Returns it in ms."""
        (ms,) = await self._call("fair_hold_set", [self.keys.fair_hold], [round(hold * 1000)])
        return int(ms)

    async def set_pool_rates(self, rates: Mapping[str, float]) -> int:
        """Replace the dispatch rates of the pools (per second; burst: one second's worth, at
        least 1), shared by every instance of the namespace. Returns how many pools have one."""
        table = {pool: [rate, max(1, math.ceil(rate))] for pool, rate in rates.items()}
        (count,) = await self._call(
            "pool_limits_set", [self.keys.pool_limits], [orjson.dumps(table)])
        return int(count)

    async def _call(self, name: str, keys: Sequence[Arg], args: Sequence[Arg]) -> Any:
        reply = await self.scripts.call(self.store, name, keys, [self.instance, *args])
        for raw in reply[1]:
            self.dispatch(raw)
        if len(reply) > 2:
            for raw in reply[2]:
                try:
                    self.on_event(decode_event(raw))
                except Exception:  # an event listener must not fail the call that caused it
                    log.exception("event handler failed for %r", raw)
        return reply[0]

    def dispatch(self, raw: bytes | str) -> None:
        """Decode one delivery (from a script reply or the inbox) and hand it on."""
        try:
            delivery = decode_delivery(raw)
        except (ValueError, IndexError, TypeError):
            log.error("dropping undecodable delivery %r", raw)
            return
        self.on_delivery(delivery)

    # -- nodes ---------------------------------------------------------------------------------

    async def register_node(
        self,
        *,
        node_id: str | None,
        capacity: int,
        pools: Sequence[str],
        capabilities_json: str = "{}",
        labels_json: str = "{}",
        principal: str = "anonymous",
        protocol: int = 0,
    ) -> Registration:
        """Register or re-register a node owned by this instance; queued work may follow.

        ``principal`` is who registers it (the connection's): a node id held by another
        principal is refused (:class:`~schedd.errors.NotYourNode`, ``E_IDENTITY``).
        ``protocol`` is the version its connection's ``hello`` spoke (0: unknown).
        """
        node_id = node_id or new_id("node")
        k = self.keys
        epoch, used = await self._call(
            "node_register",
            [k.node(node_id), k.nodes, k.alive],
            [
                node_id,
                capacity,
                orjson.dumps(list(pools)),
                capabilities_json,
                labels_json,
                _ms(self.settings.liveness_ttl),
                principal,
                protocol,
            ],
        )
        log.info("node %s registered: epoch %s, pools %s, capacity %s", node_id, epoch,
                 list(pools), capacity)
        return Registration(node_id=node_id, epoch=int(epoch), pools=tuple(pools), used=int(used))

    # -- clients -------------------------------------------------------------------------------

    async def client_open(
        self, conn_id: str, *, principal: str, peer: str, protocol: int, name: str | None
    ) -> int:
        """List a client connection of this instance (the clients view); returns the store's
        unix ms of its listing. :meth:`client_close` removes it; so does the reaper, with
        every entry of this instance, once its presence expired."""
        entry = orjson.dumps(
            {"principal": principal, "peer": peer, "protocol": protocol, "name": name}
        )
        (since,) = await self._call(
            "client_open",
            [self.keys.clients(self.instance), self.keys.instances],
            [conn_id, entry, _ms(self.settings.instance_ttl)],
        )
        return int(since)

    async def client_close(self, conn_id: str) -> bool:
        """Remove a client connection from the clients view; False if it was not listed."""
        (removed,) = await self._call(
            "client_close", [self.keys.clients(self.instance)], [conn_id]
        )
        return bool(removed)

    async def heartbeat_batch(
        self,
        beats: Sequence[tuple[str, int, float, int]],
        silent: Sequence[tuple[str, int]] = (),
    ) -> list[str]:
        """Refresh liveness and load of many nodes in one call; returns stale node ids.

        ``silent`` names nodes (with the epoch of their last beat) that stopped beating: their
        liveness ends now, where this instance still holds their registration.
        """
        args: list[Arg] = [
            _ms(self.settings.liveness_horizon),
            _ms(self.settings.instance_ttl),
            len(silent),
        ]
        for node_id, epoch in silent:
            args.extend((node_id, epoch))
        for node_id, epoch, load, inflight in beats:
            args.extend((node_id, epoch, load, inflight))
        stale = await self._call("heartbeat_batch", [self.keys.alive, self.keys.instances], args)
        return [_text(n) for n in stale]

    async def drain_node(self, node_id: str, *, epoch: int | None = None, reason: str = "") -> int:
        """Stop new work for a node; returns how many jobs it still holds."""
        held, _changed = await self.drain_node_changed(node_id, epoch=epoch, reason=reason)
        return held

    async def drain_node_changed(
        self, node_id: str, *, epoch: int | None = None, reason: str = ""
    ) -> tuple[int, bool]:
        """:meth:`drain_node`, also saying whether this call drained it (False: it already was).
        ``epoch`` None: an operator, whatever registration is current."""
        _state, held, changed = await self._call(
            "node_drain",
            [self.keys.node(node_id)],
            [node_id, "" if epoch is None else epoch, reason or "drain requested"],
        )
        log.info("node %s draining (%s jobs still running): %s", node_id, held, reason)
        return int(held), _text(changed) == "1"

    async def undrain_node(self, node_id: str, *, reason: str = "") -> bool:
        """Lift a node's drain (an operator): it goes back into its pools and takes queued work;
        its owner tells it ``undrain``. Returns False when the node was online already."""
        _state, changed = await self._call(
            "node_undrain", [self.keys.node(node_id)], [node_id, reason or "drain lifted"]
        )
        return _text(changed) == "1"

    async def node_offline(
        self, node_id: str, *, epoch: int, reason: str, owner: str | None = None
    ) -> int | None:
        """Take a node out of service, fenced by owner and epoch.

        Returns how many jobs moved on, or None if the node was already offline. Raises
        :class:`~schedd.errors.StaleEpoch` / :class:`~schedd.errors.WrongOwner` when the caller
        no longer speaks for the node.
        """
        (moved,) = await self._call(
            "node_offline",
            [self.keys.node(node_id)],
            [node_id, owner or self.instance, epoch, reason,
             _ms(self.settings.node_retention)],
        )
        if moved < 0:
            return None
        log.info("node %s offline (%s): %s job(s) moved on", node_id, reason, moved)
        return int(moved)

    async def mark_unavailable(self, node_id: str, *, epoch: int, service: str, ttl: float) -> int:
        """Exclude the node from jobs needing ``service`` for ``ttl`` seconds; returns until-ms."""
        (until,) = await self._call(
            "node_unavailable",
            [self.keys.node(node_id), self.keys.node_unavail(node_id)],
            [node_id, epoch, service, _ms(ttl)],
        )
        return int(until)

    # -- jobs ----------------------------------------------------------------------------------

    async def submit(self, spec: JobSpec, *, principal: str = "") -> Submitted:
        """Accept a job (idempotent on job_id), place it or queue it, in one script. With
        ``spec.seq`` the job joins the ordered session ``spec.session_id`` of ``principal``
        (:class:`~schedd.errors.DuplicateSeq` when the seq is taken), whose results now come to
        this instance."""
        job_id, trace, args = submit_args(spec, self.settings, principal)
        result = await self._call("job_submit", [self.keys.job(job_id), self.keys.counts], args)
        return submitted(job_id, trace, result)

    async def submit_many(self, specs: Sequence[JobSpec], *, principal: str = "",
                          max_jobs: int = 256) -> list[Submitted | Exception]:
        """Accept several jobs of one principal, each exactly as :meth:`submit` would, in one
        ``job_submit_many`` call per ``max_jobs`` jobs (and per about 1 MiB of arguments).
        Answered per job, in order: its :class:`Submitted`, or the exception :meth:`submit`
        would have raised for it (a refused job is refused alone; the others proceed). A call
        that fails (the store unreachable...) is the answer of each of its jobs, which may or
        may not be stored, as for a failed :meth:`submit`. A job with attachments is refused
        (:class:`~schedd.errors.BadArgument`): it goes alone."""
        answers: list[Submitted | Exception | None] = [None] * len(specs)
        prepared: list[tuple[int, list[Arg]]] = []
        named: dict[int, tuple[str, str]] = {}
        for index, spec in enumerate(specs):
            if spec.attachments:
                answers[index] = BadArgument("a job with attachments is submitted alone")
                continue
            try:
                job_id, trace, args = submit_args(spec, self.settings, principal)
            except BadArgument as exc:  # BadDelay, BadTtl too
                answers[index] = exc
                continue
            named[index] = (job_id, trace)
            prepared.append((index, args))
        for call in burst_calls(prepared, max_jobs):
            width = len(call[0][1])
            flat: list[Arg] = [width]
            for _, args in call:
                flat.extend(args)
            try:
                results = await self._call("job_submit_many", [self.keys.counts], flat)
            except Exception as exc:  # this call's jobs share its failure; the others stand
                for index, _ in call:
                    answers[index] = exc
                continue
            for (index, _), result in zip(call, results, strict=True):
                job_id, trace = named[index]
                answers[index] = burst_item(job_id, trace, result)
        return [answer for answer in answers if answer is not None]

    async def accept(self, job_id: str, *, node_id: str, attempt: int) -> bool:
        """Attempt ``attempt`` runs; returns False if it was already accepted."""
        _state, status, _deadline = await self._call(
            "job_accept", [self.keys.job(job_id), self.keys.deadlines], [job_id, node_id, attempt]
        )
        return _text(status) == "new"

    async def reject(self, job_id: str, *, node_id: str, attempt: int, reason: str) -> str:
        """The node refused the attempt; returns the job's new state."""
        (state,) = await self._call(
            "job_reject", [self.keys.job(job_id)], [job_id, node_id, attempt, reason]
        )
        return _text(state)

    async def progress(self, job_id: str, *, node_id: str, attempt: int, data_json: str) -> None:
        """Forward the progress of a running attempt; it extends the attempt's run deadline to
        its run timeout from now, up to ``max_run`` after its accept."""
        await self._call(
            "job_progress", [self.keys.job(job_id), self.keys.deadlines],
            [job_id, node_id, attempt, data_json, _ms(self.settings.max_run)],
        )

    async def result(
        self,
        job_id: str,
        *,
        node_id: str,
        attempt: int,
        ok: bool,
        output_json: str = "null",
        error: dict[str, Any] | None = None,
        accepted: bool = False,
        retryable: bool = False,
        draw: float | None = None,
        attachments: Sequence[tuple[str, str, bytes]] = (),
    ) -> tuple[str, bool]:
        """Record the attempt's result; returns (state, duplicate).

        ``retryable``: a failure the node says another node may not have; with attempts left the
        job waits its backoff in state ``delayed`` (returned) and is then placed elsewhere.
        ``draw`` in [0, 1) scales the backoff's jitter (default: :attr:`draw`, random).

        ``accepted``: the node's ``accept`` of the attempt came with the result and is recorded
        by this call, exactly as :meth:`accept` would have recorded it first (one script call
        instead of two). A finished attempt is then refused as :meth:`accept` refuses it
        (``StaleAttempt``), not reported as a duplicate.
        ``attachments``: the result's (name, media type, bytes), kept with the job until it is
        removed and sent with its ``done``.
        """
        args: list[Arg] = [job_id, node_id, attempt, "1" if ok else "0", output_json,
                           orjson.dumps(error) if error is not None else "null"]
        failed_retryably = retryable and not ok
        if accepted or failed_retryably or attachments:
            args.append("1" if accepted else "")
        if failed_retryably or attachments:
            args += ["1", repr(self.draw() if draw is None else draw)] if failed_retryably \
                else ["", ""]
        if attachments:
            args += attachment_args(attachments)
        state, status = await self._call("job_result", [self.keys.job(job_id)], args)
        return _text(state), _text(status) == "duplicate"

    async def finish_many(self, node_id: str, items: Sequence[BurstItem]) -> list[Outcome]:
        """A node's burst of accepts and results in one ``job_result_many`` call, each item as
        its own call (:meth:`accept`, :meth:`result`) would record it, refused alone.

        Returns one outcome per message, in order (schedd.core.burst). Raises only what fails
        the whole call (the store unavailable).
        """
        if not items:
            return []
        keys = [self.keys.job(item.job_id) for item in items]
        reply = await self._call("job_result_many", keys, burst_args(node_id, items, self.draw))
        return outcomes(reply)

    async def cancel(self, job_id: str, *, principal: str = "", reason: str = "") -> str:
        """Cancel a job in any non-terminal state (``principal`` '' = operator); returns
        ``canceled``, or the terminal state of a job that had already finished (a no-op)."""
        state, _changed = await self.cancel_changed(job_id, principal=principal, reason=reason)
        return state

    async def cancel_changed(
        self, job_id: str, *, principal: str = "", reason: str = ""
    ) -> tuple[str, bool]:
        """:meth:`cancel`, also saying whether this call cancelled the job."""
        state, changed = await self._call(
            "job_cancel",
            [self.keys.job(job_id)],
            [principal, job_id, reason or "canceled"],
        )
        return _text(state), _text(changed) == "1"

    async def requeue(self, job_id: str, *, reason: str = "") -> tuple[bool, str, int]:
        """Put a failed, canceled or timed-out job back to work with a fresh attempt budget (an
        operator). Returns (whether it was requeued, its state, its attempt): a job not finished
        is left as it is (False). Raises :class:`~schedd.errors.InvalidState` for a job that
        ended ``done``."""
        status, state, attempt = await self._call(
            "job_requeue", [self.keys.job(job_id)],
            [job_id, reason or "requeued", self.settings.max_queued],
        )
        return _text(status) == "requeued", _text(state), int(attempt)

    async def follow(self, job_id: str, *, principal: str = "") -> Followed:
        """Route the job's progress and done to this instance."""
        state, attempt, done, follows = await self._call(
            "job_follow", [self.keys.job(job_id)], [principal, job_id]
        )
        done_msg = decode_delivery(done) if done else None
        return Followed(state=_text(state), attempt=int(attempt),
                        done=done_msg if isinstance(done_msg, DoneDelivery) else None,
                        follows=int(follows))

    async def follow_session(self, session_id: str, *, principal: str) -> SessionFollowed:
        """Route the ordered session's results to this instance: the waiting ones that can go
        are delivered now, in order (:class:`~schedd.errors.SessionNotFound` when the principal
        has no such session)."""
        nxt, held, _before = await self._call(
            "session_follow", [self.keys.order(order_id(principal, session_id))],
            [principal, session_id],
        )
        return SessionFollowed(next_seq=int(nxt), held=int(held))

    async def leave_session(self, session_id: str, *, principal: str) -> bool:
        """No connection here follows the session any more: its results wait for the next
        follow. False when another instance has the session now."""
        (left,) = await self._call(
            "session_leave", [self.keys.order(order_id(principal, session_id))],
            [principal, session_id],
        )
        return bool(left)

    async def reap(self) -> tuple[int, int, int, int]:
        """One reaper pass: (nodes lost, deadlines and due delayed jobs handled, records removed,
        inboxes removed)."""
        k = self.keys
        lost, due, removed, inboxes, *rest = await self._call(
            "reap",
            [k.alive, k.deadlines, k.gc, k.instances],
            [self.settings.reaper_batch, _ms(self.settings.node_retention)],
        )
        due_in = int(rest[0]) if rest else -1
        self.next_delayed_in = due_in / 1000 if due_in >= 0 else None
        return int(lost), int(due), int(removed), int(inboxes)

    # -- reconciliation ------------------------------------------------------------------------
    # What an instance checks and corrects when the store and its connections disagree (Redis
    # flushed, restarted without persistence, or failed over to a replica that missed writes).
    # The reads here decide nothing; every correction is a fenced script.

    async def owned_nodes(self) -> set[str]:
        """Node ids this instance's owned-node index names (registered here, not offline)."""
        members = await self.store.execute("SMEMBERS", self.keys.owned(self.instance))
        return {_text(member) for member in members or ()}

    async def reconcile_nodes(
        self, connected: Sequence[tuple[str, int]], unconnected: Sequence[str] = ()
    ) -> tuple[list[tuple[str, str]], list[tuple[str, int]]]:
        """Compare this instance's connections with the store (``node_reconcile``).

        :param connected: (node id, epoch of its connection here) for nodes connected here.
        :param unconnected: ids from :meth:`owned_nodes` with no connection here.
        :returns: (node id, verdict) for each connected node the store disagrees about, and
            (node id, epoch) for each unconnected node the store still has online under this
            instance. Also raises the namespace epoch counter to the highest epoch given.
        """
        k = self.keys
        args: list[Arg] = [len(connected)]
        for node_id, epoch in connected:
            args.extend((node_id, epoch))
        args.extend(unconnected)
        verdicts, owned = await self._call(
            "node_reconcile", [k.alive, k.counts, k.owned(self.instance)], args
        )
        return (
            [(_text(verdicts[i]), _text(verdicts[i + 1])) for i in range(0, len(verdicts), 2)],
            [(_text(owned[i]), int(owned[i + 1])) for i in range(0, len(owned), 2)],
        )

    async def node_job_sets(self, node_ids: Sequence[str]) -> dict[str, set[str]]:
        """The job ids in each node's job set (assigned to or running on it), in one pipeline."""
        replies = await self.store.execute_many(
            [("SMEMBERS", self.keys.node_jobs(node_id)) for node_id in node_ids]
        )
        return {
            node_id: {_text(job_id) for job_id in reply or ()}
            for node_id, reply in zip(node_ids, replies, strict=True)
        }

    async def job_placements(self, job_ids: Sequence[str]) -> dict[str, tuple[str, str, int]]:
        """(state, node, attempt) of each job that has a record, in one pipeline."""
        replies = await self.store.execute_many(
            [("HMGET", self.keys.job(job_id), "state", "node", "attempt") for job_id in job_ids]
        )
        return {
            job_id: (_text(state), _text(node), int(attempt or 0))
            for job_id, (state, node, attempt) in zip(job_ids, replies, strict=True)
            if state is not None
        }

    async def job_lost(
        self, job_id: str, *, node_id: str, epoch: int, attempt: int, reason: str
    ) -> tuple[str, str]:
        """A node held here does not run a job the store gives it (``job_lost``).

        Fenced by the node's owner and epoch and the job's node and attempt. Returns
        (``requeued`` | ``released`` | ``none``, the job's state after it).
        """
        k = self.keys
        status, state = await self._call(
            "job_lost",
            [k.job(job_id), k.node(node_id), k.node_jobs(node_id)],
            [job_id, node_id, epoch, attempt, reason],
        )
        return _text(status), _text(state)
