"""The :class:`schedd.api.Daemon` facade over a running :class:`~schedd.app.App`.

Rules of this module:

- One facade per App (``App.facade``), so plugins may key their per-daemon state by it.
- It only forwards: no state of its own, nothing on the per-message path (transports receive
  it once per connection at most).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from schedd.api import Corrections, Daemon, LocalNode

if TYPE_CHECKING:
    from schedd.admission import Admission
    from schedd.app import App
    from schedd.config import LimitsSection
    from schedd.core import JobSpec, Queries, Submitted
    from schedd.transport.channel import Channel
    from schedd.transport.readiness import ReadinessHub

__all__ = ["AppFacade"]


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
