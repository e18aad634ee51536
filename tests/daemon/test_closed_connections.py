"""What a closed connection leaves behind in the daemon: nothing.

Connections open and close over the real transports (a daemon in process, a real
redis-server): each registers a node under a new id, and runs a job, holds one when it goes, or
is replaced by a second connection of its node. Afterwards the daemon's per-connection tables
are empty, and none of the connections' objects is left for the cycle collector: the daemon
freezes long-lived objects out of the collector's passes (schedd.runtime), so a connection
whose objects form a reference cycle when it ends stays in memory until a full pass, which a
fleet that keeps reconnecting may never give it.
"""

from __future__ import annotations

import gc
import os
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest
import trio

import schedd
from schedd import protocol as p
from schedd.devtools.redis_process import RedisServer
from schedd.protocol import PROTOCOL_VERSION
from schedd.sdk.connect import open_channel
from schedd.transport.channel import Channel
from tests.daemon.harness import running_daemon
from tests.polling import until

#: connections per mode (each one a new node id)
CONNECTIONS = 12
_PACKAGE = os.path.dirname(schedd.__file__)


@contextmanager
def cycle_garbage() -> Iterator[list[Any]]:
    """Collect first, then leave the collector off; at the end, every object a collection
    finds unreachable is appended to the yielded list (instead of being freed)."""
    gc.collect()
    gc.disable()
    found: list[Any] = []
    try:
        yield found
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
    finally:
        gc.set_debug(0)
        gc.enable()
        found.extend(gc.garbage)
        gc.garbage.clear()


def schedd_objects(garbage: list[Any]) -> Counter[str]:
    """The objects of schedd's own classes among ``garbage``, and frames and coroutines of its
    code, by kind."""
    kinds: Counter[str] = Counter()
    for obj in garbage:
        kind = type(obj)
        code = getattr(obj, "f_code", None) or getattr(obj, "cr_code", None)
        if kind.__module__.startswith("schedd"):
            kinds[f"{kind.__module__}.{kind.__qualname__}"] += 1
        elif code is not None and code.co_filename.startswith(_PACKAGE):
            kinds[f"{kind.__name__} {code.co_name}"] += 1
    return kinds


async def send(channel: Channel, message: dict[str, Any]) -> None:
    await channel.send(orjson.dumps(message))


async def receive(channel: Channel, kind: str) -> dict[str, Any]:
    """The next message of ``kind`` (others before it are skipped)."""
    while True:
        message: dict[str, Any] = orjson.loads(await channel.receive())
        if message["type"] == kind:
            return message


async def register(url: str, node_id: str, pool: str) -> Any:
    """A node connection (an async context manager) registered as ``node_id`` in ``pool``."""
    cm = open_channel(url, connect_timeout=5)
    channel = await cm.__aenter__()
    await send(channel, {"type": "hello", "role": "node", "version": PROTOCOL_VERSION})
    await receive(channel, "welcome")
    await send(channel, {"type": "register", "node_id": node_id, "capacity": 1,
                         "pools": [pool], "ref": "r"})
    await receive(channel, "registered")
    await send(channel, {"type": "heartbeat", "inflight": 0, "running": [], "load": 0.0})
    return cm, channel


async def one_connection(url: str, client: Channel, mode: str, i: int) -> None:
    node_id, pool, job_id = f"{mode}-{i}", f"p-{mode}-{i}", f"j-{mode}-{i}"
    cm, node = await register(url, node_id, pool)
    try:
        if mode == "replaced":  # the node connects again: the daemon closes the first connection
            cm2, _ = await register(url, node_id, pool)
            await cm2.__aexit__(None, None, None)
            return
        await send(client, {"type": "submit", "job_id": job_id, "pools": [pool], "payload": i,
                            "max_attempts": 1})
        assign = await receive(node, "assign")
        attempt = assign["attempt"]
        if mode == "job":
            await send(node, {"type": "accept", "job_id": job_id, "attempt": attempt})
            await send(node, {"type": "result", "job_id": job_id, "attempt": attempt,
                              "ok": True, "output": i})
            await receive(client, "done")
        else:  # "held": a refused accept (a script error), then gone with the job
            await send(node, {"type": "accept", "job_id": job_id, "attempt": attempt + 1})
            await receive(node, "error")
            await send(node, {"type": "accept", "job_id": job_id, "attempt": attempt})
    finally:
        await cm.__aexit__(None, None, None)


