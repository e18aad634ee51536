"""Drain: a shutting-down instance's local nodes finish their jobs, then hand the rest back.

Redis is the truth about what the nodes still hold (results may be recorded by any
instance), so the wait polls it rather than waiting on a local event.
"""

from __future__ import annotations

import logging

import trio

from schedd.core import Core, Queries
from schedd.errors import Fenced, InvalidState, NodeNotFound, StoreError

log = logging.getLogger("schedd.app")


async def drain_nodes(core: Core, queries: Queries, local: dict[str, int], grace: float) -> int:
    """Drain the nodes of ``local`` (node id -> epoch), wait up to ``grace`` seconds for
    their jobs to finish, then take them offline. Returns how many jobs went back to the
    queue."""
    for node_id, epoch in local.items():
        try:
            await core.drain_node(node_id, epoch=epoch, reason="daemon shutting down")
        except (Fenced, NodeNotFound, InvalidState, StoreError) as exc:
            # gone meanwhile (offline, registered elsewhere): nothing of it to drain here
            log.debug("drain of node %s: %s", node_id, exc)
    with trio.move_on_after(grace) as scope:
        while local and await _held_jobs(queries, list(local)):  # noqa: ASYNC110
            await trio.sleep(0.1)
    if scope.cancelled_caught:
        log.warning("drain timeout (%gs) reached with jobs still running", grace)
    moved = 0
    for node_id, epoch in local.items():
        try:
            moved += await core.node_offline(node_id, epoch=epoch, reason="daemon shut down") or 0
        except (Fenced, NodeNotFound):
            pass
        except StoreError as exc:
            log.warning("could not hand back the jobs of node %s (%s); the reaper will",
                        node_id, exc)
    return moved


async def _held_jobs(queries: Queries, node_ids: list[str]) -> int:
    try:
        return await queries.held_jobs(node_ids)
    except StoreError:
        return 0
