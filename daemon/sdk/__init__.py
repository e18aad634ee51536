"""Python libraries for nodes and clients of schedd, over any transport URL.

``Node`` registers, heartbeats, runs a handler per assigned job and reconnects with the same
node id (running jobs survive); ``Client`` submits, awaits results, streams progress, cancels
and follows jobs across reconnects. URLs: ``ws://``, ``wss://``, ``tcp://``, ``tls://``.
"""

from __future__ import annotations

from schedd.sdk.client import E_CLIENT_CLOSED, Client, JobHandle, JobLost, RequestFailed
from schedd.sdk.connect import ConnectFailed, open_channel
from schedd.sdk.node import E_NODE_EXCEPTION, JobContext, JobError, Node

__all__ = [
    "E_CLIENT_CLOSED",
    "E_NODE_EXCEPTION",
    "Client",
    "ConnectFailed",
    "JobContext",
    "JobError",
    "JobHandle",
    "JobLost",
    "Node",
    "RequestFailed",
    "open_channel",
]
