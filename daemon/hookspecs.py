"""Every hook a schedd plugin can implement, grouped by when it runs.

pluggy calls hooks synchronously, so each hook has one of four colours (DESIGN §5):

* **registration** hooks run once at start-up and add things: a settings class, CLI commands;
* **decision** hooks are pure and fast (no I/O, they sit on the hot path) and ``firstresult``: the
  first implementation that returns something other than ``None`` decides. Plugins listed earlier
  in ``[plugins] enabled`` are asked first, and the core's own answer (``schedd.core_hooks``,
  ``trylast``) comes last, so returning ``None`` means "no opinion";
* **event** hooks are fire-and-forget notifications after the fact; they must not block. A plugin
  that needs I/O puts the event on a queue and drains it in one of its services. An exception is
  logged and swallowed by the core, but it stops later implementations from seeing that event;
* **service** hooks hand the core async callables that it starts in its own nursery with
  ``nursery.start``, so plugins never hold a nursery and readiness is known. Transports are
  services: they bind their listener, then call ``task_status.started()``.

A plugin is a module (or an object) with functions named like the hooks below and decorated with
:data:`hookimpl`; it may implement any subset, with any subset of each hook's parameters. It is
found through the ``schedd.plugins`` entry-point group, whose entry name is the plugin name, and
loaded only when listed in ``[plugins] enabled``. Unknown ``schedd_*`` hook implementations are
rejected at start-up. ``docs/hooks.md`` documents each hook with an example; a test keeps it in
step with this module.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from schedd.markers import PROJECT, Service, hookimpl, hookspec

if TYPE_CHECKING:
    import argparse

    from schedd.api import Daemon

__all__ = ["PROJECT", "Service", "hookimpl", "hookspec"]


# -------------------------------------------------------------------------------------------------
# Registration hooks: once, at start-up
# -------------------------------------------------------------------------------------------------


@hookspec
def schedd_plugin_config() -> type | None:
    """Declare the attrs class that validates this plugin's ``[plugins.<name>]`` table.

    Called once per plugin while plugins load, on that plugin alone (the plugin's name is its
    entry-point name, so the class is all it returns). The table, with environment overrides,
    is structured with the core's converter: unknown keys and wrong types are errors reported
    as ``$.plugins.<name>.<field>: …`` together with every other configuration error. Give
    every field a default so the plugin works without a table. The structured object reaches
    the plugin through ``schedd_configure``.

    :returns: a frozen attrs class, or ``None`` when the plugin has no settings (a table for it
        is then an error).
    """


@hookspec
def schedd_configure(settings: Any) -> None:
    """Receive this plugin's structured settings, before any other hook but the registration ones.

    Called once per plugin while plugins load, on that plugin alone, after every plugin's
    settings were validated (a configuration error stops the start before any plugin hears of
    it). An exception is reported as a configuration error of ``$.plugins.<name>``.

    :param settings: an instance of the class ``schedd_plugin_config`` declared (``None`` when
        the plugin declares none).
    :returns: nothing.
    """


@hookspec
def schedd_add_cli_commands(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add sub-commands to the ``schedd`` command line.

    Called once when ``schedd`` builds its argument parser, after the built-in commands exist
    and before arguments are parsed. Binding what a command runs follows the ``set_defaults``
    convention described in ``schedd.cli``.

    :param subparsers: the ``argparse`` sub-parsers action; call ``subparsers.add_parser(...)``.
    :returns: nothing.
    """


# -------------------------------------------------------------------------------------------------
# Decision hooks: pure, synchronous, first non-None answer wins
# -------------------------------------------------------------------------------------------------


@hookspec(firstresult=True)
def schedd_node_pools(
    node_id: str, capabilities: dict[str, Any], declared_pools: list[str]
) -> list[str] | None:
    """Map a node's capabilities to the pool keys it serves.

    Called on the instance that owns the node's connection each time the node registers or
    re-registers, before its registration is stored. The core's default returns
    ``declared_pools`` unchanged. Stops at first non-None result.

    :param node_id: the node's stable id.
    :param capabilities: the capabilities mapping from the node's ``register`` message.
    :param declared_pools: pool keys the node named itself (empty when it named none).
    :returns: the pool keys (an empty list puts the node in no pool), or ``None`` to defer.
    """


@hookspec(firstresult=True)
def schedd_job_pools(
    job_id: str | None, requirements: dict[str, Any], declared_pools: list[str]
) -> list[str] | None:
    """Map a submitted job's requirements to its candidate pool keys.

    Called on the instance that received the ``submit``, before the job is stored; a job whose
    answer is an empty list is refused. For a pipeline (a ``submit`` with ``stages``) it is
    called once per stage, with the stage's job id and the stage's own requirements and pools.
    The core's default returns ``declared_pools`` unchanged. Stops at first non-None result.

    :param job_id: the client's idempotency key, or ``None`` when the core will generate one
        (a stage: ``<pipeline id>//<stage>``).
    :param requirements: the ``requirements`` mapping of the ``submit`` message (may be empty;
        a stage: the stage's).
    :param declared_pools: the ``pools`` the client named itself (empty when it named none).
    :returns: candidate pool keys in order of preference, or ``None`` to defer.
    """


