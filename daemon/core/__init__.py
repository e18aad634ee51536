"""Nodes, pools and jobs over Redis scripts; heartbeat batching, reaper, inbox, queries."""

from __future__ import annotations

from schedd.core.browse import DEFAULT_JOB_PAGE, JobFilter, parse_time_bound
from schedd.core.engine import Core, new_id
from schedd.core.heartbeats import HeartbeatBatcher
from schedd.core.inbox import serve_inbox
from schedd.core.model import (
    AssignDelivery,
    CancelJob,
    CoreSettings,
    Delivery,
    Detach,
    DoneDelivery,
    DrainNode,
    Event,
    Followed,
    JobSpec,
    JobStateChanged,
    Limits,
    NodeWentOffline,
    ProgressDelivery,
    Registration,
    SessionFollowed,
    SkippedDelivery,
    StageDoneDelivery,
    Submitted,
)
from schedd.core.queries import (
    ClientInfo,
    FinishedJob,
    JobInfo,
    JobPage,
    JobSummary,
    NodeInfo,
    PoolInfo,
    Queries,
    UsageInfo,
)
from schedd.core.reaper import serve_reaper
from schedd.protocol.messages import JOB_STATES, TERMINAL_STATES

__all__ = [
    "DEFAULT_JOB_PAGE",
    "JOB_STATES",
    "TERMINAL_STATES",
    "AssignDelivery",
    "CancelJob",
    "ClientInfo",
    "Core",
    "CoreSettings",
    "Delivery",
    "Detach",
    "DoneDelivery",
    "DrainNode",
    "Event",
    "FinishedJob",
    "Followed",
    "HeartbeatBatcher",
    "JobFilter",
    "JobInfo",
    "JobPage",
    "JobSpec",
    "JobStateChanged",
    "JobSummary",
    "Limits",
    "NodeInfo",
    "NodeWentOffline",
    "PoolInfo",
    "ProgressDelivery",
    "Queries",
    "Registration",
    "SessionFollowed",
    "SkippedDelivery",
    "StageDoneDelivery",
    "Submitted",
    "UsageInfo",
    "new_id",
    "parse_time_bound",
    "serve_inbox",
    "serve_reaper",
]
