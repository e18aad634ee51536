"""Heartbeat coalescing: every beat received in one flush window goes to Redis in one call.

Node connections call :meth:`HeartbeatBatcher.beat` (sync, O(1)); :meth:`serve` flushes the
latest beat of each node every ``heartbeat_flush`` seconds with one ``heartbeat_batch`` script
call, so Redis calls for heartbeats do not grow with the node count. The same call refreshes the
instance's presence, so an instance without nodes still flushes once per heartbeat interval.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import trio

from schedd.core.engine import Core
from schedd.errors import StoreError

log = logging.getLogger(__name__)

Beat = tuple[str, int, float, int]


class HeartbeatBatcher:
    def __init__(self, core: Core, on_stale: Callable[[str, int], None] | None = None) -> None:
        self.core = core
        # called with (node id, epoch the refused beat spoke for): only a connection still at
        # that epoch is stale; a newer registration of the same node is not
        self.on_stale = on_stale or (lambda node_id, epoch: None)
        self._pending: dict[str, Beat] = {}
        self.flushes = 0

    def beat(self, node_id: str, epoch: int, load: float = 0.0, inflight: int = 0) -> None:
        """Record a node's heartbeat; the latest one per node wins within a window."""
        self._pending[node_id] = (node_id, epoch, load, inflight)

    async def flush(self) -> list[str]:
        beats, self._pending = list(self._pending.values()), {}
        stale = await self.core.heartbeat_batch(beats)
        self.flushes += 1
        epochs = {beat[0]: beat[1] for beat in beats}
        for node_id in stale:
            log.info("heartbeat for node %s at epoch %s is stale", node_id, epochs[node_id])
            self.on_stale(node_id, epochs[node_id])
        return stale

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        settings = self.core.settings
        presence_every = min(settings.heartbeat_interval, settings.instance_ttl / 3)
        last = -presence_every
        task_status.started()
        while True:
            await trio.sleep(settings.heartbeat_flush)
            now = trio.current_time()
            if not self._pending and now - last < presence_every:
                continue
            try:
                await self.flush()
                last = now
            except StoreError as exc:
                log.warning("heartbeat flush failed, will retry: %s", exc)
