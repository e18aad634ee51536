"""Test helpers for plugins: a fake :class:`~schedd.api.Daemon` and an in-memory daemon.

Public (``docs/hooks.md``, "Testing a plugin"), like :mod:`schedd.api`:

- :class:`FakeDaemon` stands in for the daemon where a plugin's hooks or services are tested
  alone: it records what the plugin reports and answers from what the test gives it.
- :func:`running_daemon` runs a whole daemon in the test's process, on the embedded in-memory
  store (or a Redis URL), with the plugins the test names; :class:`DaemonHarness` connects nodes
  and clients to it over in-memory channels and speaks the wire protocol raw (:class:`Peer`).

Rules of this module:

- Nothing here listens on a socket or starts a process: a test stays in its own trio run.
- The harness reaches the daemon the way a transport does (``Daemon.serve_channel``), so what a
  test sees is what a peer on the wire sees.
"""

from __future__ import annotations

import ipaddress
import tempfile
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import trio

import schedd.protocol as p
from schedd.api import (
    ConfigError,
    Corrections,
    Daemon,
    JobSpec,
    LocalNode,
    Operators,
    Queries,
    Submitted,
)
from schedd.transport.channel import Channel, ChannelClosed

if TYPE_CHECKING:
    from schedd.admission import Admission
    from schedd.app import App
    from schedd.config import LimitsSection
    from schedd.transport.readiness import ReadinessHub

__all__ = [
    "DaemonHarness",
    "FakeDaemon",
    "MemoryChannel",
    "Peer",
    "channel_pair",
    "running_daemon",
]


class FakeDaemon(Daemon):
    """A :class:`~schedd.api.Daemon` for testing a plugin's hooks and services alone.

    ``settings`` maps plugin names to what ``plugin_config`` returns. Members a test does not
    give raise ``NotImplementedError`` when used (``queries``, ``corrections``, ``submit``,
    ``cancel``, the store and transport members); subclass it to answer them.
    ``check_listener`` refuses a non-loopback host unless ``tokens`` is true, as the daemon does
    without ``[auth]`` tokens.
    """

    def __init__(
        self,
        settings: Mapping[str, object] | None = None,
        *,
        instance: str = "test-instance",
        tokens: bool = False,
        queries: Queries | None = None,
    ) -> None:
        self.settings = dict(settings or {})
        self.tokens = tokens
        self._instance = instance
        self._queries = queries
        self.accepting_work = True
        #: what ``version`` returns
        self.daemon_version = "0.0.0-test"
        #: node connections, by node id (``nodes``)
        self.local_nodes: dict[str, LocalNode] = {}
        #: roles of open connections (``connection_roles``)
        self.roles: list[str | None] = []
        #: what ``listening`` reported, by plugin
        self.urls: dict[str, str] = {}
        #: every ``check_listener`` call, as (plugin, host)
        self.checked: list[tuple[str, str]] = []
        #: what plugins offered with ``add_collector``
        self.offered: list[object] = []
        self.heartbeats: dict[str, int] = {"beats": 0, "sent": 0, "silenced": 0}

    @property
    def instance(self) -> str:
        return self._instance

    @property
    def version(self) -> str:
        return self.daemon_version

    @property
    def accepting(self) -> bool:
        return self.accepting_work

    @property
    def heartbeat_interval(self) -> float:
        return 5.0

    @property
    def disconnect_grace(self) -> float:
        return 0.0

    @property
    def queries(self) -> Queries:
        if self._queries is None:
            raise NotImplementedError("FakeDaemon(queries=...) was not given")
        return self._queries

    @property
    def corrections(self) -> Corrections:
        raise NotImplementedError("FakeDaemon has no store; use running_daemon")

    @property
    def operators(self) -> Operators:
        raise NotImplementedError("FakeDaemon has no store; use running_daemon")

    @property
    def nodes(self) -> Mapping[str, LocalNode]:
        return self.local_nodes

    @property
    def connection_roles(self) -> Sequence[str | None]:
        return self.roles

    @property
    def heartbeat_counts(self) -> Mapping[str, int]:
        return self.heartbeats

    @property
    def listeners(self) -> Mapping[str, str]:
        return self.urls

    def plugin_config(self, name: str) -> Any:
        return self.settings.get(name)

    def add_collector(self, collector: object) -> None:
        self.offered.append(collector)

    def collectors(self) -> Sequence[object]:
        return tuple(self.offered)

    async def submit(self, spec: JobSpec, *, principal: str = "") -> Submitted:
        raise NotImplementedError("FakeDaemon has no store; use running_daemon")

    async def cancel(self, job_id: str, *, principal: str = "", reason: str = "") -> str:
        raise NotImplementedError("FakeDaemon has no store; use running_daemon")

    async def store_ping(self) -> None:
        raise NotImplementedError("FakeDaemon has no store; use running_daemon")

    async def store_time_ms(self) -> int:
        raise NotImplementedError("FakeDaemon has no store; use running_daemon")

    def check_listener(self, plugin: str, host: str) -> None:
        self.checked.append((plugin, host))
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = host == "localhost"
        if not loopback and not self.tokens:
            raise ConfigError(
                [f"$.plugins.{plugin}.listen: {host} is not loopback and no tokens are set"]
            )

    def listening(self, plugin: str, url: str) -> None:
        self.urls[plugin] = url

    @property
    def limits(self) -> LimitsSection:
        raise NotImplementedError("FakeDaemon has no limits; subclass it for a transport")

    @property
    def readiness(self) -> ReadinessHub:
        raise NotImplementedError("FakeDaemon has no readiness hub; subclass it for a transport")

    @property
    def admission(self) -> Admission:
        raise NotImplementedError("FakeDaemon has no admission; subclass it for a transport")

    async def serve_channel(self, channel: Channel) -> None:
        raise NotImplementedError("FakeDaemon serves no connection; subclass it for a transport")


