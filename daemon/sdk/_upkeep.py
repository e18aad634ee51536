"""The client's two background duties that are not the link's: pacing a rate-limited submit,
and noticing jobs the daemon no longer knows.

Rules of this module:

- A ``submit`` refused with ``E_RATE_LIMITED`` is sent again (the same ``job_id``: idempotent)
  after the ``retry_after`` the daemon names, up to ``retries`` times and only while that wait is
  at most :data:`_MAX_RATE_WAIT` seconds; then the refusal is raised.
- Every ``interval`` seconds the jobs waited for longest unchecked (at most
  :data:`_LOST_CHECK_BATCH`) get a ``status``; a job the daemon answers ``E_NO_JOB`` for is lost
  (its handle fails). Other refusals are checked again later; a lost link ends the round (the
  next connection re-follows every job).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Final

import anyio

from schedd.protocol import Accepted, Job, Status
from schedd.sdk._conn import Link, LinkLost, RequestFailed
from schedd.sdk.handle import JobHandle

__all__ = ["submit_paced", "watch_lost"]

log = logging.getLogger("schedd.sdk.client")

E_RATE_LIMITED: Final = "E_RATE_LIMITED"
_MAX_RATE_WAIT: Final = 60.0
"""The longest ``retry_after`` a rate-limited submit waits out; a longer one is raised."""
_LOST_CHECK_BATCH: Final = 32
"""Most ``status`` checks of waiting jobs per interval."""


async def submit_paced(send: Callable[[], Awaitable[Accepted]], job_id: str | None,
                       retries: int) -> Accepted:
    """``send()`` the submit; on ``E_RATE_LIMITED`` wait and send it again, ``retries`` times."""
    tries = 0
    while True:
        try:
            return await send()
        except RequestFailed as exc:
            wait = exc.retry_after
            if (exc.code != E_RATE_LIMITED or wait is None or tries >= retries
                    or wait > _MAX_RATE_WAIT):
                raise
            tries += 1
            log.debug("submit %s rate limited; retrying in %.3f s", job_id, wait)
            await anyio.sleep(wait)


async def watch_lost(handles: Callable[[], Iterable[JobHandle]],
                     link_of: Callable[[], Link | None],
                     lose: Callable[[JobHandle, RequestFailed], None], interval: float) -> None:
    """Check the waiting handles' jobs every ``interval`` seconds; ``lose`` the gone ones."""
    while True:
        await anyio.sleep(interval)
        now = anyio.current_time()
        due = sorted(
            (h for h in handles()
             if h._acknowledged and not h.finished and now - h._checked >= interval),
            key=lambda h: h._checked,
        )[:_LOST_CHECK_BATCH]
        for handle in due:
            link = link_of()
            if link is None:
                break  # the next connection re-follows every job
            try:
                job = await link.request(Status(job_id=handle.job_id), Job)
            except LinkLost:
                break
            except RequestFailed as exc:
                if exc.code == "E_NO_JOB" and not handle.finished:
                    log.warning("job %s no longer exists on %s", handle.job_id, link.url)
                    lose(handle, exc)
                continue  # other refusals (E_UNAVAILABLE...): checked again later
            handle._checked = anyio.current_time()
            if not handle.finished:
                handle.state = job.state
