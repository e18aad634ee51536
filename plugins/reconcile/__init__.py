"""Online reconciliation: keep Redis and this instance's node connections in agreement.

Redis is the source of truth, but it can be flushed, restarted without persistence, or fail over
to a replica that missed writes. Every ``[plugins.reconcile] period`` seconds (and soon after a
heartbeat flush finds a registration stale) each instance corrects, for the nodes it owns:

1. a node the store has online under this instance with no connection here: taken offline
   (fenced by its epoch), its jobs move on;
2. a node connected here that the store lost or holds stale (no record, offline, another epoch,
   not in the liveness index, or owned by another instance at an epoch not above the
   connection's): registered again in place from the connection's ``register``, and the node is
   told its new epoch with a ``registered`` that answers no request; a node that registered
   again on another instance at a higher epoch has its connection here closed instead;
3. a job the store gives a node here that the node's last two heartbeats do not list (both sent
   after the job was the node's): cancelled on the node and retried (attempt + 1) elsewhere;
4. a job a node here keeps listing that the store does not know or gives to another node:
   ``cancel`` sent to the node.

Rules of this plugin:

- With it enabled, a stale heartbeat no longer closes the connection (the core's default): the
  ``schedd_node_stale`` hook hands it to the next pass, which registers the node again in place.
- Counts of each correction are kept per instance in :class:`ReconcileStats`, read with
  :func:`stats`, and exported on the ui plugin's ``/metrics`` when it is installed
  (:mod:`schedd.plugins.reconcile.metrics`); a pass with any correction logs one INFO line.
- A pass that fails on the store is logged and retried next period; the service never crashes.
"""

from __future__ import annotations

import math
import weakref
from typing import Any, Final

import attrs
import trio

from schedd.api import Daemon, Service, hookimpl, setting
from schedd.plugins.reconcile.metrics import expose
from schedd.plugins.reconcile.reconciler import CORRECTIONS, Reconciler, ReconcileStats

__all__ = [
    "CORRECTIONS",
    "PLUGIN_NAME",
    "ReconcileSettings",
    "ReconcileStats",
    "schedd_node_stale",
    "schedd_plugin_config",
    "schedd_services",
    "serve",
    "stats",
]

PLUGIN_NAME: Final = "reconcile"

# The reconciler of each running daemon (one plugin module serves every App in the process).
_RUNNING: weakref.WeakKeyDictionary[Daemon, Reconciler] = weakref.WeakKeyDictionary()


def _positive_seconds(_instance: Any, _attribute: Any, value: Any) -> None:
    if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
        raise ValueError(f"expected a number of seconds > 0, got {value!r}")


@attrs.frozen
class ReconcileSettings:
    """``[plugins.reconcile]``: how often each instance reconciles."""

    period: float = setting(5.0, "seconds between reconciliation passes", _positive_seconds)


@hookimpl
def schedd_plugin_config() -> type:
    """Declare :class:`ReconcileSettings`."""
    return ReconcileSettings


@hookimpl
def schedd_services(app: Daemon) -> list[Service]:
    """The reconciler."""
    return [serve]


@hookimpl
def schedd_node_stale(app: Daemon, node_id: str, epoch: int) -> bool | None:
    """Take over a stale connection: the next pass registers the node again (or closes it)."""
    reconciler = _RUNNING.get(app)
    if reconciler is None or not app.accepting:
        return None
    reconciler.wake()
    return True


def stats(app: Daemon) -> ReconcileStats | None:
    """The reconciliation counts of a running daemon, or ``None`` when the plugin does not run."""
    reconciler = _RUNNING.get(app)
    return reconciler.stats if reconciler is not None else None


async def serve(
    app: Daemon, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """Reconcile every period until cancelled; started at once (the first pass is one period
    in, or sooner when a stale heartbeat asks for it)."""
    settings = app.plugin_config(PLUGIN_NAME)
    assert isinstance(settings, ReconcileSettings)
    reconciler = Reconciler(app, settings.period)
    _RUNNING[app] = reconciler
    expose(app, reconciler.stats)
    try:
        task_status.started()
        await reconciler.run()
    finally:
        if _RUNNING.get(app) is reconciler:
            del _RUNNING[app]
