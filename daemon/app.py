"""The daemon: one trio root nursery, services started with ``nursery.start``, signals, systemd.

Rules of this module:
  * Plugins and transports see an :class:`App` only through its one facade, ``App.facade``
    (:class:`AppFacade`, the ``schedd.api.Daemon`` the hooks receive: it only forwards, holds
    no state of its own and is on no per-message path); the members below the
    "facade" heading are what that facade forwards to.
  * The instance keeps only what is local by nature: open sessions, which node id and which job's
    client each session speaks for (to route deliveries: schedd.routes), and the listeners'
    addresses.
  * Start-up order: Redis answers and scripts load, then the heartbeat flusher, the reaper and
    the inbox reader start, then each plugin service (transports bind before they report
    started); READY=1 is sent only after all of that.
  * SIGTERM/SIGINT drain: no new connections or submits; local nodes are drained so running
    jobs finish (up to ``[drain] timeout``); whatever is still unfinished is handed back to the
    queue for other instances (schedd.drain); exit 0. SIGHUP reloads tokens, limits and log
    level (schedd.reload).
"""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import trio

import schedd.systemd as systemd
from schedd import __version__
from schedd.admission import Admission
from schedd.api import Corrections, Daemon, LocalNode, is_loopback
from schedd.config import Config, LimitsSection, load_config
from schedd.core import (
    Core,
    CoreSettings,
    Event,
    HeartbeatBatcher,
    JobSpec,
    JobStateChanged,
    Limits,
    NodeWentOffline,
    Queries,
    Submitted,
    serve_inbox,
    serve_reaper,
)
from schedd.drain import drain_nodes
from schedd.errors import ConfigError, Fenced, NodeNotFound, StoreError, StoreUnavailable
from schedd.logs import set_level, setup_logging
from schedd.operators import Operators
from schedd.plugin_manager import PluginManager
from schedd.reload import reloaded
from schedd.routes import Router
from schedd.runtime import serve_gc_settler, tune_gc
from schedd.session import Session
from schedd.store import open_store
from schedd.store.base import Store
from schedd.transport.channel import Channel
from schedd.transport.readiness import ReadinessHub
from schedd.transport.readiness import available as readiness_available

log = logging.getLogger(__name__)

#: Sessions a scan over all of them (idle sweep, status) visits per step: App.visit_sessions.
SCAN_SLICE: Final = 500


def core_settings(config: Config) -> CoreSettings:
    return CoreSettings(
        namespace=config.schedd.namespace,
        instance=config.schedd.instance,
        heartbeat_interval=config.nodes.heartbeat_interval,
        liveness_intervals=config.nodes.liveness_intervals,
        heartbeat_flush=config.nodes.heartbeat_flush,
        liveness_refresh=config.nodes.liveness_refresh,
        ack_timeout=config.jobs.ack_timeout,
        run_timeout=config.jobs.run_timeout,
        max_run=config.jobs.max_run,
        queue_timeout=config.jobs.queue_timeout,
        max_attempts=config.jobs.max_attempts,
        queue=config.jobs.queue,
        max_queued=config.jobs.max_queued,
        max_created_pools=config.jobs.max_created_pools,
        weights=dict(config.tenants.weights),
        fair_hold=config.tenants.hold,
        retention=config.jobs.retention,
        session_ttl=config.jobs.session_ttl,
        max_result_ttl=config.jobs.max_result_ttl,
        keep_payload=config.jobs.keep_payload,
        retain_count=config.jobs.retain_count,
        retain_bytes=config.jobs.retain_bytes,
        max_delay=config.jobs.max_delay,
        backoff_base=config.jobs.backoff_base,
        backoff_max=config.jobs.backoff_max,
        session_gap_timeout=config.jobs.session_gap_timeout,
        reaper_interval=config.reaper.interval,
        reaper_batch=config.reaper.batch,
        **quota_settings(config),
    )


