"""``/metrics``: Prometheus families built from one Redis snapshot at scrape time.

Rules of this module:

- **One registry per daemon instance**, never prometheus_client's global one: a
  :class:`~prometheus_client.CollectorRegistry` holding one :class:`SchedCollector`, created by the
  ui service for its app.
- **Read at scrape time.** Collectors are synchronous, so a scrape first awaits
  :meth:`SchedCollector.refresh` (one snapshot from Redis, see :mod:`.stats`), then exposes it.
  When Redis does not answer, ``schedd_redis_up`` is 0 and only this instance's local metrics are
  exposed, so a scrape never fails because Redis did.
- **Global versus local.** Every metric of :data:`METRICS` except ``schedd_local_*``
  describes the whole namespace and is the same on every instance (aggregate across instances
  with ``max``, not ``sum``).
- **Bounded labels.** No label ever carries a node or job id. ``pool`` and ``reason`` values come
  from pool keys and node-declared services, which the node-pools plugin bounds in practice;
  :func:`capped` bounds them in any case to ``metrics_label_limit`` values per family, adding the
  rest up under :data:`OTHER`.
- **The catalogue** :data:`METRICS` lists every family this module exports; ``docs/metrics.md``
  documents each one and a test keeps the two in step.
- **Extension point.** Another plugin exports its own ``schedd_*`` families on this endpoint with
  :func:`add_collector` (a prometheus_client collector; an optional ``async refresh()`` is awaited
  before each scrape). A collector that raises is logged and skipped; a family whose name is
  already exported is dropped.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Final, Literal, cast

import attrs
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from schedd.api import JOB_STATES, Daemon, StoreError
from schedd.plugins.ui.stats import (
    FINISHED_STATES,
    PERCENTILES,
    Snapshot,
    SnapshotReader,
    latency_ms,
    throughput,
)

__all__ = [
    "METRICS",
    "OTHER",
    "MetricSpec",
    "SchedCollector",
    "add_collector",
    "build_families",
    "capped",
    "exported_sample_names",
    "local_connections",
    "local_heartbeats",
    "new_registry",
    "render",
]

log = logging.getLogger(__name__)

#: The label value under which values past ``metrics_label_limit`` are added up.
OTHER: Final = "_other"
#: Roles of this instance's connections (``pending``: no ``hello`` yet).
CONNECTION_ROLES: Final = ("node", "client", "pending")
LATENCY_PHASES: Final = ("submit_to_done", "submit_to_assigned")
#: Refusals of a submit exported for every principal, at zero too (job_submit.lua).
REFUSAL_CODES: Final = ("E_QUOTA", "E_RATE_LIMITED", "E_QUEUE_FULL", "E_NO_CAPACITY")


@attrs.frozen
class MetricSpec:
    """One exported family: its name as exposed (counters end in ``_total``), type, labels."""

    name: str
    kind: Literal["gauge", "counter"]
    labels: tuple[str, ...]
    help: str

    def family(self) -> GaugeMetricFamily | CounterMetricFamily:
        cls = GaugeMetricFamily if self.kind == "gauge" else CounterMetricFamily
        return cls(self.name, self.help, labels=list(self.labels))


METRICS: Final[tuple[MetricSpec, ...]] = (
    MetricSpec("schedd_redis_up", "gauge", (),
               "1 when Redis answered this scrape, else 0 (global metrics are then absent)"),
    MetricSpec("schedd_jobs", "gauge", ("state",),
               "Jobs in each state now; terminal states count finished jobs still retained"),
    MetricSpec("schedd_jobs_submitted_total", "counter", (),
               "Jobs accepted (not counting resubmitted duplicates)"),
    MetricSpec("schedd_jobs_finished_total", "counter", ("state",),
               "Jobs that reached each terminal state"),
    MetricSpec("schedd_nodes", "gauge", ("state",),
               "Registered nodes per state (offline nodes are kept for a while after loss)"),
    MetricSpec("schedd_slots_capacity", "gauge", (),
               "Job slots of the nodes that are online or draining"),
    MetricSpec("schedd_slots_used", "gauge", (),
               "Job slots in use on the nodes that are online or draining"),
    MetricSpec("schedd_pools", "gauge", (), "Pools that exist (have members or queued jobs)"),
    MetricSpec("schedd_pool_members", "gauge", ("pool",),
               "Live, non-draining member nodes of each pool"),
    MetricSpec("schedd_pool_free_slots", "gauge", ("pool",),
               "Free job slots over the members of each pool"),
    MetricSpec("schedd_queue_length", "gauge", ("pool",),
               "Jobs queued for each pool (a job waiting on several pools counts in each)"),
    MetricSpec("schedd_instances", "gauge", (),
               "Daemon instances whose presence has not expired"),
    MetricSpec("schedd_exclusions_total", "counter", ("reason",),
               "Times node selection skipped a node, by reason"),
    MetricSpec("schedd_job_latency_seconds", "gauge", ("phase", "quantile"),
               "Latency quantiles of jobs finished in the last 60 s (NaN with none)"),
    MetricSpec("schedd_job_latency_samples", "gauge", ("phase",),
               "Finished jobs behind schedd_job_latency_seconds"),
    MetricSpec("schedd_jobs_finished_per_second", "gauge", (),
               "Jobs finished per second over the last 60 s"),
    MetricSpec("schedd_principal_jobs", "gauge", ("principal", "state"),
               "Jobs of each principal in flight (assigned or running) and queued; the "
               "principals with the most are exported, up to metrics_label_limit"),
    MetricSpec("schedd_principal_payload_bytes", "gauge", ("principal",),
               "Payload bytes of each principal's jobs not yet ended"),
    MetricSpec("schedd_principal_refusals_total", "counter", ("principal", "code"),
               "Submits of each principal refused, by error code (E_QUOTA, E_RATE_LIMITED...)"),
    MetricSpec("schedd_local_connections", "gauge", ("role",),
               "This instance's open connections by role (pending: no hello yet)"),
    MetricSpec("schedd_local_heartbeats_total", "counter", ("outcome",),
               "Node heartbeats this instance flushed: written to Redis, or unchanged and "
               "not written ([nodes] liveness_refresh)"),
    MetricSpec("schedd_local_nodes_silenced_total", "counter", (),
               "Nodes this instance found silent (no heartbeat for the liveness ttl)"),
)
#: Outcomes of a node's heartbeat at this instance's flush (schedd.core.heartbeats).
HEARTBEAT_OUTCOMES: Final = ("written", "unchanged")
#: The families built from this instance alone: exposed even when Redis does not answer.
LOCAL_FAMILIES: Final = ("schedd_redis_up", "schedd_local_connections",
                         "schedd_local_heartbeats_total", "schedd_local_nodes_silenced_total")
def exported_sample_names() -> set[str]:
    """Every sample name this module exposes (what PromQL expressions refer to)."""
    return {spec.name for spec in METRICS}


def capped(values: Mapping[str, float], limit: int) -> dict[str, float]:
    """At most ``limit`` label values: the largest ones, the rest added up under :data:`OTHER`."""
    if len(values) <= limit:
        return dict(values)
    ranked = sorted(values.items(), key=lambda item: (-item[1], item[0]))
    kept = dict(ranked[: max(limit - 1, 0)])
    kept[OTHER] = kept.get(OTHER, 0) + sum(v for _, v in ranked[max(limit - 1, 0) :])
    return kept


def _pool_rows(snapshot: Snapshot, limit: int) -> list[tuple[str, int, int, int]]:
    """(pool, members, free slots, queued), the busiest first, capped as :func:`capped` does."""
    rows = sorted(
        ((p.pool, len(p.members), p.free_slots, p.queued) for p in snapshot.pools),
        key=lambda row: (-row[3], -row[1], row[0]),
    )
    if len(rows) <= limit:
        return rows
    keep = max(limit - 1, 0)
    rest = rows[keep:]
    other = (OTHER, sum(r[1] for r in rest), sum(r[2] for r in rest), sum(r[3] for r in rest))
    return [*rows[:keep], other]


def local_connections(roles: Iterable[str | None]) -> dict[str, int]:
    by_role = Counter(role or "pending" for role in roles)
    return {role: by_role.get(role, 0) for role in CONNECTION_ROLES}


def local_heartbeats(counts: Mapping[str, int]) -> dict[str, int]:
    """This instance's heartbeat counters (``Daemon.heartbeat_counts``): beats flushed per
    :data:`HEARTBEAT_OUTCOMES`, and ``silenced``."""
    beats, sent = counts.get("beats", 0), counts.get("sent", 0)
    return {"written": sent, "unchanged": max(beats - sent, 0),
            "silenced": counts.get("silenced", 0)}


def build_families(
    snapshot: Snapshot | None, connections: Mapping[str, int], label_limit: int,
    heartbeats: Mapping[str, int] | None = None,
) -> list[Metric]:
    """Every family of :data:`METRICS` from one snapshot (``None``: Redis did not answer, and
    only :data:`LOCAL_FAMILIES` are built) and this instance's own figures."""
    fam = {spec.name: spec.family() for spec in METRICS}
    fam["schedd_redis_up"].add_metric([], 0 if snapshot is None else 1)
    for role, open_count in connections.items():
        fam["schedd_local_connections"].add_metric([role], open_count)
    heartbeats = heartbeats or {}
    for outcome in HEARTBEAT_OUTCOMES:
        fam["schedd_local_heartbeats_total"].add_metric([outcome], heartbeats.get(outcome, 0))
    fam["schedd_local_nodes_silenced_total"].add_metric([], heartbeats.get("silenced", 0))
    if snapshot is None:
        return [fam[name] for name in LOCAL_FAMILIES]

    counts = snapshot.counts
    for state in JOB_STATES:
        fam["schedd_jobs"].add_metric([state], counts.get(state, 0))
    fam["schedd_jobs_submitted_total"].add_metric([], counts.get("total:submitted", 0))
    for state in FINISHED_STATES:
        fam["schedd_jobs_finished_total"].add_metric([state], counts.get(f"total:{state}", 0))

    for state, nodes in capped(snapshot.nodes_by_state(), label_limit).items():
        fam["schedd_nodes"].add_metric([state], nodes)
    capacity, used = snapshot.slots()
    fam["schedd_slots_capacity"].add_metric([], capacity)
    fam["schedd_slots_used"].add_metric([], used)

    fam["schedd_pools"].add_metric([], len(snapshot.pools))
    for pool, members, free, queued in _pool_rows(snapshot, label_limit):
        fam["schedd_pool_members"].add_metric([pool], members)
        fam["schedd_pool_free_slots"].add_metric([pool], free)
        fam["schedd_queue_length"].add_metric([pool], queued)

    _principal_families(fam, snapshot, label_limit)
    fam["schedd_instances"].add_metric([], len(snapshot.live_instances()))
    for reason, times in capped(snapshot.exclusions, label_limit).items():
        fam["schedd_exclusions_total"].add_metric([reason], times)

    window = throughput(snapshot.finished, snapshot.now_ms)
    fam["schedd_jobs_finished_per_second"].add_metric([], window.per_second())
    latency = latency_ms(window.recent)
    for phase in LATENCY_PHASES:
        figures = latency[phase]
        fam["schedd_job_latency_samples"].add_metric([phase], figures["count"])
        for p in PERCENTILES:
            value = figures[f"p{p}"]
            fam["schedd_job_latency_seconds"].add_metric(
                [phase, _quantile_label(p)], math.nan if value is None else value / 1000
            )
    return list(fam.values())