# -------------------------------------------------------------------------------------------------
# An in-memory daemon
# -------------------------------------------------------------------------------------------------


class MemoryChannel(Channel):
    """One end of an in-process connection (only the base class's optional capabilities)."""

    def __init__(self, send: trio.MemorySendChannel[bytes], recv: trio.MemoryReceiveChannel[bytes],
                 peer: str) -> None:
        self._send, self._recv, self.peer = send, recv, peer

    async def receive(self) -> bytes | str:
        try:
            return await self._recv.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise ChannelClosed from None

    async def send(self, data: bytes) -> None:
        try:
            await self._send.send(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise ChannelClosed from None

    async def aclose(self) -> None:
        await self._send.aclose()
        await self._recv.aclose()


def channel_pair(peer: str = "127.0.0.1:40000") -> tuple[MemoryChannel, MemoryChannel]:
    """(the peer's end, the daemon's end) of a new in-memory connection from ``peer``."""
    a_send, b_recv = trio.open_memory_channel[bytes](1000)
    b_send, a_recv = trio.open_memory_channel[bytes](1000)
    return MemoryChannel(a_send, a_recv, peer), MemoryChannel(b_send, b_recv, "daemon")


class Peer:
    """The far end of a connection, speaking raw protocol messages."""

    def __init__(self, channel: MemoryChannel, timeout: float = 5.0) -> None:
        self.channel = channel
        self.timeout = timeout

    async def send(self, message: p.Message | dict[str, Any] | bytes) -> None:
        if isinstance(message, bytes):
            await self.channel.send(message)
        elif isinstance(message, dict):
            await self.channel.send(orjson.dumps(message))
        else:
            await self.channel.send(p.encode(message))

    async def recv(self) -> p.Message:
        with trio.fail_after(self.timeout):
            return p.decode(await self.channel.receive())

    async def expect(self, kind: type[Any]) -> Any:
        message = await self.recv()
        assert isinstance(message, kind), f"expected {kind.__name__}, got {message!r}"
        return message

    async def closed(self) -> bool:
        with trio.fail_after(self.timeout):
            try:
                while True:
                    await self.channel.receive()
            except ChannelClosed:
                return True


class DaemonHarness:
    """A daemon running in the test's nursery (see :func:`running_daemon`).

    ``daemon`` is the facade plugins see; ``app`` is the daemon's own object, for the
    project's tests only (it is not public and may change in any release).
    """

    def __init__(self, app: App, nursery: trio.Nursery) -> None:
        self.app = app
        self.daemon: Daemon = app.facade
        self.nursery = nursery

    async def connect(self, role: str | None = None, token: str | None = None,
                      peer: str = "127.0.0.1:40000") -> Peer:
        """A new connection from ``peer``; with a ``role``, after its ``hello``/``welcome``."""
        ours, theirs = channel_pair(peer)
        self.nursery.start_soon(self.daemon.serve_channel, theirs)
        conn = Peer(ours)
        if role is not None:
            await conn.send(p.Hello(role=role, version=p.PROTOCOL_VERSION, token=token))  # type: ignore[arg-type]
            await conn.expect(p.Welcome)
        return conn

    async def node(self, *pools: str, capacity: int = 1, node_id: str | None = None,
                   token: str | None = None) -> tuple[Peer, p.Registered]:
        """A node connection registered in ``pools``, and its ``registered``."""
        conn = await self.connect("node", token)
        await conn.send(p.Register(node_id=node_id, capacity=capacity, pools=list(pools)))
        return conn, await conn.expect(p.Registered)

    async def client(self, token: str | None = None) -> Peer:
        """A client connection after its ``hello``/``welcome``."""
        return await self.connect("client", token)


@asynccontextmanager
async def running_daemon(store_url: str = "memory://", toml: str = "", tmp_path: Any = None,
                         *, plugins: Mapping[str, object] | None = None,
                         env: Mapping[str, str] | None = None) -> AsyncIterator[DaemonHarness]:
    """Run a daemon until the block ends, and yield its harness once it is ready.

    :param store_url: ``memory://`` (the embedded store) or a Redis URL.
    :param toml: the ``sched.toml`` text (written to a file in ``tmp_path``; no other file and no
        ``./sched.toml`` is read).
    :param plugins: plugin objects by name, used in place of installed entry points of the
        same name; list the ones to run in ``[plugins] enabled``.
    :param env: environment overrides (``SCHEDD_...``); without ``SCHEDD_PLUGINS__ENABLED``, the
        plugins ``toml`` enables run (none when it enables none).
    """
    from schedd.app import App
    from schedd.config import load_config
    from schedd.plugin_manager import PluginManager
    from schedd.store import open_store

    folder = Path(tmp_path) if tmp_path is not None else Path(tempfile.mkdtemp(prefix="schedd-"))
    path = folder / f"sched-{uuid.uuid4().hex[:6]}.toml"
    path.write_text(toml)
    config = load_config(path, env={"SCHEDD_REDIS__URL": store_url, **(env or {})})
    manager = PluginManager.load(config, plugins)
    async with open_store(config.redis.url) as store, trio.open_nursery() as nursery:
        app = App(config, manager, store, config_path=path)
        await nursery.start(app.serve)
        yield DaemonHarness(app, nursery)
        nursery.cancel_scope.cancel()

