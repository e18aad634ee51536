"""Read-only views for the CLI and UI: nodes, pools, jobs, counts, exclusions, instances,
client connections.

Reads are plain pipelined commands (no state changes, so no script is needed); every view is
built from Redis alone, so every instance shows the same global picture.
"""

from __future__ import annotations

from typing import Any

import attrs
import orjson

from schedd.protocol.messages import JOB_STATES
from schedd.store.base import Store
from schedd.store.keys import Keys


def _s(value: Any) -> str:
    if value is None:
        return ""
    return value.decode() if isinstance(value, bytes) else str(value)


def _pairs(flat: list[Any]) -> dict[str, str]:
    return {_s(flat[i]): _s(flat[i + 1]) for i in range(0, len(flat), 2)}


def _float(value: str, default: float = 0.0) -> float:
    try:
        return float(value)
    except ValueError:
        return default


def _int(value: str, default: int = 0) -> int:
    try:
        return int(float(value))
    except ValueError:
        return default


@attrs.frozen(kw_only=True)
class NodeInfo:
    node_id: str
    state: str
    owner: str
    epoch: int
    capacity: int
    used: int
    pools: list[str]
    load: float
    last_heartbeat_ms: int
    alive_until_ms: int | None
    capabilities: dict[str, Any]
    labels: dict[str, Any]
    reason: str
    protocol: int = 0  # the protocol version of the node's registering connection; 0 unknown


@attrs.frozen(kw_only=True)
class ClientInfo:
    """One client connection some live instance holds (client_open.lua)."""

    instance: str
    principal: str
    peer: str
    protocol: int
    name: str | None
    connected_ms: int


@attrs.frozen(kw_only=True)
class PoolInfo:
    pool: str
    members: dict[str, int]  # node id -> free slots
    free_slots: int
    queued: int


@attrs.frozen(kw_only=True)
class JobInfo:
    job_id: str
    state: str
    attempt: int
    max_attempts: int
    node: str | None
    pools: list[str]
    priority: int
    session_id: str | None
    principal: str
    client_instance: str
    ok: bool | None
    output: Any
    error: Any
    reason: str
    timings: dict[str, int]
    tried: list[str]
    #: the job's trace context as stored (JobSpec.trace; '' for a job stored without one)
    trace: str = ""


@attrs.frozen(kw_only=True)
class FinishedJob:
    """One entry of the recent-completions window (timestamps in unix ms, 0 when not reached)."""

    job_id: str
    state: str
    node: str | None
    submitted_ms: int
    assigned_ms: int
    accepted_ms: int
    finished_ms: int


def _json(text: str, default: Any) -> Any:
    if not text:
        return default
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return default


