"""A finished job's record as OpenTelemetry spans (imported only when the plugin is enabled).

Names and attributes follow the messaging semantic conventions: the span name is
``{messaging.operation.name} {messaging.destination.name}``, the destination is the job's first
candidate pool (a low-cardinality key, not the job), ``messaging.message.id`` is the job id, and
schedd's own attributes are ``schedd.attempt`` and ``schedd.node``. Each span's parent is the
job's trace context, so the client's trace holds the job's phases.
"""

from __future__ import annotations

import importlib
from typing import Any, Final

from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from schedd.api import JobInfo

__all__ = ["PHASES", "JobSpans"]

#: (operation name, operation type, span kind, timing it starts at, timing it ends at)
PHASES: Final = (
    ("queued", "send", SpanKind.PRODUCER, "submitted", "assigned"),
    ("assigned", "receive", SpanKind.CONSUMER, "assigned", "accepted"),
    ("running", "process", SpanKind.CONSUMER, "accepted", "finished"),
)
_MS: Final = 1_000_000  # nanoseconds per millisecond
_PROPAGATOR: Final = TraceContextTextMapPropagator()


def _provider(exporter: str, service_name: str) -> Any:
    """The tracer provider spans go to: the process's, or one of the plugin's own."""
    if exporter == "global":
        return trace.get_tracer_provider()
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    if exporter == "console":
        span_exporter: Any = ConsoleSpanExporter()
    else:  # otlp (schedd_configure checked the package is there)
        module = importlib.import_module("opentelemetry.exporter.otlp.proto.http.trace_exporter")
        span_exporter = module.OTLPSpanExporter()
    provider.add_span_processor(BatchSpanProcessor(span_exporter))
    return provider


class JobSpans:
    """Emits the spans of finished jobs to one tracer provider."""

    def __init__(self, exporter: str, service_name: str) -> None:
        self._provider = _provider(exporter, service_name)
        self._own = exporter != "global"
        self._tracer = self._provider.get_tracer("schedd")

    def emit(self, info: JobInfo) -> None:
        """The spans of a finished job's phases that it reached (a job cancelled while queued
        has only ``queued``, ended when it finished)."""
        carrier = {}
        if info.trace:
            traceparent, _, tracestate = info.trace.partition(" ")
            carrier["traceparent"] = traceparent
            if tracestate:
                carrier["tracestate"] = tracestate
        parent = _PROPAGATOR.extract(carrier)
        pool = info.pools[0] if info.pools else ""
        times = info.timings
        finished = times.get("finished", 0)
        reached = [phase for phase in PHASES if times.get(phase[3], 0)]
        for index, (operation, kind_of, kind, start, end) in enumerate(reached):
            last = index == len(reached) - 1
            end_ms = times.get(end, 0) if not last else finished or times.get(end, 0)
            attributes: dict[str, str | int] = {
                "messaging.system": "schedd",
                "messaging.operation.name": operation,
                "messaging.operation.type": kind_of,
                "messaging.destination.name": pool,
                "messaging.message.id": info.job_id,
                "schedd.attempt": info.attempt,
                "schedd.state": info.state,
            }
            if info.node and operation != "queued":
                attributes["schedd.node"] = info.node
            span = self._tracer.start_span(
                f"{operation} {pool}", context=parent, kind=kind, attributes=attributes,
                start_time=times[start] * _MS,
            )
            if last and info.state != "done":
                error = info.error if isinstance(info.error, dict) else {}
                span.set_status(Status(StatusCode.ERROR,
                                       str(error.get("code") or f"job {info.state}")))
            span.end(end_time=max(end_ms, times[start]) * _MS)

    def shutdown(self) -> None:
        """Flush and close a provider of the plugin's own (the process's stays as it is)."""
        if self._own:
            self._provider.shutdown()