def _principal_families(
    fam: Mapping[str, GaugeMetricFamily | CounterMetricFamily], snapshot: Snapshot, limit: int
) -> None:
    """Usage per principal: the ``limit`` - 1 principals with the most jobs not yet ended by
    name, the rest added up under :data:`OTHER` (principals come from tokens, but a deployment
    without tokens has one per peer address: the cap bounds the series)."""
    ranked = sorted(snapshot.usage, key=lambda u: (-(u.in_flight + u.queued), u.principal))
    rows: dict[str, list[float]] = {}
    refused: dict[str, Counter[str]] = {}
    for index, u in enumerate(ranked):
        name = u.principal if index < max(limit - 1, 0) or len(ranked) <= limit else OTHER
        row = rows.setdefault(name, [0, 0, 0])
        row[0] += u.in_flight
        row[1] += u.queued
        row[2] += u.payload_bytes
        refused.setdefault(name, Counter()).update(u.refused)
    for name, (in_flight, queued, held) in rows.items():
        fam["schedd_principal_jobs"].add_metric([name, "in_flight"], in_flight)
        fam["schedd_principal_jobs"].add_metric([name, "queued"], queued)
        fam["schedd_principal_payload_bytes"].add_metric([name], held)
        codes = {**dict.fromkeys(REFUSAL_CODES, 0), **refused[name]}
        for code, times in sorted(codes.items()):
            fam["schedd_principal_refusals_total"].add_metric([name, code], times)