class Queries:
    def __init__(self, store: Store, keys: Keys) -> None:
        self.store = store
        self.keys = keys

    async def nodes(self, limit: int = 10_000) -> list[NodeInfo]:
        ids = [_s(n) for n in await self.store.execute("ZRANGE", self.keys.nodes, 0, limit - 1)]
        if not ids:
            return []
        replies = await self.store.execute_many(
            [("HGETALL", self.keys.node(n)) for n in ids]
            + [("ZMSCORE", self.keys.alive, *ids), ("HMGET", self.keys.beats, *ids)]
        )
        alive, beats = replies[-2], replies[-1]
        out = []
        for node_id, flat, until, beat in zip(ids, replies[:-2], alive, beats, strict=True):
            h = _pairs(flat)
            if not h:
                continue
            # '<unix ms> <load> <inflight>' (heartbeat_batch.lua)
            beat_ms, load, _inflight = [*_s(beat).split(" "), "0", "0", "0"][:3]
            out.append(
                NodeInfo(
                    node_id=node_id,
                    state=h.get("state", ""),
                    owner=h.get("owner", ""),
                    epoch=_int(h.get("epoch", "0")),
                    capacity=_int(h.get("capacity", "0")),
                    used=_int(h.get("used", "0")),
                    pools=_json(h.get("pools", ""), []),
                    load=_float(load),
                    last_heartbeat_ms=_int(beat_ms),
                    alive_until_ms=_int(_s(until)) if until is not None else None,
                    capabilities=_json(h.get("caps", ""), {}),
                    labels=_json(h.get("labels", ""), {}),
                    reason=h.get("reason", ""),
                    protocol=_int(h.get("proto", "0")),
                )
            )
        return out

    async def pools(self) -> list[PoolInfo]:
        flat = await self.store.execute("ZRANGE", self.keys.pools, 0, -1)
        names = [_s(p) for p in flat]
        if not names:
            return []
        commands: list[tuple[Any, ...]] = []
        for name in names:
            commands.append(("ZRANGE", self.keys.pool(name), 0, -1, "WITHSCORES"))
            commands.append(("ZCARD", self.keys.queue(name)))
        replies = await self.store.execute_many(commands)
        out = []
        for i, name in enumerate(names):
            members = {k: _int(v) for k, v in _pairs(replies[2 * i]).items()}
            out.append(
                PoolInfo(
                    pool=name,
                    members=members,
                    free_slots=sum(members.values()),
                    queued=int(replies[2 * i + 1]),
                )
            )
        return out

    async def job(self, job_id: str) -> JobInfo | None:
        flat, tried = await self.store.execute_many(
            [("HGETALL", self.keys.job(job_id)), ("SMEMBERS", self.keys.job_tried(job_id))]
        )
        h = _pairs(flat)
        if not h:
            return None
        ok = h.get("ok")
        return JobInfo(
            job_id=job_id,
            state=h.get("state", ""),
            attempt=_int(h.get("attempt", "0")),
            max_attempts=_int(h.get("max_attempts", "0")),
            node=h.get("node") or None,
            pools=_json(h.get("pools", ""), []),
            priority=_int(h.get("priority", "0")),
            session_id=h.get("session") or None,
            principal=h.get("principal", ""),
            client_instance=h.get("client", ""),
            ok=None if not ok else ok == "1",
            output=_json(h.get("output", ""), None),
            error=_json(h.get("error", ""), None),
            reason=h.get("reason", ""),
            timings={
                name: _int(h.get(field, "") or "0")
                for name, field in (
                    ("submitted", "t_sub"),
                    ("assigned", "t_asg"),
                    ("accepted", "t_acc"),
                    ("finished", "t_fin"),
                )
            },
            tried=sorted(_s(t) for t in tried),
            trace=h.get("trace", ""),
        )

    async def job_states(self, job_ids: list[str]) -> dict[str, tuple[str, list[str]]]:
        """(state, candidate pools) of each job that has a record, in one pipeline."""
        replies = await self.store.execute_many(
            [("HMGET", self.keys.job(job_id), "state", "pools") for job_id in job_ids]
        )
        return {
            job_id: (_s(state), _json(_s(pools), []))
            for job_id, (state, pools) in zip(job_ids, replies, strict=True)
            if state is not None
        }

    async def counts(self) -> dict[str, int]:
        """Jobs per current state (every state present) plus lifetime ``total:*`` counters."""
        h = _pairs(await self.store.execute("HGETALL", self.keys.counts))
        out = {state: _int(h.get(state, "0")) for state in JOB_STATES}
        out.update({k: _int(v) for k, v in h.items() if k.startswith("total:")})
        # job_submit counts accepted jobs once, in the queue-order sequence
        out["total:submitted"] = _int(h.get("seq", "0"))
        return out

    async def recent_finished(self, limit: int = 2000) -> list[FinishedJob]:
        """The most recent finished jobs, newest first (at most 2000 are kept)."""
        out = []
        for raw in await self.store.execute("LRANGE", self.keys.finished, 0, limit - 1):
            f = orjson.loads(raw)
            out.append(FinishedJob(job_id=f[0], state=f[1], node=f[2] or None, submitted_ms=f[3],
                                   assigned_ms=f[4], accepted_ms=f[5], finished_ms=f[6]))
        return out

    async def exclusions(self) -> dict[str, int]:
        h = _pairs(await self.store.execute("HGETALL", self.keys.exclusions))
        return {k: _int(v) for k, v in sorted(h.items())}

    async def instances(self) -> dict[str, int]:
        """Instance id -> unix ms at which its presence expires."""
        h = _pairs(await self.store.execute("ZRANGE", self.keys.instances, 0, -1, "WITHSCORES"))
        return {k: _int(v) for k, v in h.items()}

    async def clients(self, principal: str | None = None) -> list[ClientInfo]:
        """The client connections of every live instance (presence not expired), oldest first;
        only ``principal``'s when given. One read per live instance: each instance's list is
        bounded by its connection limits."""
        now_reply, flat = await self.store.execute_many(
            [("TIME",), ("ZRANGE", self.keys.instances, 0, -1, "WITHSCORES")]
        )
        now_ms = int(_s(now_reply[0])) * 1000 + int(_s(now_reply[1])) // 1000
        live = [inst for inst, until in _pairs(flat).items() if _int(until) > now_ms]
        if not live:
            return []
        lists = await self.store.execute_many(
            [("HGETALL", self.keys.clients(inst)) for inst in live]
        )
        out = []
        for instance, entries in zip(live, lists, strict=True):
            for raw in _pairs(entries).values():
                since, _, text = raw.partition(" ")  # '<unix ms> <json>' (client_open.lua)
                entry = _json(text, None)
                if not isinstance(entry, dict):
                    continue
                if principal is not None and entry.get("principal") != principal:
                    continue
                out.append(ClientInfo(
                    instance=instance, principal=str(entry.get("principal", "")),
                    peer=str(entry.get("peer", "")), protocol=_int(str(entry.get("protocol", 0))),
                    name=entry.get("name"), connected_ms=_int(since),
                ))
        out.sort(key=lambda c: (c.connected_ms, c.instance, c.peer))
        return out

    async def held_jobs(self, node_ids: list[str]) -> int:
        """How many jobs the nodes hold (assigned or running), by their registrations."""
        replies = await self.store.execute_many(
            [("HGET", self.keys.node(n), "used") for n in node_ids]
        )
        return sum(int(r or 0) for r in replies)

    async def answer(self, what: str, principal: str | None = None) -> dict[str, Any]:
        """The data of a ``query`` for ``what`` (``nodes``, ``pools``, ``clients``, else
        ``stats``). ``clients`` lists only ``principal``'s connections when it is given."""
        if what == "clients":
            return {"clients": [attrs.asdict(c) for c in await self.clients(principal)]}
        if what == "nodes":
            return {"nodes": [attrs.asdict(n) for n in await self.nodes()]}
        if what == "pools":
            return {"pools": [attrs.asdict(p) for p in await self.pools()]}
        return {
            "counts": await self.counts(),
            "exclusions": await self.exclusions(),
            "instances": await self.instances(),
        }
