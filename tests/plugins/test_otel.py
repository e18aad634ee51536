"""The otel plugin: a finished job's phases as spans under the job's trace context (through the
SDK's in-memory exporter), a clear refusal when OpenTelemetry is missing, and no OpenTelemetry
import at all without the plugin."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from schedd import protocol as p
from schedd.api import JobInfo
from schedd.config import load_config
from schedd.errors import ConfigError, StoreUnavailable
from schedd.plugin_manager import PluginManager
from schedd.plugins.otel import OtelPlugin, OtelSettings
from schedd.testing import FakeDaemon
from tests.daemon.harness import Daemon, Peer, running_daemon
from tests.polling import until

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
TRACE_ID = int("4bf92f3577b34da6a3ce929d0e0e4736", 16)
PARENT_ID = int("00f067aa0ba902b7", 16)
ENABLED = {"SCHEDD_PLUGINS__ENABLED": '["otel"]'}
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def _provider() -> TracerProvider:
    """The process's tracer provider (the plugin's default exporter, 'global'): set once."""
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    assert isinstance(trace.get_tracer_provider(), TracerProvider)
    return provider


@pytest.fixture
def spans(_provider: TracerProvider) -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    processor = SimpleSpanProcessor(exporter)
    _provider.add_span_processor(processor)
    yield exporter
    processor.shutdown()  # a shut-down processor drops what later tests emit


async def finished_spans(exporter: InMemorySpanExporter, count: int) -> list[ReadableSpan]:
    await until(lambda: len(exporter.get_finished_spans()) >= count)
    return sorted(exporter.get_finished_spans(), key=lambda s: s.start_time or 0)


async def submit(client: Peer, job_id: str, **fields: Any) -> None:
    await client.send(p.Submit(job_id=job_id, pools=["p"], **fields))
    await client.expect(p.Accepted)


async def run(d: Daemon, node: Peer, client: Peer, job_id: str, *, ok: bool = True,
              **fields: Any) -> p.Done:
    await submit(client, job_id, **fields)
    assign = await node.expect(p.Assign)
    await node.send(p.Accept(job_id=job_id, attempt=assign.attempt))
    await node.send(p.Result(job_id=job_id, attempt=assign.attempt, ok=ok, output=None if not ok
                             else 1, error=None if ok else p.ErrorInfo(code="E_MODEL")))
    done: p.Done = await client.expect(p.Done)
    return done


async def test_a_finished_job_becomes_three_spans_under_its_trace(
    store_url: str, spans: InMemorySpanExporter,
) -> None:
    async with running_daemon(store_url, **ENABLED) as d:
        node, _ = await d.node("p", node_id="n1")
        client = await d.client()
        done = await run(d, node, client, "j1", traceparent=TRACEPARENT)
        queued, assigned, running = await finished_spans(spans, 3)
    assert [s.name for s in (queued, assigned, running)] == ["queued p", "assigned p", "running p"]
    assert [s.kind for s in (queued, assigned, running)] == [
        SpanKind.PRODUCER, SpanKind.CONSUMER, SpanKind.CONSUMER]
    for span in (queued, assigned, running):
        assert span.context is not None and span.context.trace_id == TRACE_ID
        assert span.parent is not None and span.parent.span_id == PARENT_ID
        assert span.parent.is_remote
        attributes = dict(span.attributes or {})
        assert attributes["messaging.system"] == "schedd"
        assert attributes["messaging.destination.name"] == "p"
        assert attributes["messaging.message.id"] == "j1"
        assert attributes["schedd.attempt"] == 1
        assert span.status.status_code is not StatusCode.ERROR
    assert "schedd.node" not in dict(queued.attributes or {})
    assert dict(running.attributes or {})["schedd.node"] == "n1"
    assert [dict(s.attributes or {})["messaging.operation.type"]
            for s in (queued, assigned, running)] == ["send", "receive", "process"]
    # the phases follow each other on the store's clock, as the job's timings say
    ms = 1_000_000
    timings = done.timings
    assert queued.start_time == timings["submitted"] * ms
    assert queued.end_time == assigned.start_time == timings["assigned"] * ms
    assert assigned.end_time == running.start_time == timings["accepted"] * ms
    assert running.end_time == timings["finished"] * ms


async def test_a_failed_job_ends_in_an_error_span_and_a_queued_one_in_one_span(
    store_url: str, spans: InMemorySpanExporter,
) -> None:
    async with running_daemon(store_url, **ENABLED) as d:
        node, _ = await d.node("p", node_id="n1")
        client = await d.client()
        await run(d, node, client, "bad", ok=False, max_attempts=1)
        *_, running = await finished_spans(spans, 3)
        assert running.status.status_code is StatusCode.ERROR
        assert running.status.description == "E_MODEL"
        spans.clear()
        # no node in pool q: the job waits there until it is cancelled
        await client.send(p.Submit(job_id="waits", pools=["q"]))
        accepted = await client.expect(p.Accepted)
        await client.send(p.Cancel(job_id="waits"))
        await client.expect(p.Done)
        (queued,) = await finished_spans(spans, 1)
    assert queued.name == "queued q" and queued.status.status_code is StatusCode.ERROR
    # the daemon made this job's context: the span is in that trace
    assert accepted.traceparent is not None
    assert queued.context is not None
    assert f"{queued.context.trace_id:032x}" == p.trace_id(accepted.traceparent)


def test_enabled_without_opentelemetry_the_daemon_refuses_to_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in [m for m in sys.modules if m == "opentelemetry" or m.startswith("opentelemetry.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "opentelemetry", None)
    path = tmp_path / "sched.toml"
    path.write_text('[plugins]\nenabled = ["otel"]\n')
    with pytest.raises(ConfigError) as refused:
        PluginManager.load(load_config(path, env={}))
    assert "otel" in str(refused.value)
    assert "pip install 'schedd[otel]'" in str(refused.value)


def test_an_unknown_exporter_is_a_configuration_error(tmp_path: Path) -> None:
    path = tmp_path / "sched.toml"
    path.write_text('[plugins]\nenabled = ["otel"]\n[plugins.otel]\nexporter = "jaeger"\n')
    with pytest.raises(ConfigError) as refused:
        PluginManager.load(load_config(path, env={}))
    assert "$.plugins.otel.exporter" in str(refused.value)


def test_the_otlp_exporter_without_its_package_is_a_configuration_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry.exporter", None)
    path = tmp_path / "sched.toml"
    path.write_text('[plugins]\nenabled = ["otel"]\n[plugins.otel]\nexporter = "otlp"\n')
    with pytest.raises(ConfigError) as refused:
        PluginManager.load(load_config(path, env={}))
    assert "opentelemetry-exporter-otlp-proto-http" in str(refused.value)


def test_past_its_queue_finished_jobs_get_no_spans_and_are_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    plugin = OtelPlugin()
    plugin.schedd_configure(OtelSettings(queue=1))
    plugin.schedd_job_state_changed("running-job", "running")  # not finished: not queued
    for job_id in ("a", "b", "c"):
        plugin.schedd_job_state_changed(job_id, "done")
    assert plugin.dropped == 2
    assert "2 finished job(s) got no spans" not in caplog.text  # logged at the first drop
    assert "1 finished job(s) got no spans" in caplog.text


class _FailingQueries:
    async def job(self, job_id: str) -> JobInfo | None:
        raise StoreUnavailable("redis is down")


async def test_a_job_the_store_cannot_read_gets_no_spans_and_the_next_does(
    spans: InMemorySpanExporter, caplog: pytest.LogCaptureFixture,
) -> None:
    plugin = OtelPlugin()
    failing = FakeDaemon(queries=_FailingQueries())  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        await nursery.start(plugin.serve, failing)
        plugin.schedd_job_state_changed("lost", "done")
        await until(lambda: "could not read job lost" in caplog.text)
        nursery.cancel_scope.cancel()
    assert spans.get_finished_spans() == ()


NO_PLUGIN = textwrap.dedent('''
    import importlib.abc
    import os
    import sys

    MODE = sys.argv[1]
    SOURCES = tuple(os.path.realpath(d) + os.sep for d in sys.argv[2:])
    importers = set()


    class Watch(importlib.abc.MetaPathFinder):
        """Records the file whose import statement asked for an OpenTelemetry module (or,
        blocking, makes OpenTelemetry look uninstalled)."""

        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] != "opentelemetry":
                return None
            if MODE == "block":
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            frame = sys._getframe(1)
            while frame is not None and frame.f_code.co_filename.startswith("<frozen"):
                frame = frame.f_back
            importers.add(os.path.realpath(frame.f_code.co_filename) if frame else "?")
            return None


    sys.meta_path.insert(0, Watch())

    import trio

    from schedd import protocol as p
    from schedd.testing import running_daemon

    TOML = """
    [plugins]
    enabled = ["transport_ws", "transport_tcp", "langset", "reconcile", "ui"]
    [plugins.transport_ws]
    listen = "127.0.0.1:0"
    [plugins.transport_tcp]
    listen = "127.0.0.1:0"
    [plugins.ui]
    listen = "127.0.0.1:0"
    """


    async def main():
        async with running_daemon("memory://", TOML) as d:
            node, _ = await d.node("p")
            client = await d.client()
            await client.send(p.Submit(job_id="j1", pools=["p"]))
            await client.expect(p.Accepted)
            assign = await node.expect(p.Assign)
            await node.send(p.Accept(job_id="j1", attempt=assign.attempt))
            await node.send(p.Result(job_id="j1", attempt=assign.attempt, ok=True))
            assert (await client.expect(p.Done)).ok
        ours = sorted(f for f in importers if f.startswith(SOURCES))
        assert not ours, ours
        assert "schedd.plugins.otel" not in sys.modules
        print("no opentelemetry from schedd")


    trio.run(main)
''')


@pytest.mark.parametrize("mode", ["block", "watch"])
def test_without_the_plugin_nothing_of_opentelemetry_is_imported(
    tmp_path: Path, mode: str,
) -> None:
    """In a fresh interpreter (this one imported OpenTelemetry for the tests above), a daemon
    with every other built-in plugin runs a job: with OpenTelemetry unimportable ('block'), and
    with it installed ('watch'), where no import statement of schedd's asks for it. (redis-py
    imports it by itself when it is installed, for its own optional metrics.)"""
    sources = [str(ROOT / "daemon"), str(ROOT / "plugins")]
    result = subprocess.run([sys.executable, "-c", NO_PLUGIN, mode, *sources],
                            capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "no opentelemetry from schedd"
