"""Python libraries for nodes and clients of schedd, over any transport URL.

The reference, with every option, error and limit: docs/sdk.md.

``Node`` registers, heartbeats, runs a handler per assigned job and reconnects with the same
node id (running jobs survive); ``Client`` submits, awaits results, streams progress, cancels
and follows jobs across reconnects; ``BlockingClient`` does the same for code with no event loop
(one background thread and connection, shared by any number of threads). URLs: ``ws://``,
``wss://``, ``tcp://``, ``tls://``.

Event loops: the same ``Client`` and ``Node`` run under **trio** and under **asyncio**
(``asyncio.run``, uvloop, a FastAPI or other ASGI app), with the same reconnect, failover,
resume and idempotency rules. Nothing is chosen by hand: each connection uses the event loop
it is opened in (``sniffio``). What differs:

- The channels. Under trio they are :mod:`schedd.transport`'s, the daemon's own, with their
  fast paths; under asyncio those of :mod:`schedd.sdk.aio_channel`, on anyio byte streams.
  Messages, limits and errors are the same (:class:`ConnectFailed`,
  :class:`~schedd.transport.channel.ChannelClosed`, :class:`~schedd.errors.ProtocolError`).
- Cancellation and timeouts are the loop's. Bound a wait with ``anyio.fail_after`` (raises
  :class:`TimeoutError` on both loops), ``asyncio.timeout`` or ``trio.fail_after`` (raises
  ``trio.TooSlowError``); the SDK itself raises no loop-specific timeout exception (a connect
  that takes too long is a :class:`ConnectFailed`).
- ``Node.run`` reports readiness through ``task_status``: ``await nursery.start(node.run)`` (trio)
  or ``await task_group.start(node.run)`` (anyio); under plain asyncio, run it as a task
  (``asyncio.create_task(node.run())``).
- Handlers run on the node's loop: a handler under asyncio may await anything asyncio can; one
  under trio anything trio can (anyio code runs under both).

A client or node belongs to the event loop (and thread) that opened it.
"""

from __future__ import annotations

from schedd.sdk.blocking import BlockingClient, BlockingJobHandle, BlockingOrderedSession
from schedd.sdk.client import E_CLIENT_CLOSED, Client, JobHandle, JobLost, RequestFailed
from schedd.sdk.connect import ConnectFailed, open_channel
from schedd.sdk.node import E_NODE_EXCEPTION, JobContext, JobError, JobResult, Node
from schedd.sdk.session import E_SKIPPED, OrderedSession

__all__ = [
    "E_CLIENT_CLOSED",
    "E_NODE_EXCEPTION",
    "E_SKIPPED",
    "BlockingClient",
    "BlockingJobHandle",
    "BlockingOrderedSession",
    "Client",
    "ConnectFailed",
    "JobContext",
    "JobError",
    "JobHandle",
    "JobLost",
    "JobResult",
    "Node",
    "OrderedSession",
    "RequestFailed",
    "open_channel",
]
