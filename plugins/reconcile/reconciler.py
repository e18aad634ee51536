"""One daemon instance's reconciler: every period, make the store agree with the connections.

Rules of this module:

- Redis is the truth about nodes and jobs, but the instance is the truth about which connections
  it holds. When the two disagree (Redis flushed, restarted without persistence, failed over to a
  replica that missed writes), the connection side wins for what only the instance can know
  (this node is connected here; it runs these jobs), and the store side wins for the rest.
- Reads decide nothing: every correction is a script fenced by owner, epoch, node or attempt,
  so a correction based on a read that is already stale is refused, never applied.
- Nothing is corrected on one sighting where a transient state could explain it: an owned node
  without a connection must be missing at two passes (and for ``[nodes] disconnect_grace``); a
  job missing from a node must have been the node's at the previous pass and be absent from
  two heartbeats received after it; a job the node runs but the store does not give it must be
  so at the previous pass and be listed by two heartbeats received after it; a stray job-set
  entry must be seen at two passes.
- Only nodes this instance owns are touched; a pass costs one ``SMEMBERS``, one
  ``node_reconcile`` call per :data:`BATCH` connected nodes, one ``SMEMBERS`` per connected node
  and one ``HMGET`` per job those name, all pipelined; corrections cost one script each.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Final

import attrs
import trio

from schedd.api import (
    MAX_RUNNING,
    Cancel,
    Daemon,
    Fenced,
    LocalNode,
    NodeNotFound,
    NotYourNode,
    ScriptError,
    StoreError,
)

__all__ = ["BATCH", "CORRECTIONS", "ReconcileStats", "Reconciler"]

log = logging.getLogger(__name__)

BATCH: Final = 500
"""Connected nodes per ``node_reconcile`` call: bounds the time one call holds Redis."""

CORRECTIONS: Final = (
    "nodes_offline",
    "nodes_reregistered",
    "connections_closed",
    "jobs_requeued",
    "slots_released",
    "jobs_cancelled",
)
"""Every kind of correction, in the order the log line lists them (see ``docs/plugins.md``)."""

_ACTIVE: Final = frozenset({"assigned", "running"})
_REREGISTER: Final = frozenset({"missing", "offline", "epoch", "not_alive", "foreign"})


def _zero() -> dict[str, int]:
    return dict.fromkeys(CORRECTIONS, 0)


@attrs.define
class ReconcileStats:
    """What one instance's reconciler did since it started (read it, do not change it)."""

    passes: int = 0
    """Passes completed."""
    failed_passes: int = 0
    """Passes cut short by the store (or a bug); the next period tries again."""
    corrections: dict[str, int] = attrs.field(factory=_zero)
    """Cumulative count of each kind in :data:`CORRECTIONS`."""
    last_pass: dict[str, int] = attrs.field(factory=_zero)
    """The counts of the last completed pass."""


@attrs.define
class _NodeView:
    """What a pass saw of one node, kept for the next pass."""

    session: LocalNode
    marker: Sequence[str] | None  # the newest heartbeat's list object at that pass (by identity)
    mine: dict[str, int]  # job -> attempt the store gives the node
    strays: set[str]  # job-set entries the store does not place on the node
    unindexed: dict[str, int]  # job -> attempt placed on the node but missing from its job set
    foreign: set[str]  # jobs both heartbeats list that the store does not give the node


