"""Where each delivery of the core goes on this instance: the router.

A node's deliveries (``assign``, ``cancel``, ``drain``) go to the connection that speaks for the
node (:class:`Router`); a job's ``progress`` and ``done`` to the connection that follows it
(:class:`Routes`). A delivery with no local connection is dropped: deadlines cover it.

Rules of the job routes:
  * A connection follows a job only after the store said its principal owns the job (the
    ``job_submit`` or ``job_follow`` script accepted it). While that script runs, the connection
    is a *candidate*: it never displaces the job's follower, and a refusal just removes it.
  * A ``progress`` or ``done`` goes only to connections of the principal the delivery names
    (the job's owner): the follower, and candidates (their scripts cannot be refused for that
    principal), which hold it until their reply has gone out. A delivery that names no
    principal goes to the follower only. Nothing else ever receives a job's deliveries.
  * One follower per job: the newest authorised follow or duplicate submit takes the job's
    deliveries (newest by the job's ``follows`` count, which the scripts keep). The connection
    it replaces gets ``E_DETACHED`` for the job, on this instance directly; a move to another
    instance arrives here as a :class:`~schedd.core.Detach` delivery.
  * An ordered session's ``done``s and ``skipped``s (the store sends them in seq order) go to
    the connection of the session's principal that last submitted to or followed the session
    here, in the order they came (a ``done`` may precede the ``accepted`` of its job's
    submit); with none, a ``done`` goes to the job's follower, a ``skipped`` is dropped. A
    connection is named the session's before its script runs: the session is keyed by its
    principal, so no other principal's connection can receive them.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from typing import Generic, Protocol, TypeVar

import attrs

from schedd.core import (
    AssignDelivery,
    CancelJob,
    Delivery,
    Detach,
    DoneDelivery,
    DrainNode,
    ProgressDelivery,
    SkippedDelivery,
)


class Connection(Protocol):
    """What the router needs of a local connection (a session)."""

    #: the principal the connection speaks for
    principal: str
    #: the jobs it follows (the router keeps this set)
    following: set[str]
    #: the ordered sessions of its principal it follows (the router keeps this set)
    sessions: set[str]

    def deliver(self, delivery: Delivery) -> None:
        """Send a delivery of the core to the peer."""

    def deliver_done(self, done: DoneDelivery) -> None:
        """Send a job's done to the peer."""

    def detached(self, job_id: str) -> None:
        """Another connection follows the job now: tell the peer (``E_DETACHED``)."""

    def speaks_for(self, node_id: str) -> bool:
        """Whether the connection holds (or is registering) the node's registration."""


Session = TypeVar("Session", bound=Connection)

log = logging.getLogger(__name__)


@attrs.define(eq=False)
class Candidate(Generic[Session]):
    """A connection whose follow or submit of a job is in flight."""

    session: Session
    #: deliveries of the job that came while the script ran, for after its reply
    held: list[ProgressDelivery | DoneDelivery] = attrs.Factory(list)
    #: the ``follows`` count of a newer move of the job to another instance, learnt meanwhile
    superseded: int = -1


@attrs.define(eq=False)
class Follower(Generic[Session]):
    session: Session
    #: the job's ``follows`` count when this connection took it
    follows: int


