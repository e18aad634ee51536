"""The plugin markers: what a hook specification and a hook implementation are marked with.

Rules of this module: it imports nothing of schedd, so the hook specifications
(:mod:`schedd.hookspecs`), the public plugin API (:mod:`schedd.api`) and the core's own hook
implementations all take the markers from here without knowing one another.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeAlias

import pluggy

__all__ = ["PROJECT", "Service", "hookimpl", "hookspec"]

PROJECT = "schedd"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

#: ``async def serve(app, *, task_status=trio.TASK_STATUS_IGNORED) -> None``: started with
#: ``nursery.start(serve, app)``; calls ``task_status.started()`` once ready, then runs until
#: cancelled at shutdown.
Service: TypeAlias = Callable[..., Awaitable[None]]