class Reconciler:
    """The reconciliation of one daemon instance."""

    def __init__(self, app: Daemon, period: float) -> None:
        self.app = app
        self.period = period
        self.stats = ReconcileStats()
        self._wake = trio.Event()
        self._unconnected: dict[str, tuple[int, float]] = {}  # node -> (epoch, first seen)
        self._views: dict[str, _NodeView] = {}

    def wake(self) -> None:
        """Run a pass soon (a heartbeat found a registration stale). Never blocks."""
        self._wake.set()

    async def run(self) -> None:
        """Pass every period, or sooner when woken; at most one woken pass per spacing."""
        spacing = min(self.period, self.app.heartbeat_interval)
        due = trio.current_time() + self.period
        while True:
            with trio.move_on_at(due):
                await self._wake.wait()
            self._wake = trio.Event()
            await self.reconcile_once()
            due = trio.current_time() + self.period
            await trio.sleep(spacing)

    async def reconcile_once(self) -> dict[str, int]:
        """One pass; returns its counts. Never raises (but Cancelled): failures are logged."""
        counts = _zero()
        try:
            if self.app.accepting:  # a draining daemon hands its nodes back: leave them be
                await self._pass(counts)
        except StoreError as exc:
            self.stats.failed_passes += 1
            log.warning("reconcile pass failed, retrying next period: %s", exc)
        except Exception:
            self.stats.failed_passes += 1
            log.exception("reconcile pass failed with a bug; retrying next period")
        else:
            self.stats.passes += 1
            self.stats.last_pass = counts
        for kind, count in counts.items():
            self.stats.corrections[kind] += count
        if any(counts.values()):
            log.info("reconcile: %s", " ".join(f"{k}={v}" for k, v in counts.items() if v))
        return counts

    # -- one pass ------------------------------------------------------------------------------

    async def _pass(self, counts: dict[str, int]) -> None:
        app, core = self.app, self.app.corrections
        local = {
            node_id: session
            for node_id, session in app.nodes.items()
            if session.node_id == node_id
            and session.epoch is not None
            and session.registration is not None
        }
        epochs = {node_id: session.epoch for node_id, session in local.items()}
        owned = await core.owned_nodes()
        unconnected = sorted(owned - app.nodes.keys())
        pairs = [(node_id, epoch) for node_id, epoch in epochs.items() if epoch is not None]
        if not pairs and not unconnected:
            self._unconnected, self._views = {}, {}
            return
        verdicts: list[tuple[str, str]] = []
        still_owned: list[tuple[str, int]] = []
        for start in range(0, max(len(pairs), 1), BATCH):
            found, strays = await core.reconcile_nodes(
                pairs[start : start + BATCH], unconnected if start == 0 else ()
            )
            verdicts += found
            still_owned += strays
        await self._take_offline(still_owned, counts)
        wrong = {node_id for node_id, _ in verdicts}
        for node_id, verdict in verdicts:
            await self._fix_registration(local[node_id], node_id, epochs[node_id], verdict, counts)
        healthy = {n: s for n, s in local.items() if n not in wrong}
        await self._reconcile_jobs(healthy, epochs, counts)
        self._views = {n: v for n, v in self._views.items() if n in healthy}

    def _current(self, session: LocalNode, node_id: str, epoch: int | None) -> bool:
        """The session still speaks for the node at the epoch the pass read."""
        return self.app.nodes.get(node_id) is session and session.epoch == epoch

    # -- 1. owned here, online in the store, no connection here: offline ----------------------

    async def _take_offline(
        self, still_owned: list[tuple[str, int]], counts: dict[str, int]
    ) -> None:
        now = trio.current_time()
        grace = self.app.disconnect_grace
        seen, self._unconnected = self._unconnected, {}
        for node_id, epoch in still_owned:
            first = seen.get(node_id)
            if first is None or first[0] != epoch or now - first[1] < grace:
                self._unconnected[node_id] = first if first and first[0] == epoch else (epoch, now)
                continue
            if node_id in self.app.nodes:
                continue  # it came back meanwhile
            try:
                moved = await self.app.corrections.node_offline(
                    node_id, epoch=epoch,
                    reason=f"no connection on instance {self.app.instance} (reconciled)",
                )
            except (Fenced, NodeNotFound):
                continue  # registered again meanwhile (here or elsewhere)
            if moved is not None:
                counts["nodes_offline"] += 1

    # -- 2. connected here, missing or stale in the store: register again, or close -----------

    async def _fix_registration(
        self, session: LocalNode, node_id: str, epoch: int | None, verdict: str,
        counts: dict[str, int],
    ) -> None:
        if not self._current(session, node_id, epoch):
            return  # closed, replaced or registered again since the read
        if verdict not in _REREGISTER:  # "elsewhere": the node registered again on another
            log.info("node %s registered again elsewhere; closing its connection from %s",
                     node_id, session.peer)
            session.refuse_stale()
            counts["connections_closed"] += 1
            return
        try:
            new_epoch = await session.register_again()
        except LookupError:
            return
        except NotYourNode:  # another principal registered the id since the store lost this one
            session.refuse_stale(f"node {node_id} is registered by another principal now")
            counts["connections_closed"] += 1
            return
        except ScriptError as exc:
            log.warning("could not register node %s again: %s", node_id, exc)
            return
        counts["nodes_reregistered"] += 1
        log.info("node %s registered again in place (%s): epoch %s -> %s", node_id, verdict,
                 epoch, new_epoch)
        if session.draining and self._current(session, node_id, new_epoch):
            try:  # the store forgot the drain with the registration
                await self.app.corrections.drain_node(node_id, epoch=new_epoch,
                                               reason="draining (reconciled)")
            except (Fenced, NodeNotFound) as exc:
                log.debug("drain of node %s again: %s", node_id, exc)

    # -- 3 and 4. jobs: the store's view of each node against the node's heartbeats ------------

    async def _reconcile_jobs(
        self, healthy: dict[str, LocalNode], epochs: dict[str, int | None], counts: dict[str, int]
    ) -> None:
        core = self.app.corrections
        if not healthy:
            return
        held = await core.node_job_sets(list(healthy))
        reported = {n: _reported(s.running_seen) for n, s in healthy.items()}
        wanted: set[str] = set()
        for node_id in healthy:
            wanted |= held[node_id] | reported[node_id]
        placements = await core.job_placements(sorted(wanted))
        for node_id, session in healthy.items():
            epoch = epochs[node_id]
            if epoch is None or not self._current(session, node_id, epoch):
                self._views.pop(node_id, None)
                continue
            view = self._views.get(node_id)
            if view is not None and view.session is not session:
                view = None
            seen = session.running_seen
            mine: dict[str, int] = {}
            strays: set[str] = set()
            for job_id in held[node_id]:
                placed = placements.get(job_id)
                if placed is not None and placed[0] in _ACTIVE and placed[1] == node_id:
                    mine[job_id] = placed[2]
                else:
                    strays.add(job_id)
            unindexed = {
                job_id: placed[2]
                for job_id in reported[node_id] - held[node_id]
                if (placed := placements.get(job_id)) is not None
                and placed[0] in _ACTIVE and placed[1] == node_id
            }
            fresh = view is not None and _two_since(seen, view.marker)
            # 3. the store's job is not in the node's last two heartbeats, both received after
            # the previous pass saw the job on the node at this attempt
            if view is not None and fresh and not _truncated(seen):
                listed = set(seen[0]) | set(seen[1])
                for job_id, attempt in mine.items():
                    if job_id not in listed and view.mine.get(job_id) == attempt:
                        await self._lost(node_id, epoch, job_id, attempt, "not in the node's "
                                         "heartbeats", counts)
            if view is not None:
                for job_id in strays & view.strays:
                    await self._lost(node_id, epoch, job_id, 0, "stray job-set entry", counts)
                for job_id, attempt in unindexed.items():
                    if view.unindexed.get(job_id) == attempt:
                        await self._lost(node_id, epoch, job_id, attempt, "missing from the "
                                         "node's job set", counts)
            # 4. the node runs a job the store does not know or does not give it: cancel it
            foreign: set[str] = set()
            for job_id in sorted(_listed_twice(seen)):
                placed = placements.get(job_id)
                if placed is not None and placed[1] == node_id and placed[0] in _ACTIVE:
                    continue
                foreign.add(job_id)
                if view is None or not fresh or job_id not in view.foreign:
                    continue  # a listing older than the job's end explains one sighting
                # The heartbeat names no attempt. Where the store names this node (a job that
                # ended here) its attempt is the node's; otherwise any attempt the node runs is
                # over, and a cancel without attempt stops whichever it is.
                cancel_attempt: int | None = None
                if placed is not None and placed[1] == node_id:
                    cancel_attempt = placed[2] or None
                session.post(Cancel(job_id=job_id, attempt=cancel_attempt))
                counts["jobs_cancelled"] += 1
                log.info("node %s runs job %s, which the store %s: cancel sent", node_id, job_id,
                         "does not know" if placed is None else f"has {placed[0]} on "
                         f"{placed[1] or 'no node'}")
            self._views[node_id] = _NodeView(
                session=session, marker=seen[-1] if seen else None, mine=mine, strays=strays,
                unindexed=unindexed, foreign=foreign,
            )

    async def _lost(
        self, node_id: str, epoch: int, job_id: str, attempt: int, why: str,
        counts: dict[str, int],
    ) -> None:
        try:
            status, state = await self.app.corrections.job_lost(
                job_id, node_id=node_id, epoch=epoch, attempt=attempt,
                reason=f"reconciled: {why}",
            )
        except (Fenced, NodeNotFound) as exc:
            log.debug("job %s on node %s moved on meanwhile: %s", job_id, node_id, exc)
            return
        if status == "requeued":
            counts["jobs_requeued"] += 1
            log.info("job %s attempt %s lost on node %s (%s): now %s", job_id, attempt, node_id,
                     why, state)
        elif status == "released":
            counts["slots_released"] += 1


def _reported(seen: Sequence[Sequence[str]]) -> set[str]:
    jobs: set[str] = set()
    for beat in seen:
        jobs.update(beat)
    return jobs


def _listed_twice(seen: Sequence[Sequence[str]]) -> Iterable[str]:
    """Jobs both of the last two heartbeats list (one listing may predate a legitimate end)."""
    if len(seen) < 2:
        return ()
    return set(seen[0]) & set(seen[1])


def _two_since(seen: Sequence[Sequence[str]], marker: Sequence[str] | None) -> bool:
    """Both kept heartbeats arrived after the pass that saw ``marker`` as the newest.

    The connection keeps a new list object per heartbeat, so identity tells them apart.
    """
    return len(seen) == 2 and all(beat is not marker for beat in seen)


def _truncated(seen: Sequence[Sequence[str]]) -> bool:
    """A heartbeat at the protocol's limit may not list every job the node runs."""
    return any(len(beat) >= MAX_RUNNING for beat in seen)