def quota_settings(config: Config) -> dict[str, Any]:
    """The core's view of ``[quotas]``."""
    q = config.quotas

    def limits(section: Any) -> Limits:
        return Limits(max_in_flight=section.max_in_flight, max_queued=section.max_queued,
                      max_payload_bytes=section.max_payload_bytes,
                      submit_rate=section.submit_rate, submit_burst=section.submit_burst)

    return {
        "quotas": limits(q),
        "principal_quotas": {name: limits(own) for name, own in q.principals.items()},
        "pool_rates": dict(q.pool_rates),
    }


class AppFacade(Daemon):
    """What plugins see of one App."""

    __slots__ = ("_app",)

    def __init__(self, app: App) -> None:
        self._app = app

    def __repr__(self) -> str:
        return f"<daemon {self._app.instance!r}>"

    @property
    def instance(self) -> str:
        return self._app.instance

    @property
    def version(self) -> str:
        return __version__

    @property
    def accepting(self) -> bool:
        return self._app.accepting

    @property
    def heartbeat_interval(self) -> float:
        return self._app.config.nodes.heartbeat_interval

    @property
    def disconnect_grace(self) -> float:
        return self._app.config.nodes.disconnect_grace

    @property
    def queries(self) -> Queries:
        return self._app.queries

    @property
    def corrections(self) -> Corrections:
        return self._app.core

    @property
    def operators(self) -> Operators:
        return self._app.operators

    @property
    def nodes(self) -> Mapping[str, LocalNode]:
        return self._app.nodes

    @property
    def connection_roles(self) -> Sequence[str | None]:
        return [session.role for session in self._app.sessions]

    @property
    def heartbeat_counts(self) -> Mapping[str, int]:
        batcher = self._app.batcher
        return {"beats": batcher.beats, "sent": batcher.sent, "silenced": batcher.silenced}

    @property
    def listeners(self) -> Mapping[str, str]:
        return self._app.listeners

    def plugin_config(self, name: str) -> Any:
        return self._app.plugin_config(name)

    def add_collector(self, collector: object) -> None:
        self._app.collectors.append(collector)

    def collectors(self) -> Sequence[object]:
        return tuple(self._app.collectors)

    async def submit(self, spec: JobSpec, *, principal: str = "") -> Submitted:
        return await self._app.core.submit(spec, principal=principal)

    async def cancel(self, job_id: str, *, principal: str = "", reason: str = "") -> str:
        return await self._app.core.cancel(job_id, principal=principal, reason=reason)

    async def store_ping(self) -> None:
        await self._app.store.execute("PING")

    async def store_time_ms(self) -> int:
        seconds, micros = await self._app.store.execute("TIME")
        return int(seconds) * 1000 + int(micros) // 1000

    def check_listener(self, plugin: str, host: str) -> None:
        self._app.check_listener(plugin, host)

    def listening(self, plugin: str, url: str) -> None:
        self._app.listening(plugin, url)

    @property
    def limits(self) -> LimitsSection:
        return self._app.limits

    @property
    def readiness(self) -> ReadinessHub:
        return self._app.readiness

    @property
    def admission(self) -> Admission:
        return self._app.admission

    async def serve_channel(self, channel: Channel) -> None:
        await self._app.serve_channel(channel)


