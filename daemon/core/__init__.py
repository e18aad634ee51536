"""Nodes, pools and jobs over Redis scripts; heartbeat batching, reaper, inbox, queries."""

from __future__ import annotations

from schedd.core.engine import Core, new_id
from schedd.core.heartbeats import HeartbeatBatcher
from schedd.core.inbox import serve_inbox
from schedd.core.model import (
    JOB_STATES,
    TERMINAL_STATES,
    Assign,
    CancelJob,
    CoreSettings,
    Delivery,
    Detach,
    Done,
    DrainNode,
    Event,
    Followed,
    JobSpec,
    JobStateChanged,
    NodeWentOffline,
    Progress,
    Registration,
    Submitted,
)
from schedd.core.queries import FinishedJob, JobInfo, NodeInfo, PoolInfo, Queries
from schedd.core.reaper import serve_reaper

__all__ = [
    "JOB_STATES",
    "TERMINAL_STATES",
    "Assign",
    "CancelJob",
    "Core",
    "CoreSettings",
    "Delivery",
    "Detach",
    "Done",
    "DrainNode",
    "Event",
    "FinishedJob",
    "Followed",
    "HeartbeatBatcher",
    "JobInfo",
    "JobSpec",
    "JobStateChanged",
    "NodeInfo",
    "NodeWentOffline",
    "PoolInfo",
    "Progress",
    "Queries",
    "Registration",
    "Submitted",
    "new_id",
    "serve_inbox",
    "serve_reaper",
]
