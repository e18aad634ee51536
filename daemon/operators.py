"""Operator actions: drain and undrain a node, cancel a job, requeue failed jobs.

Rules of this module:

- Each action is one script call (``node_drain``, ``node_undrain``, ``job_cancel``,
  ``job_requeue``): atomic, fenced where a registration or attempt is involved, and idempotent;
  repeating an action reports ``unchanged`` and changes nothing. The keys are the namespace's,
  so a node or job of another namespace cannot be named: its id is unknown here (``E_NO_NODE``,
  ``E_NO_JOB``).
- Who may act is decided before: the wire (an admin token's connection) and the ui plugin (its
  admin token) call in here only for an admin. ``who`` names the actor in the log: a principal
  with its address, or ``ui admin <address>``.
- Every action is logged once with who, what and the outcome: INFO when it did something or
  nothing was to do, WARNING when it was refused.
- A requeue by filter reads its candidates from a bounded window (:func:`requeue_candidates`)
  and acts on at most :data:`MAX_REQUEUE` jobs per call; a larger ``limit`` is refused.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final

import attrs

from schedd.core import Core, JobFilter, Queries
from schedd.errors import BadArgument, ScriptError
from schedd.protocol import MAX_JOB_PAGE
from schedd.protocol.admin import MAX_ADMIN_JOBS
from schedd.protocol.admin import REQUEUE_STATES as _STATES

__all__ = [
    "ACTIONS",
    "MAX_REQUEUE",
    "REQUEUE_STATES",
    "Operators",
    "RequeueFilter",
    "requeue_candidates",
]

log = logging.getLogger(__name__)

#: the actions, as the wire and the ui name them
ACTIONS: Final = ("drain", "undrain", "cancel", "requeue")  # protocol.ADMIN_ACTIONS, in order
#: most jobs one requeue by filter acts on (the protocol's bound)
MAX_REQUEUE: Final = MAX_ADMIN_JOBS
#: the states a requeue takes a job back from (a ``done`` job succeeded: it is not requeued)
REQUEUE_STATES: Final = tuple(sorted(_STATES))
#: how many entries of each wanted state's browsing index a requeue by filter looks through
CANDIDATE_WINDOW: Final = 2000

Result = dict[str, Any]


@attrs.frozen(kw_only=True)
class RequeueFilter:
    """Which finished jobs a requeue by filter takes: newest first, at most ``limit``."""

    states: tuple[str, ...] = ("failed",)
    pool: str | None = None
    #: finished within this many seconds (None: any time in the window)
    since: float | None = None
    limit: int = MAX_REQUEUE

    def check(self) -> None:
        """Raise :class:`~schedd.errors.BadArgument` for a filter the action refuses."""
        if not self.states:
            raise BadArgument(f"states must name one or more of {', '.join(REQUEUE_STATES)}")
        for state in self.states:
            if state not in REQUEUE_STATES:
                raise BadArgument(f"state {state!r} is not requeued; one of "
                                  f"{', '.join(REQUEUE_STATES)}")
        if not 1 <= self.limit <= MAX_REQUEUE:
            raise BadArgument(f"limit must be 1 to {MAX_REQUEUE} (a requeue acts on at most "
                              f"{MAX_REQUEUE} jobs per call), got {self.limit}")
        if self.since is not None and not self.since > 0:
            raise BadArgument(f"since must be > 0 seconds, got {self.since}")

    def describe(self) -> str:
        parts = [f"states {','.join(self.states)}"]
        if self.pool is not None:
            parts.append(f"pool {self.pool}")
        if self.since is not None:
            parts.append(f"since {self.since:g}s")
        parts.append(f"limit {self.limit}")
        return " ".join(parts)


async def requeue_candidates(queries: Queries, wanted: RequeueFilter, now_ms: int) -> list[str]:
    """The ids of the jobs ``wanted`` names, newest submission first: read from the browsing
    index of each wanted state (pages of :meth:`Queries.list_jobs`, at most
    :data:`CANDIDATE_WINDOW` entries looked at per state), each checked against its record as
    it is now. The one place that chooses candidates."""
    oldest = None if wanted.since is None else now_ms - round(wanted.since * 1000)
    found: list[tuple[int, str]] = []
    for state in wanted.states:
        cursor: str | None = None
        examined = 0
        matched = 0
        while examined < CANDIDATE_WINDOW and matched < wanted.limit:
            page = await queries.list_jobs(
                JobFilter(state=state, pool=wanted.pool, limit=MAX_JOB_PAGE, cursor=cursor)
            )
            examined += max(page.examined, 1)
            for job in page.jobs:
                if oldest is None or job.finished_ms >= oldest:
                    found.append((job.submitted_ms, job.job_id))
                    matched += 1
            if page.cursor is None:
                break
            cursor = page.cursor
    found.sort(reverse=True)
    return [job_id for _submitted, job_id in found[: wanted.limit]]


def _refusal(exc: ScriptError) -> Result:
    return {"outcome": "error", "code": exc.code, "message": exc.message}


class Operators:
    """The operator actions of one instance, over its core; each returns what it did."""

    def __init__(
        self, core: Core, queries: Queries, now_ms: Callable[[], int] | None = None
    ) -> None:
        self.core = core
        self.queries = queries
        self._now_ms = now_ms or (lambda: int(time.time() * 1000))

    async def _logged(self, who: str, what: str, act: Callable[[], Awaitable[Result]]) -> Result:
        try:
            result = await act()
        except ScriptError as exc:
            log.warning("operator %s: %s refused: %s %s", who, what, exc.code, exc.message)
            raise
        log.info("operator %s: %s: %s", who, what, result["outcome"])
        return result

    async def drain(self, node_id: str, *, who: str) -> Result:
        """Drain a node: it takes no new jobs, its running ones finish. ``outcome`` is
        ``drained`` or ``unchanged`` (it was draining)."""
        async def act() -> Result:
            held, changed = await self.core.drain_node_changed(
                node_id, reason=f"drained by operator {who}")
            return {"node_id": node_id, "outcome": "drained" if changed else "unchanged",
                    "state": "draining", "jobs": held}
        return await self._logged(who, f"drain node {node_id}", act)

    async def undrain(self, node_id: str, *, who: str) -> Result:
        """Lift a node's drain. ``outcome`` is ``undrained`` or ``unchanged`` (it was online)."""
        async def act() -> Result:
            changed = await self.core.undrain_node(node_id, reason=f"undrained by operator {who}")
            return {"node_id": node_id, "outcome": "undrained" if changed else "unchanged",
                    "state": "online"}
        return await self._logged(who, f"undrain node {node_id}", act)

    async def cancel(self, job_id: str, *, who: str) -> Result:
        """Cancel a job of any principal. ``outcome`` is ``canceled`` or ``unchanged`` (it had
        finished; ``state`` says how)."""
        async def act() -> Result:
            state, changed = await self.core.cancel_changed(
                job_id, reason=f"canceled by operator {who}")
            return {"job_id": job_id, "outcome": "canceled" if changed else "unchanged",
                    "state": state}
        return await self._logged(who, f"cancel job {job_id}", act)

    async def requeue(self, job_id: str, *, who: str) -> Result:
        """Requeue one finished job. ``outcome`` is ``requeued`` or ``unchanged`` (it is queued,
        assigned or running); ``state`` is where it is now."""
        async def act() -> Result:
            changed, state, attempt = await self.core.requeue(
                job_id, reason=f"requeued by operator {who}")
            return {"job_id": job_id, "outcome": "requeued" if changed else "unchanged",
                    "state": state, "attempt": attempt}
        return await self._logged(who, f"requeue job {job_id}", act)

    async def requeue_matching(self, wanted: RequeueFilter, *, who: str) -> list[Result]:
        """Requeue the jobs ``wanted`` names (at most :data:`MAX_REQUEUE`), newest first; a job
        that changed between the read and its script gets its refusal in its result."""
        try:
            wanted.check()
        except BadArgument as exc:
            log.warning("operator %s: requeue (%s) refused: %s", who, wanted.describe(), exc)
            raise
        ids = await requeue_candidates(self.queries, wanted, self._now_ms())
        results = []
        for job_id in ids:
            try:
                results.append(await self.requeue(job_id, who=who))
            except ScriptError as exc:
                results.append({"job_id": job_id, **_refusal(exc)})
        log.info("operator %s: requeue (%s): %d matched, %d requeued", who, wanted.describe(),
                 len(ids), sum(r["outcome"] == "requeued" for r in results))
        return results

    async def run(self, action: str, target: str | None, wanted: RequeueFilter | None, *,
                  who: str) -> list[Result]:
        """One action by name (``ACTIONS``): ``target`` is the node or job id; a ``requeue``
        without one takes ``wanted``."""
        if action == "requeue" and target is None:
            return await self.requeue_matching(wanted or RequeueFilter(), who=who)
        if target is None:
            raise BadArgument(f"{action} needs a {'node' if 'drain' in action else 'job'} id")
        handlers: dict[str, Callable[..., Awaitable[Result]]] = {
            "drain": self.drain, "undrain": self.undrain, "cancel": self.cancel,
            "requeue": self.requeue,
        }
        if action not in handlers:
            raise BadArgument(f"unknown action {action!r}; one of {', '.join(ACTIONS)}")
        return [await handlers[action](target, who=who)]

