"""Reading this instance's inbox stream: deliveries other instances' scripts appended for it.

The inbox is read with ``XREAD BLOCK`` on the store's blocking connection. Entries are deleted
only after they were handed to ``on_delivery``, so a restart of an instance with the same
instance id still delivers what was waiting.
"""

from __future__ import annotations

import logging

import trio

from schedd.core.engine import Core
from schedd.errors import StoreError

log = logging.getLogger(__name__)


async def serve_inbox(
    core: Core,
    *,
    block_ms: int = 1000,
    count: int = 512,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    key = core.keys.inbox(core.instance)
    last_id = b"0-0"
    backoff = 0.05
    task_status.started()
    while True:
        try:
            reply = await core.store.execute_blocking(
                "XREAD", "COUNT", count, "BLOCK", block_ms, "STREAMS", key, last_id
            )
            if not reply:
                continue
            entries = reply[0][1]
            ids = []
            for entry_id, fields in entries:
                ids.append(entry_id)
                last_id = entry_id
                for i in range(0, len(fields), 2):
                    if fields[i] == b"d":
                        core.dispatch(fields[i + 1])
            await core.store.execute("XDEL", key, *ids)
            backoff = 0.05
        except StoreError as exc:
            log.warning("inbox read failed, retrying in %.2fs: %s", backoff, exc)
            await trio.sleep(backoff)
            backoff = min(backoff * 2, 2.0)