class Routes(Generic[Session]):
    """A job's follower and candidates on this instance."""

    def __init__(self) -> None:
        self.followers: dict[str, Follower[Session]] = {}
        self.candidates: dict[str, list[Candidate[Session]]] = {}
        #: (principal, session id) -> the connection that follows the ordered session here
        self.sessions: dict[tuple[str, str], Session] = {}
        #: deliveries for a session whose follow's script runs, for after its reply
        self.session_held: dict[tuple[str, str], list[DoneDelivery | SkippedDelivery]] = {}

    def follow_session(self, session_id: str, session: Session) -> None:
        """``session`` takes the ordered session's results here (its principal's session)."""
        key = (session.principal, session_id)
        previous = self.sessions.get(key)
        if previous is not None and previous is not session:
            previous.sessions.discard(session_id)
        self.sessions[key] = session
        session.sessions.add(session_id)

    def expect_session(self, session_id: str, session: Session) -> None:
        """:meth:`follow_session` for a session follow whose script runs now: what comes for
        the session meanwhile waits for :meth:`settle_session` (after the reply)."""
        self.follow_session(session_id, session)
        self.session_held[(session.principal, session_id)] = []

    def settle_session(self, session_id: str, session: Session, followed: bool) -> None:
        """The session follow's script answered (``followed`` False: it refused): the
        connection gets what came meanwhile; a refused one does not follow the session."""
        key = (session.principal, session_id)
        for delivery in self.session_held.pop(key, ()):
            session.deliver(delivery)
        if not followed and self.sessions.get(key) is session:
            del self.sessions[key]
            session.sessions.discard(session_id)

    def _to_session(self, key: tuple[str, str], session: Session,
                    delivery: DoneDelivery | SkippedDelivery) -> None:
        held = self.session_held.get(key)
        if held is not None:
            held.append(delivery)
        else:
            session.deliver(delivery)

    def skipped(self, delivery: SkippedDelivery) -> None:
        """Hand a session's skipped report to the connection following the session here."""
        key = (delivery.principal, delivery.session_id)
        session = self.sessions.get(key)
        if session is None:
            log.debug("no local connection follows session %s; dropped", delivery.session_id)
            return
        self._to_session(key, session, delivery)

    def _route_ordered(self, delivery: DoneDelivery, session_id: str) -> bool:
        """A done of an ordered session goes to the session's connection, in the session's
        order (not held for a reply of its job's submit, which would let later seqs pass it):
        False when none follows the session here."""
        key = (delivery.principal or "", session_id)
        session = self.sessions.get(key)
        if session is None:
            return False
        follower = self.followers.get(delivery.job_id)
        if follower is not None and follower.session is session:
            del self.followers[delivery.job_id]
            session.following.discard(delivery.job_id)
        self._to_session(key, session, delivery)
        return True

    def expect(self, job_id: str, session: Session) -> Candidate[Session]:
        """``session`` is about to ask the store for the job's deliveries."""
        candidate = Candidate(session)
        self.candidates.setdefault(job_id, []).append(candidate)
        return candidate

    def settle(
        self,
        job_id: str,
        candidate: Candidate[Session],
        follows: int | None,
        done: DoneDelivery | None = None,
    ) -> None:
        """The candidate's script answered: ``follows`` when it accepted the caller (the job's
        count), None when it refused or failed. The candidate gets what it held, then the
        script's ``done`` unless it already had one; an accepted candidate of an unfinished job
        follows it from now on, unless a newer follow took the job (it is then detached)."""
        waiting = self.candidates.get(job_id)
        if waiting is not None:
            waiting.remove(candidate)
            if not waiting:
                del self.candidates[job_id]
        session = candidate.session
        finished = False
        for delivery in candidate.held:
            finished = finished or isinstance(delivery, DoneDelivery)
            session.deliver(delivery)
        if done is not None and not finished:
            session.deliver_done(done)
            finished = True
        if follows is None or finished:
            return
        current = self.followers.get(job_id)
        if candidate.superseded > follows or (
                current is not None and current.session is not session
                and current.follows > follows):
            session.detached(job_id)
            return
        self.followers[job_id] = Follower(session, follows)
        session.following.add(job_id)
        if current is not None and current.session is not session:
            self._detach(job_id, current.session)

    def route(self, delivery: ProgressDelivery | DoneDelivery) -> None:
        """Hand a job's progress or done to its owner's connections here (module rules)."""
        job_id, principal = delivery.job_id, delivery.principal
        if isinstance(delivery, DoneDelivery) and delivery.session_id is not None \
                and self._route_ordered(delivery, delivery.session_id):
            return
        held_by: list[Session] = []
        for candidate in self.candidates.get(job_id, ()):
            if principal == candidate.session.principal:
                candidate.held.append(delivery)
                held_by.append(candidate.session)
        follower = self.followers.get(job_id)
        if follower is not None and principal in (None, follower.session.principal):
            session = follower.session
            if isinstance(delivery, DoneDelivery):
                del self.followers[job_id]
                session.following.discard(job_id)
            if session not in held_by:  # else it gets it after its reply
                session.deliver(delivery)
        elif not held_by:
            log.debug("no local connection of the job's principal for %s; dropped", delivery)

    def detach(self, delivery: Detach) -> None:
        """The job's deliveries moved to another instance by its ``follows``-th move."""
        job_id, principal = delivery.job_id, delivery.principal
        for candidate in self.candidates.get(job_id, ()):
            if candidate.session.principal == principal:
                candidate.superseded = max(candidate.superseded, delivery.follows)
        follower = self.followers.get(job_id)
        if follower is not None and follower.session.principal == principal \
                and follower.follows < delivery.follows:
            self._detach(job_id, follower.session)

    def _detach(self, job_id: str, session: Session) -> None:
        follower = self.followers.get(job_id)
        if follower is not None and follower.session is session:
            del self.followers[job_id]
        session.following.discard(job_id)
        session.detached(job_id)

    def forget(self, session: Session) -> list[str]:
        """A connection closed: it follows nothing any more. Returns the ordered sessions it
        followed here, which no connection here follows now."""
        for job_id in session.following:
            follower = self.followers.get(job_id)
            if follower is not None and follower.session is session:
                del self.followers[job_id]
        session.following.clear()
        left = []
        for session_id in session.sessions:
            key = (session.principal, session_id)
            if self.sessions.get(key) is session:
                del self.sessions[key]
                left.append(session_id)
        session.sessions.clear()
        return left