@hookspec(firstresult=True)
def schedd_authenticate(role: str, token: str | None, peer: str) -> str | None:
    """Decide who a connecting peer is, from the token in its ``hello``.

    Called once per connection when its ``hello`` arrives, before ``welcome`` is sent. The core's
    default compares the token with ``[auth]`` tokens for the role in constant time (any token is
    accepted as ``"anonymous"`` when the role has none configured). When every implementation
    returns ``None`` the ``hello`` is refused; to refuse outright, raise
    ``schedd.api.ProtocolError("E_AUTH", reason)``. Stops at first non-None result.

    :param role: ``"node"`` or ``"client"``.
    :param token: the token from ``hello``, or ``None`` when the peer sent none.
    :param peer: the remote address as text (``"10.0.0.7:53122"``), for logs and allow-lists.
    :returns: the principal's name (used in logs and job ownership), or ``None`` to defer.
    """


@hookspec(firstresult=True)
def schedd_node_stale(app: Daemon, node_id: str, epoch: int) -> bool | None:
    """Decide what becomes of a node connection whose registration the store no longer holds.

    Called on the instance that holds the connection when a heartbeat flush finds the node's
    registration stale (no record, offline, another owner or another epoch: the node registered
    again elsewhere, or Redis was flushed, restarted without persistence or failed over) while
    the connection is still at that epoch. It runs in the heartbeat flusher: do not block, hand
    the work to a service. The core's default closes the connection with ``E_STALE_EPOCH`` so
    the node registers again. Stops at first non-None result.

    :param app: the daemon's public facade (``app.nodes[node_id]`` is the connection).
    :param node_id: the node's stable id.
    :param epoch: the epoch the refused heartbeat spoke for (the connection's epoch).
    :returns: ``True`` when the plugin takes the connection over (it registers the node again
        in place, or closes the connection itself), or ``None`` to defer.
    """


# -------------------------------------------------------------------------------------------------
# Event hooks: fire-and-forget, after the fact
# -------------------------------------------------------------------------------------------------


@hookspec
def schedd_node_registered(node_id: str, epoch: int, pools: list[str], instance: str) -> None:
    """A node registered (or re-registered) and is now eligible for jobs.

    Called on the instance that owns the node's connection, after the registration is stored in
    Redis and ``registered`` was sent to the node.

    :param node_id: the node's stable id.
    :param epoch: the registration's epoch (higher than any earlier one of this node).
    :param pools: the pool keys the node joined.
    :param instance: the instance that owns the node's connection (this one).
    :returns: nothing.
    """


@hookspec
def schedd_node_offline(node_id: str, reason: str) -> None:
    """A node was taken offline: its connection dropped, it went silent, or its instance stopped.

    Called on the instance whose script took the node offline (the owner for a dropped
    connection, whichever instance's reaper found it for a silent node), once per registration.

    :param node_id: the node's stable id.
    :param reason: why: ``"connection lost"``, ``"liveness expired"``, ``"daemon shut down"``.
    :returns: nothing.
    """


@hookspec
def schedd_job_state_changed(job_id: str, state: str, attempt: int, node: str | None) -> None:
    """A job moved to a new state.

    Called on the instance whose script made the transition, after it is stored, once per
    transition: ``queued``, ``assigned``, ``running``, then ``done``, ``failed``, ``canceled``
    or ``timed_out`` (a retry goes back to ``queued`` with the next attempt number).

    :param job_id: the job's id.
    :param state: the new state.
    :param attempt: the attempt the state belongs to; a job queued again for a retry carries
        the number of its next attempt.
    :param node: the node of that attempt, or ``None`` when no node is involved.
    :returns: nothing.
    """


# -------------------------------------------------------------------------------------------------
# Service hooks: long-running tasks started by the core
# -------------------------------------------------------------------------------------------------


@hookspec
def schedd_services(app: Daemon) -> list[Service] | None:
    """Hand the core the async services this plugin runs (transports, reconcilers, UI).

    Called once at start-up, after the store is connected and before the daemon reports ready.
    The core starts each service with ``nursery.start(service, app)`` in its own nursery, in
    plugin order, waiting for ``task_status.started()`` before the next; the daemon is ready
    when all have started. Services run until cancelled at shutdown; an exception escaping one
    stops the daemon, so handle what you can inside.

    :param app: the daemon's public facade, :class:`schedd.api.Daemon`.
    :returns: the services to start (an empty list or ``None`` for none).
    """
