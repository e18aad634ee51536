"""End to end: the real daemon process from a temporary sched.toml, both transports, the SDKs,
a real redis-server or the embedded store."""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio

from schedd import protocol as p
from schedd.sdk import Client, JobContext, Node, open_channel
from tests.e2e_daemon import SCHEDD, DaemonProcess


@pytest.fixture
async def daemon(tmp_path: Path, store_url: str) -> AsyncIterator[DaemonProcess]:
    proc = DaemonProcess(tmp_path, store_url)
    try:
        yield await proc.start()
    finally:
        proc.stop()


def echo_node(url: str, node_id: str, pool: str, **kw: Any) -> Node:
    async def handler(ctx: JobContext) -> Any:
        await ctx.progress({"at": node_id})
        return {"echo": ctx.payload, "node": node_id}

    return Node(url, handler, pools=[pool], node_id=node_id, **kw)


async def test_jobs_flow_both_ways_over_both_transports(daemon: DaemonProcess) -> None:
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await nursery.start(echo_node(daemon.ws, "ws-node", "a").run)
            await nursery.start(echo_node(daemon.tcp, "tcp-node", "b").run)
            async with Client.connect(daemon.ws) as ws_client, \
                    Client.connect(daemon.tcp) as tcp_client:
                for client, name in ((ws_client, "ws"), (tcp_client, "tcp")):
                    for pool, node in (("a", "ws-node"), ("b", "tcp-node")):
                        handle = await client.submit({"from": name}, pools=[pool])
                        progress = handle.progress()
                        done = await handle.result()
                        assert done.ok and done.output == {"echo": {"from": name}, "node": node}
                        assert await progress.__anext__() == {"at": node}
                stats = await tcp_client.query("stats")
                assert stats["counts"]["done"] == 4
            nursery.cancel_scope.cancel()


async def test_node_killed_mid_job_is_reassigned_and_client_gets_one_done(
    daemon: DaemonProcess,
) -> None:
    started = trio.Event()

    async def stuck(ctx: JobContext) -> Any:
        started.set()
        await trio.sleep_forever()

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            doomed = trio.CancelScope()

            async def run_doomed(task_status: trio.TaskStatus[None]) -> None:
                with doomed:
                    await Node(daemon.tcp, stuck, pools=["p"], node_id="doomed").run(
                        task_status=task_status)

            await nursery.start(run_doomed)
            async with open_channel(daemon.ws) as raw:
                await raw.send(p.encode(p.Hello(role="client", version=1)))
                assert isinstance(p.decode(await raw.receive()), p.Welcome)
                await raw.send(p.encode(p.Submit(job_id="j", pools=["p"], payload=1)))
                assert isinstance(p.decode(await raw.receive()), p.Accepted)
                await started.wait()
                await nursery.start(echo_node(daemon.ws, "rescuer", "p").run)
                doomed.cancel()  # the connection drops mid-job
                messages = []
                with trio.move_on_after(3):  # long enough for any duplicate to show up
                    while True:
                        messages.append(p.decode(await raw.receive()))
                dones = [m for m in messages if isinstance(m, p.Done)]
                assert len(dones) == 1, messages
                assert (dones[0].node, dones[0].attempts, dones[0].output["node"]) == (
                    "rescuer", 2, "rescuer")
            nursery.cancel_scope.cancel()


@pytest.fixture
async def lenient_daemon(tmp_path: Path, store_url: str) -> AsyncIterator[DaemonProcess]:
    """A daemon that never backs off from an address whose handshakes fail (schedd.admission):
    for a test whose many bad handshakes come from loopback, as every other client does."""
    proc = DaemonProcess(tmp_path, store_url, extra="[limits]\nmax_failed_handshakes = 1000000\n")
    try:
        yield await proc.start()
    finally:
        proc.stop()


async def test_garbage_on_both_transports_gets_errors_and_daemon_keeps_serving(
    lenient_daemon: DaemonProcess,
) -> None:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    frames = st.one_of(
        st.binary(min_size=1, max_size=200),
        st.text(min_size=1, max_size=200).map(str.encode),
        st.dictionaries(st.text(max_size=10), st.integers() | st.text(max_size=10),
                        max_size=5).map(lambda d: json.dumps(d).encode()),
    )

    async def probe(url: str, garbage: list[bytes]) -> None:
        async with open_channel(url) as conn:
            for frame in garbage:
                if url.startswith("ws"):  # the SDK sends text messages: keep them UTF-8
                    frame = frame.decode("utf-8", "replace").encode()
                await conn.send(frame)
            try:
                first = p.decode(await conn.receive())
                assert isinstance(first, p.Error), first
            except Exception as exc:  # a close is an allowed answer too
                assert type(exc).__name__ in ("ChannelClosed", "ConnectFailed"), exc
        async with Client.connect(url) as client:  # and the daemon still serves others
            await client.query("stats")

    @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
    @given(garbage=st.lists(frames, min_size=1, max_size=5))
    def check(garbage: list[bytes]) -> None:
        for url in (lenient_daemon.ws, lenient_daemon.tcp):
            trio.run(probe, url, garbage)

    await trio.to_thread.run_sync(check)
    assert lenient_daemon.proc is not None and lenient_daemon.proc.poll() is None


async def test_tcp_frame_over_limit_is_refused_with_error(tmp_path: Path) -> None:
    proc = DaemonProcess(tmp_path, "memory://", extra="[limits]\nmax_frame = 2048\n")
    try:
        await proc.start()
        async with open_channel(proc.tcp) as conn:
            await conn.send(b"x" * 5000)
            error = p.decode(await conn.receive())
            assert isinstance(error, p.Error) and error.code == "E_TOO_LARGE"
    finally:
        proc.stop()


