"""The reconciliation counts as Prometheus families, on the ui plugin's ``/metrics``.

The ui plugin owns ``/metrics`` and serves the collectors plugins offer the daemon
(``schedd.api.Daemon.add_collector``); this module offers one.
Families (per instance, cumulative since start):

- ``schedd_reconcile_corrections_total{kind}``: one sample per kind in
  :data:`~schedd.plugins.reconcile.reconciler.CORRECTIONS`;
- ``schedd_reconcile_passes_total{outcome}``: ``completed`` and ``failed`` passes.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from schedd.api import Daemon
from schedd.plugins.reconcile.reconciler import CORRECTIONS, ReconcileStats

__all__ = ["ReconcileCollector", "expose"]


class ReconcileCollector:
    """A prometheus_client collector reading one instance's :class:`ReconcileStats`."""

    def __init__(self, stats: ReconcileStats) -> None:
        self.stats = stats

    def collect(self) -> Iterator[Any]:
        from prometheus_client.metrics_core import CounterMetricFamily

        corrections = CounterMetricFamily(
            "schedd_reconcile_corrections",
            "Corrections reconciliation made on this instance, by kind",
            labels=["kind"],
        )
        for kind in CORRECTIONS:
            corrections.add_metric([kind], self.stats.corrections[kind])
        yield corrections
        passes = CounterMetricFamily(
            "schedd_reconcile_passes",
            "Reconciliation passes on this instance, by outcome",
            labels=["outcome"],
        )
        passes.add_metric(["completed"], self.stats.passes)
        passes.add_metric(["failed"], self.stats.failed_passes)
        yield passes


def expose(app: Daemon, stats: ReconcileStats) -> None:
    """Offer the collector to whichever plugin serves ``app``'s metrics (the ui plugin's
    ``/metrics``; ``schedd.api.Daemon.add_collector``)."""
    app.add_collector(ReconcileCollector(stats))
