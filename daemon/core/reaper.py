"""The reaper: one ``reap`` script call per interval on every instance.

Safe to run everywhere at once: each pass is one atomic script over range queries, so two
instances never handle the same expiry twice. A pass that filled a batch runs again at once; a
delayed job due before the next interval (as the pass saw the delayed set) wakes the reaper at
its due time.
"""

from __future__ import annotations

import logging

import trio

from schedd.core.engine import Core
from schedd.errors import StoreError

log = logging.getLogger(__name__)


async def serve_reaper(
    core: Core, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    batch = core.settings.reaper_batch
    task_status.started()
    while True:
        try:
            lost, due, removed, inboxes = await core.reap()
        except StoreError as exc:
            log.warning("reaper pass failed, will retry: %s", exc)
            await trio.sleep(core.settings.reaper_interval)
            continue
        if lost or due:
            log.info("reaper: %s node(s) lost, %s deadline(s) handled", lost, due)
        if removed or inboxes:
            log.debug("reaper: %s record(s) and %s inbox(es) removed", removed, inboxes)
        if max(lost, due, removed, inboxes) < batch:
            # a delayed job due before the next interval is released at its time, not after
            wait = core.settings.reaper_interval
            if core.next_delayed_in is not None:
                wait = min(wait, core.next_delayed_in + 0.001)
            await trio.sleep(wait)
        else:
            await trio.lowlevel.checkpoint()
