"""schedd: a scheduling daemon for fleets of worker nodes, with all shared state in Redis.

This module is the public API that plugins build on (``schedd.__all__``, pinned by a test):
the hook marker, the connection interface transports implement, the core's value types and
query views, and the exception tree. Everything else is internal and may change.
"""

from __future__ import annotations

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

__version__ = "0.1.0"

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