class Router(Generic[Session]):
    """Routes every delivery of the core to the local connection it is for."""

    def __init__(self, sessions: Collection[Session]) -> None:
        #: the open sessions (the app's set, read only here)
        self._sessions = sessions
        #: which local connection speaks for each node
        self.nodes: dict[str, Session] = {}
        #: which local connection receives each job's progress and done
        self.jobs: Routes[Session] = Routes()

    def deliver(self, delivery: Delivery) -> None:
        """The core's ``on_delivery``: hand ``delivery`` to its connection here, if any."""
        if isinstance(delivery, AssignDelivery | CancelJob | DrainNode):
            session = self.nodes.get(delivery.node_id)
        elif isinstance(delivery, ProgressDelivery | DoneDelivery):
            self.jobs.route(delivery)
            return
        elif isinstance(delivery, Detach):
            self.jobs.detach(delivery)
            return
        elif isinstance(delivery, SkippedDelivery):
            self.jobs.skipped(delivery)
            return
        else:  # pragma: no cover - exhaustive
            return
        if session is None:
            log.debug("no local connection for %s; dropped (deadlines cover it)", delivery)
            return
        session.deliver(delivery)

    def reroute(self, deliveries: list[Delivery]) -> None:
        """Route deliveries again (ones a refused registration held for the node)."""
        for delivery in deliveries:
            self.deliver(delivery)

    def bind_node(self, node_id: str, session: Session) -> Session | None:
        """Route the node's deliveries to ``session``; returns who had them before, untouched
        (its registration may still be refused: :meth:`unbind_node` with ``restore``)."""
        previous = self.nodes.get(node_id)
        self.nodes[node_id] = session
        return previous if previous is not session else None

    def unbind_node(
        self, node_id: str, session: Session, restore: Session | None = None
    ) -> bool:
        """Stop routing the node to ``session`` (back to ``restore`` when it is still open and
        speaks for the node). Returns whether ``session`` had the node."""
        if self.nodes.get(node_id) is not session:
            return False
        if restore is not None and restore in self._sessions and restore.speaks_for(node_id):
            self.nodes[node_id] = restore
        else:
            del self.nodes[node_id]
        return True
