"""The core when Redis goes away and comes back, and when scripts vanish from its cache."""

from __future__ import annotations

import pytest
import trio

from schedd import errors
from schedd.core import DoneDelivery, Queries
from schedd.devtools.redis_process import REDIS_SERVER, RedisServer
from schedd.store import open_store
from schedd.store.base import Store
from tests.core.helpers import make_core, spec


@pytest.mark.parametrize("flush", ["SCRIPT", "FUNCTION"])
async def test_scripts_reload_after_a_flush(store: Store, flush: str) -> None:
    core, rec = await make_core(store)
    await core.register_node(node_id="n1", capacity=1, pools=["p"])
    await store.execute(flush, "FLUSH")
    sub = await core.submit(spec("p"))
    await core.result(sub.job_id, node_id="n1", attempt=1, ok=True)
    assert rec.of(DoneDelivery)[0].state == "done"
    # the library is back (FUNCTION FLUSH removed it; SCRIPT FLUSH never touched it)
    assert await store.execute("FUNCTION", "LIST", "LIBRARYNAME", core.scripts.library_name)


@pytest.mark.redis_server
@pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed")
async def test_redis_down_fails_fast_then_recovers() -> None:
    with RedisServer() as server:
        async with open_store(server.url, command_timeout=2.0) as store:
            core, _ = await make_core(store)
            await core.register_node(node_id="n1", capacity=1, pools=["p"])
            server.stop()
            with trio.fail_after(2):
                with pytest.raises(errors.StoreUnavailable):
                    await core.submit(spec("p"))
                # while it is down, every call fails at once instead of hanging
                with pytest.raises(errors.StoreUnavailable):
                    await Queries(store, core.keys).counts()
            server.start()  # a fresh, empty server: the scripts must be loaded again
            with trio.fail_after(10):
                while True:
                    try:
                        reg = await core.register_node(node_id="n1", capacity=1, pools=["p"])
                        break
                    except errors.StoreUnavailable:
                        await trio.sleep(0.05)
            assert reg.epoch == 1
            sub = await core.submit(spec("p"))
            assert sub.state == "assigned"


@pytest.mark.redis_server
@pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed")
async def test_open_fails_fast_when_redis_is_absent() -> None:
    server = RedisServer()  # never started: nothing listens on its port
    with trio.fail_after(6), pytest.raises(errors.StoreUnavailable, match=str(server.port)):
        async with open_store(server.url, connect_timeout=1.0):
            pass
