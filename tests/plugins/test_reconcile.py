"""The reconcile plugin: a daemon whose store lost or garbled state puts it right while running.

Daemons run in-process (tests/daemon/harness.py) against the embedded store and a real
redis-server; nodes are raw protocol peers that heartbeat on their own, or the SDK's ``Node``
over the TCP transport.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
import trio

from schedd import protocol as p
from schedd.config import load_config
from schedd.core import Core
from schedd.errors import ConfigError, StoreUnavailable
from schedd.plugin_manager import PluginManager
from schedd.plugins import reconcile
from schedd.plugins.reconcile import ReconcileStats
from schedd.sdk.node import JobContext, Node
from schedd.transport.channel import ChannelClosed
from tests.daemon.harness import Daemon, Peer, running_daemon
from tests.polling import until

PERIOD = 0.5
BEAT = 0.05  # raw nodes' heartbeat interval
ENV = {
    "SCHEDD_PLUGINS__ENABLED": '["reconcile"]',
    "SCHEDD_PLUGINS__RECONCILE__PERIOD": str(PERIOD),
}

M = TypeVar("M", bound=p.Message)


class RawNode:
    """A node peer speaking raw protocol: heartbeats on its own, keeps what the daemon sends.

    ``running`` is what its heartbeats list; with ``auto_accept`` it accepts every assign and
    (when ``lists_jobs``) lists it; a cancel removes the job from ``running``.
    """

    def __init__(self, peer: Peer, registered: p.Registered, *, lists_jobs: bool = True) -> None:
        self.peer = peer
        self.node_id = registered.node_id
        self.epoch = registered.epoch
        self.running: set[str] = set()
        self.lists_jobs = lists_jobs
        self.received: list[p.Message] = []
        self.closed = False

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._beat)
            task_status.started()
            await self._read()
            nursery.cancel_scope.cancel()

    async def _read(self) -> None:
        try:
            while True:
                message = p.decode(await self.peer.channel.receive())
                self.received.append(message)
                if isinstance(message, p.Registered) and message.ref is None:
                    self.epoch = message.epoch
                elif isinstance(message, p.Assign):
                    await self.peer.send(p.Accept(job_id=message.job_id, attempt=message.attempt))
                    if self.lists_jobs:
                        self.running.add(message.job_id)
                elif isinstance(message, p.Cancel):
                    self.running.discard(message.job_id)
        except ChannelClosed:
            self.closed = True

    async def _beat(self) -> None:
        while True:
            try:
                await self.peer.send(p.Heartbeat(inflight=len(self.running),
                                                 running=sorted(self.running)))
            except ChannelClosed:
                return
            await trio.sleep(BEAT)

    async def wait_for(self, kind: type[M], check: Callable[[M], bool] = lambda m: True) -> M:
        while True:
            for message in self.received:
                if isinstance(message, kind) and check(message):
                    return message
            await trio.sleep(0.01)

    def got(self, kind: type[p.Message]) -> list[Any]:
        return [m for m in self.received if isinstance(m, kind)]


async def raw_node(d: Daemon, node_id: str, *pools: str, capacity: int = 1,
                   lists_jobs: bool = True) -> RawNode:
    peer, registered = await d.node(*pools, capacity=capacity, node_id=node_id)
    node = RawNode(peer, registered, lists_jobs=lists_jobs)
    await d.nursery.start(node.serve)
    return node


def stats_of(d: Daemon) -> ReconcileStats:
    found = reconcile.stats(d.daemon)
    assert found is not None
    return found


async def node_field(d: Daemon, node_id: str, field: str) -> str | None:
    value = await d.app.store.execute("HGET", d.app.core.keys.node(node_id), field)
    return value.decode() if isinstance(value, bytes) else value


async def submit(d: Daemon, client: Peer, job_id: str, pool: str) -> None:
    await client.send(p.Submit(job_id=job_id, pools=[pool], ref=job_id))
    await client.expect(p.Accepted)


# -- the store is flushed under a running daemon ---------------------------------------------


async def test_flushall_nodes_come_back_in_place_and_jobs_dispatch(
    store_url: str, tmp_path: Path
) -> None:
    with trio.fail_after(20):
        async with running_daemon(store_url, tmp_path=tmp_path, **ENV) as d:
            n1 = await raw_node(d, "n1", "p")
            n2 = await raw_node(d, "n2", "p")
            client = await d.connect("client")
            await submit(d, client, "before", "p")
            await until(lambda: n1.got(p.Assign) or n2.got(p.Assign))
            holder = n1 if n1.got(p.Assign) else n2
            while (job := await d.app.queries.job("before")) is None or job.state != "running":
                await trio.sleep(0.01)
            old_epochs = {"n1": n1.epoch, "n2": n2.epoch}

            await d.app.store.execute("FLUSHALL")
            flushed = trio.current_time()
            # both nodes learn a new epoch on their own connection, within two periods
            with trio.fail_after(2 * PERIOD):
                await n1.wait_for(p.Registered, lambda m: m.ref is None)
                await n2.wait_for(p.Registered, lambda m: m.ref is None)
            assert trio.current_time() - flushed < 2 * PERIOD
            assert not n1.closed and not n2.closed
            assert not [m for m in n1.received + n2.received if isinstance(m, p.Error)]
            # the counter was raised: no epoch handed out before the flush is handed out again
            assert n1.epoch > max(old_epochs.values()) and n2.epoch > max(old_epochs.values())
            pools = {pool.pool: pool.members for pool in await d.app.queries.pools()}
            assert set(pools["p"]) == {"n1", "n2"}
            assert {n.node_id for n in await d.app.queries.nodes() if n.state == "online"} == {
                "n1", "n2"}

            # new jobs dispatch to the nodes again (the one lost with the flush is cancelled)
            await submit(d, client, "after", "p")
            await until(lambda: any(m.job_id == "after"
                                    for m in n1.got(p.Assign) + n2.got(p.Assign)))
            stats = stats_of(d)
            assert stats.corrections["nodes_reregistered"] == 2
            assert stats.corrections["connections_closed"] == 0
            await holder.wait_for(p.Cancel, lambda m: m.job_id == "before")
            assert stats.corrections["jobs_cancelled"] >= 1
            assert stats.failed_passes == 0


async def test_flushall_with_sdk_nodes_over_tcp(store_url: str, tmp_path: Path) -> None:
    env = {**ENV, "SCHEDD_PLUGINS__ENABLED": '["transport_tcp", "reconcile"]',
           "SCHEDD_PLUGINS__TRANSPORT_TCP__LISTEN": "127.0.0.1:0"}
    started: dict[str, trio.Event] = {}
    release = trio.Event()
    contexts: list[JobContext] = []

    async def handler(ctx: JobContext) -> Any:
        contexts.append(ctx)
        started.setdefault(ctx.job_id, trio.Event()).set()
        if ctx.payload == "hold":
            await release.wait()
        return {"node": ctx.job_id}

    with trio.fail_after(20):
        async with running_daemon(store_url, tmp_path=tmp_path, **env) as d:
            url = d.app.listeners["transport_tcp"]
            node = Node(url, handler, pools=["p"], capacity=2, node_id="sdk",
                        heartbeat_interval=0.05)
            await d.nursery.start(node.run)
            first_epoch = node.epoch
            assert first_epoch is not None
            client = await d.connect("client")
            await client.send(p.Submit(job_id="held", pools=["p"], payload="hold", ref="h"))
            await client.expect(p.Accepted)
            await until(lambda: "held" in started)

            await d.app.store.execute("FLUSHALL")
            with trio.fail_after(2 * PERIOD):
                await until(lambda: node.epoch != first_epoch)
            assert node.epoch is not None and node.epoch > first_epoch
            # the job the store forgot is cancelled on the node
            await until(lambda: contexts[0].cancelled)
            # and new work runs on the same connection
            await client.send(p.Submit(job_id="new", pools=["p"], payload="go", ref="n"))
            await client.expect(p.Accepted)
            done = await client.expect(p.Done)
            assert (done.job_id, done.state, done.node) == ("new", "done", "sdk")
            assert stats_of(d).corrections["nodes_reregistered"] == 1


# -- a job the node does not run goes back ---------------------------------------------------


async def test_job_missing_from_heartbeats_is_requeued_elsewhere(
    store_url: str, tmp_path: Path
) -> None:
    with trio.fail_after(20):
        async with running_daemon(store_url, tmp_path=tmp_path, **ENV) as d:
            forgetful = await raw_node(d, "forgetful", "p", lists_jobs=False)
            client = await d.connect("client")
            await submit(d, client, "j", "p")
            first = await forgetful.wait_for(p.Assign)
            assert (first.job_id, first.attempt) == ("j", 1)
            other = await raw_node(d, "other", "p")
            # two passes: one sees the job on the node, the next sees two heartbeats without it
            second = await other.wait_for(p.Assign, lambda m: m.job_id == "j")
            assert second.attempt == 2
            cancel = await forgetful.wait_for(p.Cancel, lambda m: m.job_id == "j")
            assert cancel.attempt == 1
            job = await d.app.queries.job("j")
            assert job is not None and (job.node, job.attempt) == ("other", 2)
            assert "forgetful" in job.tried
            assert await node_field(d, "forgetful", "used") == "0"
            assert stats_of(d).corrections["jobs_requeued"] == 1


async def test_job_missing_from_the_nodes_job_set_is_requeued_elsewhere(
    store_url: str, tmp_path: Path
) -> None:
    with trio.fail_after(20):
        async with running_daemon(store_url, tmp_path=tmp_path, **ENV) as d:
            n1 = await raw_node(d, "n1", "p")
            client = await d.connect("client")
            await submit(d, client, "j", "p")
            await n1.wait_for(p.Assign)
            await until(lambda: "j" in n1.running)
            # the store loses the node's entry for the job (its slot count stays behind)
            await d.app.store.execute("SREM", d.app.core.keys.node_jobs("n1"), "j")
            n2 = await raw_node(d, "n2", "p")
            second = await n2.wait_for(p.Assign, lambda m: m.job_id == "j")
            assert second.attempt == 2
            assert (await n1.wait_for(p.Cancel, lambda m: m.job_id == "j")).attempt == 1
            assert await node_field(d, "n1", "used") == "0"  # the slot count follows the set
            assert stats_of(d).corrections["jobs_requeued"] == 1


# -- a job the node runs that the store does not give it is cancelled -------------------------


async def test_job_unknown_to_the_store_is_cancelled_on_the_node(
    store_url: str, tmp_path: Path
) -> None:
    with trio.fail_after(20):
        async with running_daemon(store_url, tmp_path=tmp_path, **ENV) as d:
            n1 = await raw_node(d, "n1", "p", capacity=2)
            n1.running.add("ghost")
            cancel = await n1.wait_for(p.Cancel, lambda m: m.job_id == "ghost")
            assert cancel.attempt is None  # the heartbeat names no attempt: stop any
            # a job of another node: cancelled too
            n2 = await raw_node(d, "n2", "q")
            client = await d.connect("client")
            await submit(d, client, "theirs", "q")
            await n2.wait_for(p.Assign)
            n1.running.add("theirs")
            await n1.wait_for(p.Cancel, lambda m: m.job_id == "theirs")
            assert "theirs" in n2.running and not n2.got(p.Cancel)
            job = await d.app.queries.job("theirs")
            assert job is not None and (job.state, job.node) == ("running", "n2")
            assert stats_of(d).corrections["jobs_cancelled"] >= 2


# -- online in the store, no connection here ---------------------------------------------------


async def test_owned_node_without_connection_goes_offline(
    store_url: str, tmp_path: Path
) -> None:
    with trio.fail_after(20):
        async with running_daemon(store_url, tmp_path=tmp_path, **ENV) as d:
            # a registration under this instance that no connection here speaks for (what a
            # restore or a lost offline leaves behind), holding a job
            await d.app.core.register_node(node_id="ghost", capacity=1, pools=["g"])
            client = await d.connect("client")
            await submit(d, client, "j", "g")
            assert (await d.app.queries.job("j")).node == "ghost"  # type: ignore[union-attr]
            start = trio.current_time()
            await until(lambda: stats_of(d).corrections["nodes_offline"] == 1)
            # well before the reaper would (liveness is 3 s)
            assert trio.current_time() - start < 3.0
            assert await node_field(d, "ghost", "state") == "offline"
            assert "reconciled" in (await node_field(d, "ghost", "reason") or "")
            job = await d.app.queries.job("j")
            assert job is not None and (job.state, job.attempt) == ("queued", 1)
            assert await d.app.core.owned_nodes() == set()


async def test_node_of_another_live_instance_is_left_alone(
    store_url: str, tmp_path: Path
) -> None:
    with trio.fail_after(20):
        async with running_daemon(store_url, tmp_path=tmp_path, **ENV) as d:
            other = Core(d.app.store, attrs_evolve_instance(d, "other"))
            await other.register_node(node_id="theirs", capacity=1, pools=["p"])
            await until(lambda: stats_of(d).passes >= 3)
            assert await node_field(d, "theirs", "state") == "online"
            assert stats_of(d).corrections["nodes_offline"] == 0


def attrs_evolve_instance(d: Daemon, instance: str) -> Any:
    import attrs

    return attrs.evolve(d.app.core.settings, instance=instance)


# -- stale heartbeats: register again in place, or close when the node moved on --------------


async def test_stale_heartbeat_registers_again_in_place(store_url: str, tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with running_daemon(store_url, tmp_path=tmp_path, **ENV) as d:
            n1 = await raw_node(d, "n1", "p")
            old = n1.epoch
            # taken offline while it kept its connection (a failover's replica, say)
            await d.app.core.node_offline("n1", epoch=old, reason="liveness expired")
            again = await n1.wait_for(p.Registered, lambda m: m.ref is None)
            assert again.epoch > old and again.pools == ["p"] and not n1.closed
            assert d.app.nodes["n1"].epoch == again.epoch
            assert await node_field(d, "n1", "state") == "online"
            assert await d.app.core.owned_nodes() == {"n1"}


async def test_a_node_id_another_principal_holds_now_is_not_registered_again(
    store_url: str, tmp_path: Path
) -> None:
    with trio.fail_after(20):
        async with running_daemon(store_url, tmp_path=tmp_path, **ENV) as d:
            n1 = await raw_node(d, "n1", "p")
            await d.app.core.node_offline("n1", epoch=n1.epoch, reason="liveness expired")
            # the record now names another principal (it registered the id meanwhile)
            key = d.app.core.keys.node("n1")
            await d.app.store.execute("HSET", key, "principal", "token:bbbbbbbb")
            error = await n1.wait_for(p.Error)
            assert error.code == "E_STALE_EPOCH" and "another principal" in error.message
            await until(lambda: n1.closed)
            assert not n1.got(p.Registered)
            assert "n1" not in d.app.nodes
            assert await node_field(d, "n1", "principal") == "token:bbbbbbbb"
            assert stats_of(d).corrections["connections_closed"] == 1


async def test_stale_heartbeat_of_a_node_registered_elsewhere_closes_here(
    store_url: str, tmp_path: Path
) -> None:
    with trio.fail_after(20):
        async with running_daemon(store_url, tmp_path=tmp_path, **ENV) as d:
            n1 = await raw_node(d, "n1", "p")
            other = Core(d.app.store, attrs_evolve_instance(d, "other"))
            await other.register_node(node_id="n1", capacity=1, pools=["p"])
            error = await n1.wait_for(p.Error)
            assert error.code == "E_STALE_EPOCH"
            await until(lambda: n1.closed)
            assert not n1.got(p.Registered)
            assert await node_field(d, "n1", "owner") == "other"
            assert await d.app.core.owned_nodes() == set()
            assert stats_of(d).corrections["connections_closed"] == 1


async def test_draining_node_stays_draining_after_a_flush(store_url: str, tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with running_daemon(store_url, tmp_path=tmp_path, **ENV) as d:
            n1 = await raw_node(d, "n1", "p")
            await n1.peer.send(p.Drain(reason="upgrade", ref="d"))
            await n1.wait_for(p.Drain)
            await d.app.store.execute("FLUSHALL")
            await n1.wait_for(p.Registered, lambda m: m.ref is None)
            await until(lambda: stats_of(d).passes >= 1)
            with trio.fail_after(2):
                while await node_field(d, "n1", "state") != "draining":
                    await trio.sleep(0.01)


async def test_without_the_plugin_a_stale_connection_is_closed(tmp_path: Path) -> None:
    with trio.fail_after(10):
        async with running_daemon(tmp_path=tmp_path) as d:
            n1 = await raw_node(d, "n1", "p")
            await d.app.store.execute("FLUSHALL")
            assert (await n1.wait_for(p.Error)).code == "E_STALE_EPOCH"
            await until(lambda: n1.closed)
            assert reconcile.stats(d.daemon) is None


# -- robustness and settings ------------------------------------------------------------------


async def test_store_errors_are_logged_and_the_next_period_retries(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with trio.fail_after(10):
        async with running_daemon(tmp_path=tmp_path, **ENV) as d:
            calls = 0
            real = d.app.core.owned_nodes

            async def flaky() -> set[str]:
                nonlocal calls
                calls += 1
                if calls == 1:
                    raise StoreUnavailable("redis went away")
                return await real()

            d.app.core.owned_nodes = flaky  # type: ignore[method-assign]
            await raw_node(d, "n1", "p")
            await until(lambda: stats_of(d).passes >= 1)
            assert stats_of(d).failed_passes == 1
            assert "reconcile pass failed, retrying next period" in caplog.text


async def test_counts_are_exported_on_the_ui_metrics(tmp_path: Path) -> None:
    ui_metrics = pytest.importorskip("schedd.plugins.ui.metrics")
    with trio.fail_after(10):
        async with running_daemon(tmp_path=tmp_path, **ENV) as d:
            n1 = await raw_node(d, "n1", "p")
            await d.app.store.execute("FLUSHALL")
            await n1.wait_for(p.Registered, lambda m: m.ref is None)
            await until(lambda: stats_of(d).passes >= 1)
            collectors = ui_metrics.extra_collectors(d.daemon)
            assert len(collectors) == 1
            samples = {
                (sample.name, tuple(sorted(sample.labels.items()))): sample.value
                for family in collectors[0].collect()
                for sample in family.samples
                if sample.name.endswith("_total")
            }
            assert samples[("schedd_reconcile_corrections_total",
                            (("kind", "nodes_reregistered"),))] == 1
            assert samples[("schedd_reconcile_corrections_total",
                            (("kind", "jobs_cancelled"),))] == 0
            assert samples[("schedd_reconcile_passes_total", (("outcome", "failed"),))] == 0
            assert samples[("schedd_reconcile_passes_total", (("outcome", "completed"),))] >= 1
            assert {kind for (name, ((_, kind),)) in samples
                    if name == "schedd_reconcile_corrections_total"} == set(reconcile.CORRECTIONS)


def test_period_must_be_positive(tmp_path: Path) -> None:
    for bad in ("0", "-1", "nan", "inf"):
        path = tmp_path / "sched.toml"
        path.write_text(
            f'[plugins]\nenabled = ["reconcile"]\n[plugins.reconcile]\nperiod = {bad}\n'
        )
        with pytest.raises(ConfigError) as caught:
            PluginManager.load(load_config(path, env={}))
        assert caught.value.errors == [
            f"$.plugins.reconcile.period: expected a number of seconds > 0, got {float(bad)!r}"
        ]
    path = tmp_path / "sched.toml"
    path.write_text('[plugins]\nenabled = ["reconcile"]\n')
    settings = PluginManager.load(load_config(path, env={})).plugin_config("reconcile")
    assert settings == reconcile.ReconcileSettings(period=5.0)
