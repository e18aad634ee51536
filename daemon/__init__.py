"""schedd: a scheduling daemon for fleets of worker nodes, with all shared state in Redis.

This module is the public API that plugins build on (``schedd.__all__``, pinned by a test):
the hook marker, the connection interface transports implement, the core's value types and
query views, and the exception tree. Everything else is internal and may change.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _package_version

from schedd.core import (
    JOB_STATES,
    TERMINAL_STATES,
    CoreSettings,
    JobInfo,
    JobSpec,
    NodeInfo,
    PoolInfo,
    Queries,
)
from schedd.errors import (
    ConfigError,
    ProtocolError,
    SchedError,
    ScriptError,
    StoreError,
    StoreUnavailable,
)
from schedd.markers import hookimpl
from schedd.transport.channel import Channel, ChannelClosed

try:
    __version__ = _package_version("schedd")
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "JOB_STATES",
    "TERMINAL_STATES",
    "Channel",
    "ChannelClosed",
    "ConfigError",
    "CoreSettings",
    "JobInfo",
    "JobSpec",
    "NodeInfo",
    "PoolInfo",
    "ProtocolError",
    "Queries",
    "SchedError",
    "ScriptError",
    "StoreError",
    "StoreUnavailable",
    "__version__",
    "hookimpl",
]
