"""OpenTelemetry spans for every finished job, children of the job's W3C trace context.

Every job carries a ``traceparent`` (the client's, or one the daemon made at submit). When a job
reaches its terminal state, the instance whose script finished it reads the job's record once
and emits up to three spans, one per phase of the job's last attempt, following OpenTelemetry's
messaging semantic conventions (``schedd.plugins.otel.spans``):

* ``queued <pool>`` (PRODUCER, ``send``): submitted to assigned;
* ``assigned <pool>`` (CONSUMER, ``receive``): assigned to accepted by the node;
* ``running <pool>`` (CONSUMER, ``process``): accepted to finished.

Rules of this plugin:

- Nothing of OpenTelemetry is imported unless the plugin is enabled; enabled without
  OpenTelemetry installed, the daemon refuses to start with a configuration error naming the
  missing package (``pip install 'schedd[otel]'``).
- Spans are emitted after the script calls return, from what the store recorded (the job's
  timings, attempt, node, trace context); the scripts only record timestamps. The event hook
  only queues the job id; the plugin's service reads and emits, so no hook waits on I/O.
- The queue is bounded (``[plugins.otel] queue``): past it, finished jobs get no spans and the
  drops are counted and logged, never held in memory.
- A job retried on another node gets the spans of its last attempt; the earlier attempts'
  time falls inside its ``queued`` span.
"""

from __future__ import annotations

import importlib
import logging
from typing import Any, Final

import attrs
import trio

from schedd.api import TERMINAL_STATES, Daemon, Service, StoreError, hookimpl, setting

__all__ = ["EXPORTERS", "PLUGIN_NAME", "OtelPlugin", "OtelSettings"]

PLUGIN_NAME: Final = "otel"
EXPORTERS: Final = ("global", "console", "otlp")
#: what the plugin needs, and how to install it
_NEEDS: Final = "OpenTelemetry (pip install 'schedd[otel]')"

log = logging.getLogger(__name__)


def _exporter(_instance: Any, _attribute: Any, value: Any) -> None:
    if value not in EXPORTERS:
        raise ValueError(f"expected one of {', '.join(EXPORTERS)}, got {value!r}")


def _positive_int(_instance: Any, _attribute: Any, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"expected an integer >= 1, got {value!r}")


@attrs.frozen
class OtelSettings:
    """``[plugins.otel]``: where spans go."""

    exporter: str = setting(
        "global",
        "'global': the process's tracer provider (set up by opentelemetry-instrument or the "
        "embedding program); 'console': spans printed to stdout; 'otlp': OTLP over HTTP to "
        "OTEL_EXPORTER_OTLP_ENDPOINT (needs opentelemetry-exporter-otlp-proto-http)",
        _exporter,
    )
    service_name: str = setting(
        "schedd", "the service.name resource of the spans ('console' and 'otlp' only)")
    queue: int = setting(
        10_000, "finished jobs waiting for their spans; past it, jobs get none (counted)",
        _positive_int)


def _require(module: str, what: str = f"the otel plugin needs {_NEEDS}") -> None:
    """Import ``module`` or refuse to start with a line saying what to install."""
    try:
        importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(f"{what}: {exc}") from None


class OtelPlugin:
    """The plugin, one instance per daemon (the entry point names this class)."""

    def __init__(self) -> None:
        _require("opentelemetry.trace")
        self.settings = OtelSettings()
        self.dropped = 0
        self._send, self._receive = trio.open_memory_channel[str](self.settings.queue)

    @hookimpl
    def schedd_plugin_config(self) -> type:
        """Declare :class:`OtelSettings`."""
        return OtelSettings

    @hookimpl
    def schedd_configure(self, settings: OtelSettings) -> None:
        """Keep ``settings``; an exporter whose package is missing refuses the configuration."""
        if settings.exporter in ("console", "otlp"):
            _require("opentelemetry.sdk.trace")
        if settings.exporter == "otlp":
            _require("opentelemetry.exporter.otlp.proto.http.trace_exporter",
                     "exporter 'otlp' needs opentelemetry-exporter-otlp-proto-http")
        self.settings = settings
        self._send, self._receive = trio.open_memory_channel[str](settings.queue)

    @hookimpl
    def schedd_job_state_changed(self, job_id: str, state: str) -> None:
        """Queue a finished job for its spans (never blocks)."""
        if state not in TERMINAL_STATES:
            return
        try:
            self._send.send_nowait(job_id)
        except trio.WouldBlock:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 10_000 == 0:
                log.warning("otel: %d finished job(s) got no spans: the span queue (%d) is "
                            "full", self.dropped, self.settings.queue)

    @hookimpl
    def schedd_services(self, app: Daemon) -> list[Service]:
        """The span emitter."""
        return [self.serve]

    async def serve(
        self, app: Daemon, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Read each queued job once and emit its spans, until cancelled."""
        from schedd.plugins.otel.spans import JobSpans  # OpenTelemetry only once enabled

        spans = JobSpans(self.settings.exporter, self.settings.service_name)
        task_status.started()
        try:
            async for job_id in self._receive:
                try:
                    info = await app.queries.job(job_id)
                except StoreError as exc:  # this job gets no spans; the next may
                    log.warning("otel: could not read job %s for its spans: %s", job_id, exc)
                    continue
                if info is not None:
                    spans.emit(info)
        finally:
            spans.shutdown()
