"""The primitives the SDK creates once per job or per request, native to the running loop.

Rules of this module: under trio these are trio's own (``trio.Event``, ``trio.CancelScope``, a
nursery), under any other event loop anyio's. anyio's wrappers cost measurably on trio where
they are made per job (a task started in an anyio task group costs about three times a
nursery's; docs/decisions/0022-sdk-on-anyio.md); everything made once per connection stays
anyio's. Callers see only the small protocols below, which both kinds satisfy.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import Any, Protocol, cast

import anyio
import sniffio
import trio

__all__ = ["CancelScope", "Event", "TaskGroup", "cancel_scope", "event", "on_trio",
           "open_task_group"]


class Event(Protocol):
    def set(self) -> None: ...

    def is_set(self) -> bool: ...

    async def wait(self) -> None: ...


class CancelScope(Protocol):
    def cancel(self) -> None: ...

    @property
    def cancel_called(self) -> bool: ...

    def __enter__(self) -> Any: ...

    def __exit__(
        self, etype: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None, /,
    ) -> bool: ...


class _Cancellable(Protocol):
    def cancel(self) -> None: ...


class TaskGroup(Protocol):
    @property
    def cancel_scope(self) -> _Cancellable: ...

    def start_soon(
        self, func: Callable[..., Awaitable[Any]], *args: Any, name: Any = None
    ) -> None: ...


def on_trio() -> bool:
    """Whether the running event loop is trio."""
    return sniffio.current_async_library() == "trio"


def event() -> Event:
    return trio.Event() if on_trio() else anyio.Event()


def cancel_scope() -> CancelScope:
    return trio.CancelScope() if on_trio() else anyio.CancelScope()


def open_task_group() -> AbstractAsyncContextManager[TaskGroup]:
    """A nursery under trio, an anyio task group otherwise (both raise exception groups)."""
    if on_trio():
        return trio.open_nursery()
    # anyio's start_soon is generic over its arguments' types, which the protocol leaves out
    return cast("AbstractAsyncContextManager[TaskGroup]", anyio.create_task_group())
