"""The daemon: one trio root nursery, services started with ``nursery.start``, signals, systemd.

Rules of this module:
  * Plugins and transports see an :class:`App` only through its one facade, ``App.facade``
    (schedd.facade, the ``schedd.api.Daemon`` the hooks receive); the members below the
    "facade" heading are what that facade forwards to.
  * The instance keeps only what is local by nature: open sessions, which node id and which job's
    client each session speaks for (to route deliveries: schedd.routes for jobs), and the
    listeners' addresses.
  * Start-up order: Redis answers and scripts load, then the heartbeat flusher, the reaper and
    the inbox reader start, then each plugin service (transports bind before they report
    started); READY=1 is sent only after all of that.
  * SIGTERM/SIGINT drain: no new connections or submits; local nodes are drained so running
    jobs finish (up to ``[drain] timeout``); whatever is still unfinished is handed back to the
    queue for other instances; exit 0. SIGHUP reloads tokens, limits and log level.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import attrs
import trio

from schedd import systemd
from schedd.admission import Admission
from schedd.api import is_loopback
from schedd.config import Config, LimitsSection, load_config
from schedd.core import (
    AssignDelivery,
    CancelJob,
    Core,
    CoreSettings,
    Delivery,
    Detach,
    DoneDelivery,
    DrainNode,
    Event,
    HeartbeatBatcher,
    JobStateChanged,
    NodeWentOffline,
    ProgressDelivery,
    Queries,
    serve_inbox,
    serve_reaper,
)
from schedd.errors import (
    ConfigError,
    Fenced,
    InvalidState,
    NodeNotFound,
    StoreError,
    StoreUnavailable,
)
from schedd.facade import AppFacade
from schedd.logs import set_level, setup_logging
from schedd.plugin_manager import PluginManager
from schedd.routes import Routes
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
        retention=config.jobs.retention,
        session_ttl=config.jobs.session_ttl,
        reaper_interval=config.reaper.interval,
        reaper_batch=config.reaper.batch,
    )


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
        self.core = Core(store, core_settings(config), on_delivery=self._on_delivery,
                         on_event=self._on_event)
        self.batcher = HeartbeatBatcher(self.core, on_stale=self._on_stale)
        #: reads plain TCP connections for their channels (schedd.transport.readiness); running
        #: while the app serves, on Linux
        self.readiness = ReadinessHub()
        #: the connection caps and the failed-handshake throttle, asked by the transports at
        #: accept time (schedd.admission)
        self.admission = Admission(lambda: self.limits)
        self.queries = Queries(store, self.core.keys)
        self.accepting = True
        self.sessions: set[Session] = set()
        #: connections opened since start (schedd.runtime.serve_gc_settler)
        self.sessions_opened = 0
        self.nodes: dict[str, Session] = {}
        #: which local connection receives each job's progress and done
        self.routes = Routes()
        self.listeners: dict[str, str] = {}
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

    async def answer(self, what: str) -> dict[str, Any]:
        if what == "nodes":
            return {"nodes": [attrs.asdict(n) for n in await self.queries.nodes()]}
        if what == "pools":
            return {"pools": [attrs.asdict(p) for p in await self.queries.pools()]}
        return {
            "counts": await self.queries.counts(),
            "exclusions": await self.queries.exclusions(),
            "instances": await self.queries.instances(),
        }

    # -- routing -------------------------------------------------------------------------------

    def session_started(self, session: Session) -> None:
        self.sessions.add(session)
        self.sessions_opened += 1

    def session_ended(self, session: Session) -> None:
        self.sessions.discard(session)
        self.routes.forget(session)
        node_id, epoch = session.node_id, session.epoch
        if node_id is None or epoch is None or not self.unbind_node(node_id, session):
            return
        self.batcher.forget(node_id, epoch)
        if self._nursery is not None:
            # RuntimeError: shutting down, the drain already handed the node's work back
            with contextlib.suppress(RuntimeError):
                self._nursery.start_soon(self._node_gone, node_id, epoch)

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
        if restore is not None and restore in self.sessions and restore.speaks_for(node_id):
            self.nodes[node_id] = restore
        else:
            del self.nodes[node_id]
        return True

    def reroute(self, deliveries: list[Delivery]) -> None:
        """Route deliveries again (ones a refused registration held for the node)."""
        for delivery in deliveries:
            self._on_delivery(delivery)

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

    def _on_delivery(self, delivery: Delivery) -> None:
        if isinstance(delivery, AssignDelivery | CancelJob | DrainNode):
            session = self.nodes.get(delivery.node_id)
        elif isinstance(delivery, ProgressDelivery | DoneDelivery):
            self.routes.route(delivery)
            return
        elif isinstance(delivery, Detach):
            self.routes.detach(delivery)
            return
        else:  # pragma: no cover - exhaustive
            return
        if session is None:
            log.debug("no local connection for %s; dropped (deadlines cover it)", delivery)
            return
        session.deliver(delivery)

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
        timeout = self.config.drain.timeout
        self.accepting = False
        systemd.stopping("draining: no new submits, running jobs finishing")
        local = {node_id: s.epoch for node_id, s in self.nodes.items() if s.epoch is not None}
        for node_id, epoch in local.items():
            try:
                await self.core.drain_node(node_id, epoch=epoch, reason="daemon shutting down")
            except (Fenced, NodeNotFound, InvalidState, StoreError) as exc:
                # gone meanwhile (offline, registered elsewhere): nothing of it to drain here
                log.debug("drain of node %s: %s", node_id, exc)
        with trio.move_on_after(timeout) as scope:
            # Redis is the truth about what the nodes still hold (results may be recorded by
            # any instance), so this polls it rather than waiting on a local event.
            while local and await self._held_jobs(list(local)):  # noqa: ASYNC110
                await trio.sleep(0.1)
        if scope.cancelled_caught:
            log.warning("drain timeout (%gs) reached with jobs still running", timeout)
        moved = 0
        for node_id, epoch in local.items():
            try:
                moved += await self.core.node_offline(
                    node_id, epoch=epoch, reason="daemon shut down") or 0
            except (Fenced, NodeNotFound):
                pass
            except StoreError as exc:
                log.warning("could not hand back the jobs of node %s (%s); the reaper will",
                            node_id, exc)
        if moved:
            log.info("handed %d unfinished job(s) back to the queue", moved)
        self.close_all()

    async def _held_jobs(self, node_ids: list[str]) -> int:
        try:
            replies = await self.store.execute_many(
                [("HGET", self.core.keys.node(n), "used") for n in node_ids]
            )
        except StoreError:
            return 0
        return sum(int(r or 0) for r in replies)

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
        restart_needed = [
            name for name in ("redis", "nodes", "jobs", "reaper", "drain")
            if getattr(new, name) != getattr(self.config, name)
        ]
        # an empty instance name is generated anew by every load: not a change
        generated = new.schedd.instance.rsplit("-", 1)[0] == self.instance.rsplit("-", 1)[0]
        same = attrs.evolve(new.schedd, log_level=self.config.schedd.log_level,
                            instance=self.instance if generated else new.schedd.instance)
        if same != self.config.schedd:
            restart_needed.append("schedd")
        if new.plugins != self.config.plugins or new.plugin_tables != self.config.plugin_tables:
            restart_needed.append("plugins")
        old_auth = self.config.auth
        self.config = attrs.evolve(self.config, auth=new.auth, limits=new.limits,
                                   schedd=attrs.evolve(self.config.schedd,
                                                       log_level=new.schedd.log_level))
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
