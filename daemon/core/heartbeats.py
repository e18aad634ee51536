"""Heartbeat coalescing: the beats of one flush window go to Redis in one call, and only the
ones Redis needs.

Node connections call :meth:`HeartbeatBatcher.beat` (sync, O(1)); :meth:`serve` flushes every
``heartbeat_flush`` seconds with one ``heartbeat_batch`` script call, so Redis calls for
heartbeats do not grow with the node count. The same call refreshes the instance's presence, so
an instance without nodes still flushes once per heartbeat interval.

Of the latest beat of each node in the window, the flush sends:

* a beat whose epoch, load or in-flight count differs from the node's last sent beat (and the
  first beat this instance sees of a node);
* an unchanged beat once ``refresh_after`` has passed since the node's last sent beat: every
  ``liveness_refresh`` beats. The liveness a sent beat writes reaches ``liveness_horizon``, the
  ttl plus the beats left out, so a live node keeps the margin it would have if every beat
  were written.

Left-out beats still count here: a node none of whose beats arrived for ``liveness_ttl`` is
*silent*, and the next flush ends its liveness at once, fenced by the epoch of its last beat,
so the reaper takes it offline within ``liveness_intervals`` heartbeat intervals as before. The
horizon only decides when the instance itself is gone. Redis work per second then falls with
``liveness_refresh`` (to about a third with the default 3), and so does the time each flush
holds Redis, which is what bounds dispatch latency at 10,000 nodes
(docs/decisions/0011-skip-unchanged-heartbeats.md).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Final

import trio
from trio.lowlevel import checkpoint

from schedd.core.engine import Core
from schedd.errors import StoreError

log = logging.getLogger(__name__)

Beat = tuple[str, int, float, int]
#: what the batcher knows of a node: (when its last beat was flushed, its last sent beat,
#: when that was sent); the dict holding them is in order of the last beat, oldest first
Seen = tuple[float, Beat, float]

#: a sent time that makes the node's next beat go to Redis
NEVER = float("-inf")
#: Beats a flush looks at between two checkpoints: no other task of the daemon (a dispatch
#: included) waits for more than one slice of a flush window
#: (docs/decisions/0010-heartbeat-flush.md).
SELECT_SLICE: Final = 100


class HeartbeatBatcher:
    def __init__(self, core: Core, on_stale: Callable[[str, int], None] | None = None) -> None:
        self.core = core
        # called with (node id, epoch the refused beat spoke for): only a connection still at
        # that epoch is stale; a newer registration of the same node is not
        self.on_stale = on_stale or (lambda node_id, epoch: None)
        self._pending: dict[str, Beat] = {}
        self._selecting: dict[str, Beat] = {}  # the beats a flush is looking at
        self._seen: dict[str, Seen] = {}
        self._silent: list[tuple[str, int]] = []  # found silent, not yet flushed
        self.flushes = 0
        #: beats received, beats sent to Redis, nodes found silent (since start)
        self.beats = self.sent = self.silenced = 0

    def beat(self, node_id: str, epoch: int, load: float = 0.0, inflight: int = 0) -> None:
        """Record a node's heartbeat; the latest one per node wins within a window."""
        self._pending[node_id] = (node_id, epoch, load, inflight)

    def forget(self, node_id: str, epoch: int) -> None:
        """The node's connection here ended (at ``epoch``): drop its waiting beat and what is
        known of it, so it is not found silent later; taking it offline is the disconnect's
        business. An earlier epoch's (a connection it replaced) goes too; a newer
        registration's is kept."""
        for beats in (self._pending, self._selecting):
            beat = beats.get(node_id)
            if beat is not None and beat[1] <= epoch:
                del beats[node_id]
        seen = self._seen.get(node_id)
        if seen is not None and seen[1][1] <= epoch:
            del self._seen[node_id]

    async def _select(self, now: float, send: list[Beat]) -> None:
        """Append the window's beats Redis needs to ``send``; records every beat as seen at
        ``now``. Checkpoints every SELECT_SLICE beats and after the last: a beat whose node is
        forgotten meanwhile is skipped, and beats arriving meanwhile wait for the next window."""
        pending, self._pending = self._pending, {}
        self._selecting = pending
        seen, due = self._seen, now - self.core.settings.refresh_after
        try:
            for i, beat in enumerate(list(pending.values())):
                if i and not i % SELECT_SLICE:
                    await checkpoint()
                node_id = beat[0]
                if pending.get(node_id) is not beat:
                    continue  # forgotten at the checkpoint
                self.beats += 1
                last = seen.pop(node_id, None)
                if last is None or last[1] != beat or last[2] <= due:
                    send.append(beat)
                    seen[node_id] = (now, beat, now)
                else:
                    seen[node_id] = (now, last[1], last[2])
            if pending:  # the call is built and encoded in a step of its own
                await checkpoint()
        finally:
            self._selecting = {}

    def _find_silent(self, now: float) -> None:
        """Move nodes with no beat for the liveness ttl from ``_seen`` to ``_silent``."""
        seen, ttl = self._seen, self.core.settings.liveness_ttl
        found: list[tuple[str, int]] = []
        for node_id, (last, beat, _sent) in seen.items():
            if now - last < ttl:
                break
            found.append((node_id, beat[1]))
        for node_id, _epoch in found:
            del seen[node_id]
        self._silent.extend(found)

    async def flush(self, now: float | None = None) -> list[str]:
        """Send what the window needs (see the module); returns the stale node ids.

        ``now`` is the trio clock the beats count as received at (default: now). When the call
        fails, the beats it carried are sent again with the nodes' next beats and the silent
        nodes with the next flush.
        """
        now = trio.current_time() if now is None else now
        beats: list[Beat] = []
        silent: list[tuple[str, int]] = []
        try:
            await self._select(now, beats)
            self._find_silent(now)
            # (a node found silent by a flush that failed and beating again since is not)
            silent = [s for s in self._silent if s[0] not in self._seen]
            self._silent = []
            stale = await self.core.heartbeat_batch(beats, silent)
        except BaseException:
            self._silent = silent + self._silent
            for beat in beats:
                last = self._seen.get(beat[0])
                if last is not None and last[1] is beat:
                    self._seen[beat[0]] = (last[0], beat, NEVER)
            raise
        self.flushes += 1
        self.sent += len(beats)
        if silent:
            self.silenced += len(silent)
            log.info("%d node(s) sent no heartbeat for %gs; their liveness ends now: %s",
                     len(silent), self.core.settings.liveness_ttl,
                     ", ".join(node_id for node_id, _ in silent[:10])
                     + (" ..." if len(silent) > 10 else ""))
        epochs = {beat[0]: beat[1] for beat in beats}
        for node_id in stale:
            log.info("heartbeat for node %s at epoch %s is stale", node_id, epochs[node_id])
            self._seen.pop(node_id, None)  # whatever comes next from it is sent
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
            if (not self._pending and not self._silent and now - last < presence_every
                    and not self._silence_due(now)):
                continue
            try:
                await self.flush(now)
                last = now
            except StoreError as exc:
                log.warning("heartbeat flush failed, will retry: %s", exc)

    def _silence_due(self, now: float) -> bool:
        """Whether the node heard from longest ago (the first in ``_seen``) is silent."""
        oldest = next(iter(self._seen.values()), None)
        return oldest is not None and now - oldest[0] >= self.core.settings.liveness_ttl
