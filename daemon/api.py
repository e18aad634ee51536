"""The public plugin API: everything a plugin may import from schedd, and nothing else.

A plugin imports ``schedd.api`` (and its own modules); every other ``schedd`` module is private
and may change in any release (``docs/hooks.md``, "What is public"). The hooks a plugin
implements are in :mod:`schedd.hookspecs`; the ones that act receive a :class:`Daemon`, the
typed facade of the running instance. ``schedd.testing`` holds a fake :class:`Daemon` and an
in-memory daemon for a plugin's own tests.

Rules of this module:

- :class:`Daemon` and :class:`LocalNode` are ``Protocol``\\ s: the members listed are the whole
  contract; the objects the daemon hands out may have others, which a plugin must not use.
- Reads (:class:`Queries` and its result classes) decide nothing: the store is the truth and
  may change right after a read. Every action the facade offers is fenced by the store (owner,
  epoch, node or attempt), so acting on a stale read is refused, never applied.
- Nothing here blocks the event loop; the coroutine members do I/O on the store.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from schedd.config import InvalidSetting, setting
from schedd.core import (
    JOB_STATES,
    TERMINAL_STATES,
    ClientInfo,
    FinishedJob,
    JobFilter,
    JobInfo,
    JobPage,
    JobSpec,
    JobSummary,
    NodeInfo,
    PoolInfo,
    Queries,
    Submitted,
    UsageInfo,
    parse_time_bound,
)
from schedd.errors import (
    BadArgument,
    ConfigError,
    Fenced,
    NodeNotFound,
    NotYourNode,
    ProtocolError,
    SchedError,
    ScriptError,
    StoreError,
)
from schedd.markers import Service, hookimpl
from schedd.operators import MAX_REQUEUE, REQUEUE_STATES, Operators, RequeueFilter
from schedd.protocol import MAX_ID_LEN, MAX_JOB_PAGE, MAX_LIST, MAX_RUNNING, Cancel, InvalidField
from schedd.transport import (
    LISTEN_DOC,
    RECEIVE_SIZE,
    TLS_CERT_DOC,
    TLS_KEY_DOC,
    Channel,
    ChannelClosed,
    ConnectionHandler,
    HeadSplitter,
    ReadinessHub,
    StreamChannel,
    WebSocketChannel,
    check_tls_pair,
    close_stream,
    existing_file,
    handshake_events,
    handshake_timed_out,
    parse_listen,
    peer_address,
    read_when_ready,
    serve_transport,
    valid_listen,
)

if TYPE_CHECKING:
    from schedd.admission import Admission
    from schedd.config import LimitsSection

__all__ = [
    "JOB_STATES",
    "LISTEN_DOC",
    "MAX_ID_LEN",
    "MAX_JOB_PAGE",
    "MAX_LIST",
    "MAX_REQUEUE",
    "MAX_RUNNING",
    "RECEIVE_SIZE",
    "REQUEUE_STATES",
    "TERMINAL_STATES",
    "TLS_CERT_DOC",
    "TLS_KEY_DOC",
    "BadArgument",
    "Cancel",
    "Channel",
    "ChannelClosed",
    "ClientInfo",
    "ConfigError",
    "ConnectionHandler",
    "Corrections",
    "Daemon",
    "Fenced",
    "FinishedJob",
    "HeadSplitter",
    "InvalidField",
    "InvalidSetting",
    "JobFilter",
    "JobInfo",
    "JobPage",
    "JobSpec",
    "JobSummary",
    "LocalNode",
    "NodeInfo",
    "NodeNotFound",
    "NotYourNode",
    "Operators",
    "PoolInfo",
    "ProtocolError",
    "Queries",
    "ReadinessHub",
    "RequeueFilter",
    "SchedError",
    "ScriptError",
    "Service",
    "StoreError",
    "StreamChannel",
    "Submitted",
    "UsageInfo",
    "WebSocketChannel",
    "check_tls_pair",
    "close_stream",
    "existing_file",
    "handshake_events",
    "handshake_timed_out",
    "hookimpl",
    "is_loopback",
    "parse_listen",
    "parse_time_bound",
    "peer_address",
    "read_when_ready",
    "serve_transport",
    "setting",
    "valid_listen",
]


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address, ``[v6]`` or ``localhost``) names this machine only."""
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class LocalNode(Protocol):
    """A node connection held by this instance, as a plugin sees it (``Daemon.nodes``).

    The connection stays the same object while it lives: compare views with ``is``. It speaks
    for ``node_id`` at ``epoch`` only while ``daemon.nodes.get(node_id) is`` it and its
    ``epoch`` is unchanged.
    """

    @property
    def peer(self) -> str:
        """The remote address as text, for logs."""

    @property
    def node_id(self) -> str | None:
        """The node this connection speaks for, or ``None`` once it no longer does."""

    @property
    def epoch(self) -> int | None:
        """The epoch of the connection's registration (``None`` before it registered)."""

    @property
    def registration(self) -> object | None:
        """The node's ``register`` message (``None`` before it registered)."""

    @property
    def draining(self) -> bool:
        """Whether the node asked to drain (it takes no new jobs)."""

    @property
    def running_seen(self) -> Sequence[Sequence[str]]:
        """The job lists of the node's last two heartbeats, oldest first (fewer at start).

        Each heartbeat gets a new list object, so identity tells two heartbeats apart even when
        they list the same jobs. Read it; never change it. It lives on the connection, not in
        a plugin, so that no plugin is called per heartbeat
        (docs/decisions/0020-heartbeat-job-lists-on-the-connection.md).
        """

    async def register_again(self) -> int:
        """Store the connection's registration again, in place, and tell the node its new epoch.

        :returns: the new epoch.
        :raises LookupError: the connection no longer speaks for a node.
        :raises NotYourNode: another principal registered the node's id meanwhile.
        :raises ScriptError: any other refusal of the store.
        """

    def refuse_stale(self, why: str | None = None) -> None:
        """Tell the node its registration is no longer current (``E_STALE_EPOCH``) and close."""

    def post(self, message: Cancel) -> None:
        """Send ``cancel`` to the node; never blocks (an overflowing peer is disconnected)."""


