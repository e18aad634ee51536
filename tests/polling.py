"""Waiting in tests for state that changes without an event to wait on."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import trio


async def until(predicate: Callable[[], object], *, timeout: float | None = None,
                interval: float = 0.005) -> None:
    """Poll ``predicate`` every ``interval`` seconds until it is true (``trio.TooSlowError``
    after ``timeout`` seconds, when given)."""
    with trio.fail_after(timeout) if timeout is not None else contextlib.nullcontext():
        while not predicate():
            await trio.sleep(interval)
