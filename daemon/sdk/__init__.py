"""Python libraries for nodes and clients of schedd, over any transport URL.

``Node`` registers, heartbeats, runs a handler per assigned job and reconnects with the same
node id (running jobs survive); ``Client`` submits, awaits results, streams progress, cancels
and follows jobs across reconnects; ``BlockingClient`` does the same for code with no event loop
(one background thread and connection, shared by any number of threads). URLs: ``ws://``,
``wss://``, ``tcp://``, ``tls://``.
"""

from __future__ import annotations

from schedd.sdk.blocking import BlockingClient, BlockingJobHandle
from schedd.sdk.client import E_CLIENT_CLOSED, Client, JobHandle, JobLost, RequestFailed
from schedd.sdk.connect import ConnectFailed, open_channel
from schedd.sdk.node import E_NODE_EXCEPTION, JobContext, JobError, Node

__all__ = [
    "E_CLIENT_CLOSED",
    "E_NODE_EXCEPTION",
    "BlockingClient",
    "BlockingJobHandle",
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