def _quantile_label(p: int) -> str:
    return f"{p / 100:g}"


# -------------------------------------------------------------------------------------------------
# Extension point and the collector
# -------------------------------------------------------------------------------------------------

def add_collector(app: Daemon, collector: Collector) -> None:
    """Expose ``collector``'s families on ``app``'s ``/metrics`` (when the ui plugin is enabled):
    the same as ``app.add_collector(collector)`` (``schedd.api.Daemon.add_collector``), which
    other plugins use."""
    app.add_collector(collector)


def extra_collectors(app: Daemon) -> list[Collector]:
    """The collectors plugins offered the daemon, in order."""
    return [cast(Collector, c) for c in app.collectors()]


class SchedCollector:
    """The ui's collector: the core's families from a snapshot, then other plugins' families."""

    def __init__(self, app: Daemon, reader: SnapshotReader, label_limit: int) -> None:
        self._app = app
        self._reader = reader
        self._label_limit = label_limit
        self._snapshot: Snapshot | None = None
        self._failing: set[int] = set()  # ids of extra collectors whose failure was logged

    async def refresh(self) -> None:
        """Read what :meth:`collect` will expose: call before every scrape."""
        try:
            self._snapshot = await self._reader.get()
        except StoreError as exc:
            log.warning("metrics: Redis did not answer (%s); exposing schedd_redis_up 0", exc)
            self._snapshot = None
        for extra in extra_collectors(self._app):
            refresh = getattr(extra, "refresh", None)
            if refresh is None:
                continue
            try:
                await refresh()
            except Exception:
                self._log_failure(extra, "refresh")

    def describe(self) -> Iterable[Metric]:
        return [spec.family() for spec in METRICS]

    def collect(self) -> Iterable[Metric]:
        families = build_families(
            self._snapshot, local_connections(self._app.connection_roles), self._label_limit,
            local_heartbeats(self._app.heartbeat_counts),
        )
        seen = {family.name for family in families}
        yield from families
        for extra in extra_collectors(self._app):
            try:
                extra_families = list(extra.collect())
            except Exception:
                self._log_failure(extra, "collect")
                continue
            for family in extra_families:
                if family.name in seen:
                    log.warning("metrics: %r exports %s again; dropped", extra, family.name)
                    continue
                seen.add(family.name)
                yield family

    def _log_failure(self, extra: Collector, what: str) -> None:
        if id(extra) not in self._failing:  # once per collector, not once per scrape
            self._failing.add(id(extra))
            log.exception("metrics: %s of %r failed; its families are skipped", what, extra)


def new_registry(collector: SchedCollector) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry


async def render(
    collector: SchedCollector, registry: CollectorRegistry, accept: str
) -> tuple[bytes, str]:
    """Refresh, then encode for the scraper's ``Accept`` header: (body, content type)."""
    await collector.refresh()
    encoder, content_type = choose_encoder(accept)
    return encoder(registry), content_type
