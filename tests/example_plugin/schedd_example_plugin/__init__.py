"""An example third-party plugin: prefixes pool keys with a team name and journals events.

Enable it in sched.toml::

    [plugins]
    enabled = ["transport_ws", "transport_tcp", "example"]

    [plugins.example]
    team = "vision"
    journal = "/tmp/example-journal.jsonl"

Nodes declaring pool ``gpu`` join ``vision/gpu``; jobs asking for ``gpu`` are matched to
``vision/gpu``. Every node registration, node loss and job state change heard by this instance is
appended to the journal by a service (event hooks only queue; the service does the I/O).
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

import attrs
import trio

from schedd.api import Daemon, Service, hookimpl


@attrs.frozen
class ExampleSettings:
    team: str = attrs.field(validator=attrs.validators.min_len(1))
    journal: str = ""


_settings: ExampleSettings | None = None
_events_send, _events_recv = trio.open_memory_channel[dict[str, Any]](10_000)


def _prefix(pools: list[str]) -> list[str]:
    assert _settings is not None
    return [f"{_settings.team}/{p}" for p in pools]


@hookimpl
def schedd_plugin_config() -> type:
    return ExampleSettings


@hookimpl
def schedd_configure(settings: ExampleSettings) -> None:
    global _settings
    _settings = settings


@hookimpl
def schedd_node_pools(node_id: str, capabilities: dict[str, Any],
                      declared_pools: list[str]) -> list[str] | None:
    return _prefix(declared_pools)


@hookimpl
def schedd_job_pools(job_id: str | None, requirements: dict[str, Any],
                     declared_pools: list[str]) -> list[str] | None:
    return _prefix(declared_pools)


def _event(**fields: Any) -> None:
    with contextlib.suppress(trio.WouldBlock):  # a full journal queue drops events
        _events_send.send_nowait(fields)


@hookimpl
def schedd_node_registered(node_id: str, epoch: int, pools: list[str], instance: str) -> None:
    _event(event="node_registered", node_id=node_id, pools=pools)


@hookimpl
def schedd_node_offline(node_id: str, reason: str) -> None:
    _event(event="node_offline", node_id=node_id, reason=reason)


@hookimpl
def schedd_job_state_changed(job_id: str, state: str, attempt: int, node: str | None) -> None:
    _event(event="job_state_changed", job_id=job_id, state=state)


async def _journal(app: Daemon, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                   ) -> None:
    assert _settings is not None
    task_status.started()
    _event(event="service_started", team=_settings.team)
    async for event in _events_recv:
        if _settings.journal:
            with open(_settings.journal, "a") as fh:
                fh.write(json.dumps(event) + "\n")


@hookimpl
def schedd_services(app: Daemon) -> list[Service]:
    return [_journal]