class Corrections(Protocol):
    """The store actions and reads a reconciling plugin needs; each action is fenced."""

    async def owned_nodes(self) -> set[str]:
        """Node ids the store has online under this instance."""

    async def reconcile_nodes(
        self, connected: Sequence[tuple[str, int]], unconnected: Sequence[str] = ()
    ) -> tuple[list[tuple[str, str]], list[tuple[str, int]]]:
        """(connected ``(node, verdict)`` pairs the store does not agree with, unconnected
        ``(node, epoch)`` pairs still online under this instance)."""

    async def node_offline(
        self, node_id: str, *, epoch: int, reason: str, owner: str | None = None
    ) -> int | None:
        """Take the node offline at ``epoch`` (its jobs move on); ``None`` if it already was."""

    async def drain_node(self, node_id: str, *, epoch: int | None = None, reason: str = "") -> int:
        """Mark the node draining at ``epoch``; returns the jobs it still holds."""

    async def node_job_sets(self, node_ids: Sequence[str]) -> dict[str, set[str]]:
        """Each node's job-set entries."""

    async def job_placements(self, job_ids: Sequence[str]) -> dict[str, tuple[str, str, int]]:
        """``job -> (state, node, attempt)`` of the jobs the store knows."""

    async def job_lost(
        self, job_id: str, *, node_id: str, epoch: int, attempt: int, reason: str
    ) -> tuple[str, str]:
        """The node lost the job's attempt: retry it (or release a stray slot)."""


class Daemon(Protocol):
    """The running daemon instance, as plugins see it (the ``app`` of the hooks)."""

    @property
    def instance(self) -> str:
        """This instance's name (``[schedd] instance``)."""

    @property
    def version(self) -> str:
        """The version of the running schedd package (``schedd --version`` prints it too)."""

    @property
    def accepting(self) -> bool:
        """False once the instance drains (it hands its nodes back and takes no new work)."""

    @property
    def heartbeat_interval(self) -> float:
        """``[nodes] heartbeat_interval``: seconds between a node's heartbeats."""

    @property
    def disconnect_grace(self) -> float:
        """``[nodes] disconnect_grace``: seconds a dropped node may take to come back."""

    @property
    def queries(self) -> Queries:
        """Read-only queries of the store (nodes, pools, jobs, counts, recent completions)."""

    @property
    def corrections(self) -> Corrections:
        """The fenced store actions of reconciliation."""

    @property
    def operators(self) -> Operators:
        """The operator actions (drain, undrain, cancel, requeue), each one script, logged with
        who did it. The daemon offers them to admin connections; a plugin offering them (the
        ui) decides itself who is an operator."""

    @property
    def nodes(self) -> Mapping[str, LocalNode]:
        """The node connections this instance holds, by node id (read-only)."""

    @property
    def connection_roles(self) -> Sequence[str | None]:
        """The role of every open connection here (``None`` before its ``hello``)."""

    @property
    def heartbeat_counts(self) -> Mapping[str, int]:
        """This instance's heartbeat counters: ``beats``, ``sent`` (written), ``silenced``."""

    @property
    def listeners(self) -> Mapping[str, str]:
        """The URL each listening plugin reported, by plugin name."""

    def plugin_config(self, name: str) -> Any:
        """Plugin ``name``'s structured settings: an instance of the class it declared in
        ``schedd_plugin_config`` (``None`` when it declares none).

        A plugin receives its own through ``schedd_configure``; this reads any loaded plugin's.
        """

    def add_collector(self, collector: object) -> None:
        """Offer ``collector``'s metric families to whichever plugin serves metrics (the ui
        plugin's ``/metrics``): a prometheus_client collector (``collect()`` yielding families
        named ``schedd_*`` with bounded labels; an ``async def refresh()``, if it has one, is
        awaited before each scrape). Safe to call before or after that plugin starts; a
        daemon with no such plugin keeps it unused."""

    def collectors(self) -> Sequence[object]:
        """Every collector offered with :meth:`add_collector`, in order."""

    async def submit(self, spec: JobSpec, *, principal: str = "") -> Submitted:
        """Queue a job as ``principal`` (the owner a ``cancel`` must match)."""

    async def cancel(self, job_id: str, *, principal: str = "", reason: str = "") -> str:
        """Cancel a job ``principal`` owns; returns its state after the call."""

    async def store_ping(self) -> None:
        """Ask the store whether it answers; raises :class:`StoreError` when it does not."""

    async def store_time_ms(self) -> int:
        """The store's clock, in milliseconds since the epoch (the clock job times use)."""

    # -- for transports ------------------------------------------------------------------------

    def check_listener(self, plugin: str, host: str) -> None:
        """Refuse (``ConfigError``) a non-loopback listener while a role accepts anyone."""

    def listening(self, plugin: str, url: str) -> None:
        """Report the URL a listener of ``plugin`` serves (logged; listed in ``listeners``)."""

    @property
    def limits(self) -> LimitsSection:
        """``[limits]``, as reloaded."""

    @property
    def readiness(self) -> ReadinessHub:
        """The readiness hub plain-stream channels read through."""

    @property
    def admission(self) -> Admission:
        """The connection caps and failed-handshake throttle asked at accept time."""

    async def serve_channel(self, channel: Channel) -> None:
        """Serve one accepted connection until it ends; never raises (but Cancelled)."""