@pytest.mark.parametrize("transport", ["transport_ws", "transport_tcp"])
async def test_closed_connections_leave_nothing_behind(
    transport: str, redis_server: RedisServer, tmp_path: Path
) -> None:
    env = {"SCHEDD_SCHEDD__NAMESPACE": f"closed-{transport}",  # the server is shared
"SCHEDD_PLUGINS__ENABLED": f'["{transport}"]',
           f"SCHEDD_PLUGINS__{transport.upper()}__LISTEN": "127.0.0.1:0",
           "SCHEDD_NODES__DISCONNECT_GRACE": "0.01"}
    with trio.fail_after(60):
        async with running_daemon(redis_server.url, tmp_path=tmp_path, **env) as d:
            app = d.app
            url = app.listeners[transport]
            with cycle_garbage() as garbage:
                async with open_channel(url, connect_timeout=5) as client:
                    await send(client, {"type": "hello", "role": "client",
                                        "version": PROTOCOL_VERSION})
                    await receive(client, "welcome")
                    for mode in ("job", "held", "replaced"):
                        for i in range(CONNECTIONS):
                            await one_connection(url, client, mode, i)
                    # the held jobs fail when their nodes go offline: every done arrives
                    for _ in range(CONNECTIONS):
                        await receive(client, "done")
                await until(lambda: not app.sessions and not app.nodes)
                await app.batcher.flush()
            # every table keyed by connection, node id or job is empty again
            assert app.routes.followers == {} and app.routes.candidates == {}
            assert app.batcher._pending == {} and app.batcher._seen == {}
            assert app.readiness.watched == 0
            # and nothing of the connections waits for the cycle collector
            assert schedd_objects(garbage) == Counter()


# -- routing entries of the in-memory harness's connections ----------------------------------


async def test_a_done_handed_over_directly_leaves_no_follower() -> None:
    """A duplicate submit of a finished job, and a follow of one, get its done at once: the
    connection does not stay the job's follower (with everything it holds) after it."""
    async with running_daemon() as d:
        node, _ = await d.node("p", node_id="n1")
        client = await d.connect("client")
        await client.send(p.Submit(job_id="j1", pools=["p"]))
        await client.expect(p.Accepted)
        await node.expect(p.Assign)
        await node.send(p.Accept(job_id="j1", attempt=1))
        await node.send(p.Result(job_id="j1", attempt=1, ok=True))
        await client.expect(p.Done)
        assert d.app.routes.followers == {} and d.app.routes.candidates == {}
        await client.send(p.Submit(job_id="j1", pools=["p"]))  # the same job again
        assert (await client.expect(p.Accepted)).duplicate
        await client.expect(p.Done)
        assert d.app.routes.followers == {} and d.app.routes.candidates == {}
        await client.send(p.Follow(job_id="j1"))
        await client.expect(p.Job)
        await client.expect(p.Done)
        assert d.app.routes.followers == {} and d.app.routes.candidates == {}


async def test_a_connection_refused_as_stale_is_no_longer_the_nodes_route() -> None:
    """A stale registration's connection closes without taking the node offline; the node may
    never come back (a fleet with new ids), so its entry must not stay."""
    async with running_daemon() as d:
        node, reg = await d.node("p", node_id="n1")
        await d.app.core.register_node(node_id="n1", capacity=1, pools=["p"])  # elsewhere
        d.app.batcher.beat("n1", reg.epoch)
        await d.app.batcher.flush()
        assert (await node.expect(p.Error)).code == "E_STALE_EPOCH"
        assert await node.closed()
        await until(lambda: not d.app.sessions)
        assert d.app.nodes == {}