class App:
    """One daemon instance."""

    def __init__(
        self,
        config: Config,
        plugins: PluginManager,
        store: Store,
        *,
        config_path: Path | None = None,
    ) -> None:
        self.config = config
        self.config_path = config_path
        self.limits: LimitsSection = config.limits
        self.instance = config.schedd.instance
        self.plugins = plugins
        self.store = store
        self.sessions: set[Session] = set()
        #: where each delivery goes: the node's connection, the job's follower (schedd.routes)
        self.router: Router[Session] = Router(self.sessions)
        self.nodes = self.router.nodes
        #: which local connection receives each job's progress and done
        self.routes = self.router.jobs
        self.core = Core(store, core_settings(config), on_delivery=self.router.deliver,
                         on_event=self._on_event)
        self.batcher = HeartbeatBatcher(self.core, on_stale=self._on_stale)
        #: reads plain TCP connections for their channels (schedd.transport.readiness); running
        #: while the app serves, on Linux
        self.readiness = ReadinessHub()
        #: the connection caps and the failed-handshake throttle, asked by the transports at
        #: accept time (schedd.admission)
        self.admission = Admission(lambda: self.limits)
        self.queries = Queries(store, self.core.keys)
        #: drain, undrain, cancel, requeue: for admin connections and the ui's admin token
        self.operators = Operators(self.core, self.queries)
        self.accepting = True
        #: connections opened since start (schedd.runtime.serve_gc_settler)
        self.sessions_opened = 0
        self.listeners: dict[str, str] = {}
        #: metric collectors plugins offered (schedd.api.Daemon.add_collector), for /metrics
        self.collectors: list[object] = []
        self.ready = trio.Event()
        self._stop = trio.Event()
        self._nursery: trio.Nursery | None = None
        #: what plugins see of this instance (schedd.api.Daemon)
        self.facade = AppFacade(self)

    # -- facade for plugins and transports -----------------------------------------------------

    def plugin_config(self, name: str) -> object:
        return self.plugins.plugin_config(name)

    def check_listener(self, plugin: str, host: str) -> None:
        """Refuse a non-loopback listener while any role accepts anyone (no tokens)."""
        open_roles = [r for r in ("node", "client") if not self.config.auth.tokens_for(r)]
        if not open_roles:
            return
        if is_loopback(host):
            log.warning(
                "%s: no %s tokens configured: anyone on this machine may connect as %s; "
                "serving loopback only", plugin, " or ".join(open_roles), " or ".join(open_roles))
            return
        raise ConfigError([
            f"$.plugins.{plugin}.listen: {host} is not a loopback address and no "
            f"{' or '.join(open_roles)} tokens are configured; set [auth] node_tokens and "
            "client_tokens (or node_token_file / client_token_file, or SCHEDD_AUTH__NODE_TOKENS "
            "and SCHEDD_AUTH__CLIENT_TOKENS), or listen on 127.0.0.1"
        ])

    def listening(self, plugin: str, url: str) -> None:
        self.listeners[plugin] = url
        log.info("%s listening on %s", plugin, url)

    async def serve_channel(self, channel: Channel) -> None:
        """Serve one connection until it ends. Never raises (but Cancelled)."""
        try:
            await Session(self, channel).run()
        except Exception:
            log.exception("connection from %s failed", channel.peer)

    # -- routing -------------------------------------------------------------------------------

    def session_started(self, session: Session) -> None:
        self.sessions.add(session)
        self.sessions_opened += 1

    def session_ended(self, session: Session) -> None:
        self.sessions.discard(session)
        left = self.routes.forget(session)
        if left and self._nursery is not None:
            with contextlib.suppress(RuntimeError):  # shutting down: presence expiry holds them
                self._nursery.start_soon(self._leave_sessions, session.principal, left)
        node_id, epoch = session.node_id, session.epoch
        if node_id is None or epoch is None or not self.router.unbind_node(node_id, session):
            return
        self.batcher.forget(node_id, epoch)
        if self._nursery is not None:
            # RuntimeError: shutting down, the drain already handed the node's work back
            with contextlib.suppress(RuntimeError):
                self._nursery.start_soon(self._node_gone, node_id, epoch)

    async def _leave_sessions(self, principal: str, session_ids: list[str]) -> None:
        """No connection here follows these ordered sessions now: their results wait in the
        store for the next follow instead of coming here."""
        for session_id in session_ids:
            try:
                await self.core.leave_session(session_id, principal=principal)
            except StoreError as exc:
                log.warning("session %s of %s still routed here: %s", session_id, principal, exc)

    async def _node_gone(self, node_id: str, epoch: int) -> None:
        """A node's connection dropped: after the grace, take it offline (fenced by epoch)."""
        await trio.sleep(self.config.nodes.disconnect_grace)
        if node_id in self.nodes:
            return  # it came back here; the new registration's epoch fences us out anyway
        try:
            moved = await self.core.node_offline(node_id, epoch=epoch, reason="connection lost")
        except (Fenced, NodeNotFound):
            log.debug("node %s registered again elsewhere; nothing to do", node_id)
            return
        except StoreError as exc:
            log.warning("could not take node %s offline (%s); the reaper will", node_id, exc)
            return
        if moved:
            log.info("node %s connection lost: %s job(s) moved on", node_id, moved)

    def _on_event(self, event: Event) -> None:
        if isinstance(event, JobStateChanged):
            self.plugins.job_state_changed(event.job_id, event.state, event.attempt, event.node)
        elif isinstance(event, NodeWentOffline):
            self.plugins.node_offline(event.node_id, event.reason)

    def _on_stale(self, node_id: str, epoch: int) -> None:
        session = self.nodes.get(node_id)
        # A beat queued by an old connection before the node registered again is stale, but
        # the node's current connection is not: only refuse a connection still at that epoch.
        if session is not None and session.epoch == epoch:
            if self.plugins.node_stale(self.facade, node_id, epoch):
                return  # a plugin (reconcile) registers it again in place, or closes it
            session.refuse_stale()

    # -- running -------------------------------------------------------------------------------

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Start everything; report started when listeners are bound and Redis answered."""
        await self.core.start()
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await nursery.start(self.batcher.serve)
            if readiness_available():
                await nursery.start(self.readiness.serve)
            await nursery.start(serve_reaper, self.core)
            await nursery.start(serve_inbox, self.core)
            for service in self.plugins.services(self.facade):
                await nursery.start(service, self.facade)
            nursery.start_soon(systemd.serve_watchdog, self._healthy)
            nursery.start_soon(self._sweep_idle)
            nursery.start_soon(serve_gc_settler, lambda: len(self.sessions),
                               lambda: self.sessions_opened)
            self.ready.set()
            task_status.started()

    async def _sweep_idle(self) -> None:
        """Close connections silent for longer than ``[limits] idle_timeout``.

        One sweep every quarter of the timeout (at most every 5 s) instead of a deadline per
        received message: with 10,000 connections a per-message timeout was a tenth of the
        daemon's CPU (trio's deadline heap). A silent connection is closed between 1 and 1.25
        times the timeout after its last message.
        """
        while True:
            idle = self.limits.idle_timeout
            await trio.sleep(min(idle / 4, 5.0))
            idle = self.limits.idle_timeout
            now = trio.current_time()

            def close_if_idle(session: Session, now: float = now, idle: float = idle) -> None:
                session.close_if_idle(now, idle)

            await self.visit_sessions(close_if_idle)

    async def visit_sessions(self, visit: Callable[[Session], object]) -> None:
        """Call ``visit`` on every open session, letting other tasks run after each
        SCAN_SLICE of them: one step over 10,000 sessions held the event loop for 6-10 ms,
        and every submit read meanwhile waited for it (S3)."""
        sessions = list(self.sessions)
        for start in range(0, len(sessions), SCAN_SLICE):
            for session in sessions[start:start + SCAN_SLICE]:
                visit(session)
            await trio.lowlevel.checkpoint()

    async def _healthy(self) -> bool:
        try:
            await self.store.execute("PING")
        except StoreError:
            return False
        return True

    def status_line(self, clients: int | None = None) -> str:
        """``N nodes, M clients on <listeners>`` (systemd STATUS); ``clients`` if counted."""
        nodes = len(self.nodes)
        if clients is None:
            clients = sum(1 for s in self.sessions if s.role == "client")
        where = ", ".join(self.listeners.values()) or "no listeners"
        return f"{nodes} nodes, {clients} clients on {where}"

    async def run(self) -> int:
        """Serve until SIGTERM/SIGINT, then drain. Returns the exit code."""
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            async with trio.open_nursery() as root:
                await root.start(self.serve)
                log.info("ready: instance %s, store %s, %s", self.instance, self.store.url,
                         ", ".join(f"{k} {v}" for k, v in self.listeners.items()))
                systemd.ready(f"ready: {self.status_line()}")
                root.start_soon(self._status_updates)
                async for signum in signals:
                    if signum == signal.SIGHUP:
                        self.reload()
                        continue
                    log.info("%s received: draining", signal.Signals(signum).name)
                    break
                await self.drain()
                root.cancel_scope.cancel()
        log.info("stopped")
        return 0

    async def _status_updates(self) -> None:
        while True:
            await trio.sleep(5)
            systemd.status(self.status_line(await self.count_clients()))

    async def count_clients(self) -> int:
        """Open client connections, counted without holding the event loop (visit_sessions)."""
        clients = [0]

        def count(session: Session) -> None:
            clients[0] += session.role == "client"

        await self.visit_sessions(count)
        return clients[0]

    def close_all(self) -> None:
        for session in list(self.sessions):
            session.close()

    async def drain(self) -> None:
        """Stop taking work, let local nodes finish, hand the rest back, close connections."""
        self.accepting = False
        systemd.stopping("draining: no new submits, running jobs finishing")
        local = {node_id: s.epoch for node_id, s in self.nodes.items() if s.epoch is not None}
        moved = await drain_nodes(self.core, self.queries, local, self.config.drain.timeout)
        if moved:
            log.info("handed %d unfinished job(s) back to the queue", moved)
        self.close_all()

    def reload(self) -> None:
        """SIGHUP: re-read the config; apply tokens, limits and log level; report the rest."""
        systemd.reloading("reloading configuration")
        try:
            new = load_config(self.config_path)
        except ConfigError as exc:
            for line in exc.errors:
                log.error("reload refused: %s", line)
            systemd.ready("reload refused: configuration has errors")
            return
        self.plugins.reload_auth(new.auth)
        self.limits = new.limits
        set_level(new.schedd.log_level)
        old_auth = self.config.auth
        self.config, restart_needed = reloaded(self.config, new, self.instance)
        log.info(
            "reloaded: tokens (%d node, %d client; %s), limits, log level %s%s",
            len(new.auth.node_tokens), len(new.auth.client_tokens),
            "changed" if new.auth != old_auth else "unchanged", new.schedd.log_level,
            f"; changes to [{'], ['.join(restart_needed)}] need a restart"
            if restart_needed else "",
        )
        systemd.ready(f"reloaded: {self.status_line()}")


async def _main(config: Config, plugins: PluginManager, config_path: Path | None) -> int:
    try:
        async with open_store(config.redis.url, connect_timeout=config.redis.connect_timeout,
                              command_timeout=config.redis.command_timeout,
                              namespace=config.schedd.namespace) as store:
            return await App(config, plugins, store, config_path=config_path).run()
    except StoreUnavailable as exc:
        log.error("cannot start: %s", exc)
        return 1


def run_daemon(config_path: Path | None = None) -> int:
    """``schedd run``: load and check everything, then serve. Returns the exit code."""
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        print("schedd: configuration errors:", file=sys.stderr)
        for line in exc.errors:
            print(f"  {line}", file=sys.stderr)
        return 2
    setup_logging(config.schedd.log_level, config.schedd.log_format)
    try:
        plugins = PluginManager.load(config)
        tune_gc()
        return trio.run(_main, config, plugins, config_path)
    except (ConfigError, BaseExceptionGroup) as exc:
        errors = _config_errors(exc)
        if errors is None:
            raise
        for line in errors:
            log.error("configuration error: %s", line)
        return 2


def _config_errors(exc: BaseException) -> list[str] | None:
    """The lines of every ConfigError in ``exc`` (possibly nested in exception groups)."""
    if isinstance(exc, ConfigError):
        return list(exc.errors)
    if isinstance(exc, BaseExceptionGroup):
        matched, rest = exc.split(ConfigError)
        if matched is None or rest is not None:
            return None
        lines: list[str] = []
        for inner in matched.exceptions:
            lines += _config_errors(inner) or []
        return lines
    return None
