"""The blocking client's serial round trip: submit, then block on the result, one job at a time."""

from __future__ import annotations

import time
from typing import Final

from schedd.sdk.blocking import BlockingClient

__all__ = ["blocking_round_trips"]

_PAYLOAD: Final = {"n": 1}
_RESULT_TIMEOUT: Final = 60.0
"""A bound on one job's wait, so that a stuck run fails instead of hanging the bench."""


def blocking_round_trips(url: str, n: int, pool: str) -> list[float]:
    """Seconds from each ``submit`` to its ``result`` returning, for ``n`` jobs in a row on one
    :class:`~schedd.sdk.BlockingClient` to ``url`` (a node must serve ``pool``).

    Blocks the calling thread; call it from no event loop (or from a worker thread). Raises
    ``RuntimeError`` if a job does not end ``done``.
    """
    times: list[float] = []
    with BlockingClient(url) as client:
        for _ in range(n):
            start = time.perf_counter()
            done = client.submit(_PAYLOAD, pools=[pool]).result(timeout=_RESULT_TIMEOUT)
            times.append(time.perf_counter() - start)
            if not done.ok:
                raise RuntimeError(f"job {done.job_id} ended {done.state}: {done.error}")
    return times