async def test_example_plugin_is_loaded_from_its_entry_point(tmp_path: Path) -> None:
    journal = tmp_path / "journal.jsonl"
    proc = DaemonProcess(tmp_path, "memory://", plugins=("transport_ws", "example"),
                         extra=f'[plugins.example]\nteam = "vision"\njournal = "{journal}"\n')
    try:
        await proc.start()
        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                node = echo_node(proc.ws, "g1", "gpu")
                await nursery.start(node.run)
                async with Client.connect(proc.ws) as client:
                    done = await (await client.submit("x", pools=["gpu"])).result()
                    assert done.ok
                    pools = await client.query("pools")
                assert [pool["pool"] for pool in pools["pools"]] == ["vision/gpu"]
                nursery.cancel_scope.cancel()
            while "job_state_changed" not in (journal.read_text() if journal.exists() else ""):
                await trio.sleep(0.05)
        events = [json.loads(line) for line in journal.read_text().splitlines()]
        kinds = [e["event"] for e in events]
        assert kinds[0] == "service_started"
        assert {"event": "node_registered", "node_id": "g1", "pools": ["vision/gpu"]} in events
        assert {"event": "job_state_changed", "job_id": done.job_id, "state": "done"} in events
    finally:
        proc.stop()


async def test_non_loopback_listener_without_tokens_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "open.toml"
    config.write_text('[plugins]\nenabled = ["transport_tcp"]\n'
                      '[plugins.transport_tcp]\nlisten = "0.0.0.0:0"\n')
    result = await trio.run_process([SCHEDD, "run", "-c", str(config)], capture_stdout=True,
                                    capture_stderr=True, check=False)
    assert result.returncode == 2
    err = (result.stdout + result.stderr).decode()
    assert "0.0.0.0 is not a loopback address" in err and "node_tokens" in err


@pytest.mark.redis_server
async def test_sigterm_drains_under_systemd_and_loses_no_job(
    tmp_path: Path, redis_server: Any
) -> None:
    from tests.conftest import _flush

    _flush(redis_server.port)
    first = DaemonProcess(tmp_path, redis_server.url, extra="[drain]\ntimeout = 10\n")
    release = trio.Event()

    async def slow(ctx: JobContext) -> Any:
        await release.wait()
        return "finished during drain"

    try:
        await first.start()
        assert "READY=1" in "\n".join(first.notes)
        with trio.fail_after(40):
            async with trio.open_nursery() as nursery:
                node = Node(first.ws, slow, pools=["p"], node_id="worker", reconnect_delay=0.1)
                await nursery.start(node.run)
                async with Client.connect(first.ws, reconnect=False) as client:
                    handles = [await client.submit(i, pools=["p"], job_id=f"job{i}")
                               for i in range(3)]
                    while not node.running:
                        await trio.sleep(0.02)
                    first.signal(signal.SIGTERM)
                    await first.wait_for("STOPPING=1")
                    release.set()  # the running job finishes inside the drain
                    assert (await handles[0].result()).output == "finished during drain"
                assert await first.wait_exit() == 0
                nursery.cancel_scope.cancel()
        assert "handed 1 unfinished job(s) back" not in first.output()
        # the other two were queued: a second instance on the same Redis finishes them
        second = DaemonProcess(tmp_path, redis_server.url)
        try:
            await second.start()
            with trio.fail_after(30):
                async with trio.open_nursery() as nursery:
                    await nursery.start(echo_node(second.tcp, "other", "p").run)
                    async with Client.connect(second.tcp) as client:
                        for i in range(3):
                            done = await (await client.follow(f"job{i}")).result()
                            assert done.ok, done
                        counts = (await client.query("stats"))["counts"]
                    assert counts["done"] == 3 and counts["queued"] == 0
                    nursery.cancel_scope.cancel()
        finally:
            second.stop()
    finally:
        first.stop()


async def test_readme_tour(tmp_path: Path) -> None:
    """The README's tour, as written: shipped sched.toml, demo node, submit."""
    root = Path(__file__).parent.parent
    daemon = await trio.lowlevel.open_process([SCHEDD, "run"], cwd=root,
                                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    node = None
    try:
        with trio.fail_after(30):
            readme = (root / "README.md").read_text()
            node_cmd = next(line for line in readme.splitlines() if " node --url" in line)
            submit_cmd = next(line for line in readme.splitlines() if " submit --url" in line)
            env_path = str(Path(SCHEDD).parent)
            while True:  # wait for the daemon to listen
                try:
                    await trio.open_tcp_stream("127.0.0.1", 8765)
                    break
                except OSError:
                    await trio.sleep(0.1)
            node = await trio.lowlevel.open_process(
                ["bash", "-c", node_cmd.replace(".venv/bin", env_path)], cwd=root,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            result = await trio.run_process(
                ["bash", "-c", submit_cmd.replace(".venv/bin", env_path)], cwd=root,
                capture_stdout=True, capture_stderr=True, check=False)
            assert result.returncode == 0, result.stderr.decode()
            done = json.loads(result.stdout)
            assert done["ok"] is True and done["output"]["echo"] == {"hello": 1}
    finally:
        for proc in (node, daemon):
            if proc is not None:
                proc.terminate()
                with trio.move_on_after(10):
                    await proc.wait()
                proc.kill()
