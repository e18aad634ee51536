"""Read-only views for the CLI and UI: nodes, pools, jobs, counts, exclusions, instances,
client connections.

Reads are plain pipelined commands (no state changes, so no script is needed); every view is
built from Redis alone, so every instance shows the same global picture. A listing of jobs is a
bounded read of the browsing indices the scripts keep (docs/architecture.md, "Browsing jobs"):
it never scans, and what one page reads does not grow with the jobs the namespace holds.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs
import orjson

from schedd.core.browse import EXAMINE_BUDGET, Cursor, JobFilter
from schedd.protocol.messages import JOB_STATES, TERMINAL_STATES
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
class UsageInfo:
    """One principal's usage as the scripts keep it (``usage:<principal>``)."""

    principal: str
    in_flight: int
    queued: int
    payload_bytes: int
    max_in_flight: int | None  # the cap its last submit stored; None: none
    refused: dict[str, int]  # error code -> refusals of its submits
    last_submit_ms: int


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
    attempts: list[dict[str, Any]] = attrs.field(factory=list)
    """Every attempt (at most :data:`ATTEMPTS_SHOWN`, the latest): ``attempt``, ``node``,
    ``outcome`` (``rejected``, ``lost``, ``timed_out`` for one that ended without a result; the
    job's state for its last one), ``reason``, ``assigned_ms``, ``accepted_ms``, ``ended_ms``
    (0 when not reached)."""
    payload_bytes: int = 0
    output_bytes: int = 0
    #: the result's binary attachments, {name, size, media_type} each (their bytes are read
    #: with :meth:`Queries.attachments`)
    attachments: list[dict[str, Any]] = attrs.field(factory=list)
    #: bytes of binary attachments the store holds for the job, submit's and result's (the
    #: job hash's att_bytes)
    attachment_bytes: int = 0


ATTEMPTS_SHOWN = 100
"""Most attempts a job's detail lists (the latest ones)."""


@attrs.frozen(kw_only=True)
class JobSummary:
    """One row of a listing of jobs (timestamps in unix ms, 0 when not reached)."""

    job_id: str
    state: str
    principal: str
    node: str | None
    pools: list[str]
    attempt: int
    max_attempts: int
    submitted_ms: int
    finished_ms: int
    error: str | None  # the error code of a job that failed, timed out or was canceled


@attrs.frozen(kw_only=True)
class JobPage:
    """One page of a listing, newest first; ``cursor`` continues it (``None``: nothing more)."""

    jobs: list[JobSummary]
    cursor: str | None
    examined: int  # index entries this page looked at (at most EXAMINE_BUDGET)


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


_NOT_INDEXED = frozenset(JOB_STATES) - TERMINAL_STATES  # in jobs_in:active, checked per job
#: the indices whose union is every retained job (each job is in exactly one of them)
_STATE_INDICES = ("active", *sorted(TERMINAL_STATES))


def _merge(replies: list[list[Any]], skip: int, count: int) -> list[Any]:
    """Entries of several ``ZRANGE … BYSCORE REV WITHSCORES`` replies (each read from the same
    bound with ``LIMIT 0 skip+count``) as one such reply of their union: score descending, equal
    scores by member descending (bytewise, as Redis orders them), ``skip`` entries skipped, at
    most ``count``."""
    entries = [(float(reply[i + 1]), _s(reply[i]).encode(), reply[i], reply[i + 1])
               for reply in replies for i in range(0, len(reply), 2)]
    entries.sort(reverse=True)
    flat: list[Any] = []
    for _, _, member, score in entries[skip:skip + count]:
        flat += [member, score]
    return flat


def _chunk(needed: int, found: int, examined: int, last: int, exact: bool) -> int:
    """How many index entries to read next for ``needed`` more jobs: that many when every entry
    matches; else as many as the match rate so far predicts with a margin, at least 32 and at
    most twice the last read (so what a page reads past its last match stays below what it
    used)."""
    if exact:
        return needed
    if not examined:
        return max(32, 2 * needed)
    predicted = int(needed * examined / found * 1.2) + 1 if found else 2 * last
    return max(32, min(predicted, 2 * last))


def _attempts(h: dict[str, str], ended: list[str]) -> list[dict[str, Any]]:
    """A job's attempts: those that ended without a result as the scripts recorded them
    ([attempt, node, outcome, reason, t_asg, t_acc, t_end]), then its current or last attempt,
    read from its hash unless it is among them."""
    out: list[dict[str, Any]] = []
    for raw in ended:
        entry = _json(raw, None)
        if isinstance(entry, list) and len(entry) == 7:
            out.append(dict(zip(("attempt", "node", "outcome", "reason", "assigned_ms",
                                 "accepted_ms", "ended_ms"), entry, strict=True)))
    attempt = _int(h.get("attempt", "0"))
    if attempt > 0 and (not out or out[-1]["attempt"] < attempt) and h.get("node"):
        state = h.get("state", "")
        error = _json(h.get("error", ""), None)
        out.append({
            "attempt": attempt, "node": h.get("node", ""), "outcome": state,
            "reason": str(error.get("message", "")) if isinstance(error, dict) else "",
            "assigned_ms": _int(h.get("t_asg", "") or "0"),
            "accepted_ms": _int(h.get("t_acc", "") or "0"),
            "ended_ms": _int(h.get("t_fin", "") or "0") if state in TERMINAL_STATES else 0,
        })  # fmt: skip
    return out


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

    async def attachments(self, job_id: str, side: str, names: Sequence[str]) -> list[bytes]:
        """The bytes of a job's attachments named ``names``: ``side`` ``in`` (its submit's) or
        ``out`` (its result's), in that order; ``LookupError`` when one is gone (the job was
        removed)."""
        if not names:
            return []
        data = await self.store.execute(
            "HMGET", self.keys.job_blobs(job_id), *[f"{side}:{name}" for name in names])
        if any(item is None for item in data):
            raise LookupError(f"the attachments of job {job_id} are no longer stored")
        return [bytes(item) for item in data]

    async def job(self, job_id: str) -> JobInfo | None:
        flat, tried, ended = await self.store.execute_many([
            ("HGETALL", self.keys.job(job_id)),
            ("SMEMBERS", self.keys.job_tried(job_id)),
            ("LRANGE", self.keys.job_attempts(job_id), -ATTEMPTS_SHOWN, -1),
        ])  # fmt: skip
        h = _pairs(flat)
        if not h:
            return None
        ok = h.get("ok")
        output = h.get("output", "")
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
                    # when a delayed job is (or was last) due; absent for a job never delayed
                    *((("due", "t_due"),) if h.get("t_due") else ()),
                )
            },
            tried=sorted(_s(t) for t in tried),
            trace=h.get("trace", ""),
            attempts=_attempts(h, [_s(raw) for raw in ended]),
            payload_bytes=len(h.get("payload", "").encode()),
            output_bytes=len(output.encode()) if output and output != "null" else 0,
            attachments=_json(h.get("out_att", ""), []),
            attachment_bytes=_int(h.get("att_bytes", "0") or "0"),
        )

    async def list_jobs(self, f: JobFilter) -> JobPage:
        """One page of the jobs ``f`` selects, newest submission first.

        Reads the smallest of the indices the filter names (state, principal, node; all jobs
        when it names none: the union of the per-state indices, merged) within the time bounds,
        newest first, and checks the filter's other fields against each job's hash, looking at
        :data:`EXAMINE_BUDGET` entries at most."""
        k = self.keys
        candidates = [""]  # all jobs
        if f.state is not None:
            candidates.append(k.jobs_in(f.state if f.state in TERMINAL_STATES else "active"))
        if f.principal is not None:
            candidates.append(k.jobs_of(f.principal))
        if f.node is not None:
            candidates.append(k.jobs_on(f.node))
        low = str(f.since) if f.since is not None else "-inf"
        position = f.position()
        high = (str(position.score) if position is not None
                else f"({f.until}" if f.until is not None else "+inf")
        index = candidates[-1]
        if len(candidates) > 2:  # the one holding the fewest jobs in the range
            sizes = await self.store.execute_many(
                [("ZCOUNT", key, low, high) for key in candidates[1:]]
            )
            index = candidates[1 + min(range(len(sizes)), key=lambda i: int(sizes[i]))]
        # the index answers the whole filter: every entry matches, read no more than a page
        exact = f.pool is None and f.state not in _NOT_INDEXED and len(candidates) <= 2
        score, skip = (position.score, position.skip) if position is not None else (None, 0)
        found: list[JobSummary] = []
        examined = 0
        count = 0
        while examined < EXAMINE_BUDGET:
            count = _chunk(f.limit - len(found), len(found), examined, count, exact)
            count = min(EXAMINE_BUDGET - examined, count)
            flat = await self._read(index, high, low, skip, count)
            entries = [(_s(flat[i]), _int(_s(flat[i + 1]))) for i in range(0, len(flat), 2)]
            if not entries:
                return JobPage(jobs=found, cursor=None, examined=examined)
            rows = await self._summaries([job_id for job_id, _ in entries], f, index)
            for (_, entry_score), row in zip(entries, rows, strict=True):
                examined += 1
                skip = skip + 1 if entry_score == score else 1
                score = entry_score
                if row is not None:
                    found.append(row)
                    if len(found) == f.limit:
                        return JobPage(jobs=found, cursor=str(Cursor(score, skip)),
                                       examined=examined)
            if len(entries) < count:
                return JobPage(jobs=found, cursor=None, examined=examined)
            high = str(score)
        assert score is not None
        return JobPage(jobs=found, cursor=str(Cursor(score, skip)), examined=examined)

    async def _read(self, index: str, high: str, low: str, skip: int, count: int) -> list[Any]:
        """``ZRANGE index high low BYSCORE REV WITHSCORES LIMIT skip count``; for all jobs
        (``index`` ''), the same of the per-state indices' union: each read from ``high`` up to
        skip + count entries, merged (each job is in one of them and keeps its score, so the
        union's order and a cursor into it hold while jobs move between them)."""
        if index:
            flat: list[Any] = await self.store.execute(
                "ZRANGE", index, high, low, "BYSCORE", "REV", "WITHSCORES", "LIMIT", skip, count)
            return flat
        replies = await self.store.execute_many(
            [("ZRANGE", self.keys.jobs_in(state), high, low, "BYSCORE", "REV", "WITHSCORES",
              "LIMIT", 0, skip + count) for state in _STATE_INDICES])
        return _merge(replies, skip, count)

    async def _summaries(
        self, job_ids: list[str], f: JobFilter, index: str
    ) -> list[JobSummary | None]:
        """The summary of each job that matches ``f`` (``None`` where it does not, or is gone)."""
        fields = ("state", "principal", "node", "pools", "attempt", "max_attempts", "t_sub",
                  "t_fin", "error")
        k = self.keys
        # in the node's own index every job had an attempt there; elsewhere the node is the
        # job's current one or among those that held an earlier attempt (its tried set)
        check_tried = f.node is not None and index != k.jobs_on(f.node)
        commands: list[tuple[Any, ...]] = [("HMGET", k.job(j), *fields) for j in job_ids]
        if check_tried:  # the node may have held an earlier attempt
            commands += [("SISMEMBER", k.job_tried(j), f.node) for j in job_ids]
        replies = await self.store.execute_many(commands)
        out: list[JobSummary | None] = []
        for i, job_id in enumerate(job_ids):
            h = dict(zip(fields, (_s(v) if v is not None else None for v in replies[i]),
                         strict=True))
            state = h["state"]
            pools = _json(h["pools"] or "", [])
            if (
                not state
                or (f.state is not None and state != f.state)
                or (f.principal is not None and h["principal"] != f.principal)
                or (f.pool is not None and f.pool not in pools)
                or (check_tried and h["node"] != f.node and not replies[len(job_ids) + i])
            ):
                out.append(None)
                continue
            error = _json(h["error"] or "", None)
            out.append(JobSummary(
                job_id=job_id, state=state, principal=h["principal"] or "",
                node=h["node"] or None, pools=pools, attempt=_int(h["attempt"] or "0"),
                max_attempts=_int(h["max_attempts"] or "0"),
                submitted_ms=_int(h["t_sub"] or "0"), finished_ms=_int(h["t_fin"] or "0"),
                error=str(error.get("code")) if isinstance(error, dict) else None,
            ))  # fmt: skip
        return out

    async def counts(self) -> dict[str, int]:
        """Jobs per current state (every state present) plus lifetime ``total:*`` counters.

        A terminal state's count is the retained jobs that ended in it, its ``jobs_in`` index's
        size (pipelines included: each is a job of its own beside its stages); the scripts
        count only the other states in ``counts``, which also holds the ``total:*`` counters.
        """
        k = self.keys
        terminal = sorted(TERMINAL_STATES)
        raw, *sizes = await self.store.execute_many(
            [("HGETALL", k.counts), *(("ZCARD", k.jobs_in(state)) for state in terminal)])
        h = _pairs(raw)
        out = {state: _int(h.get(state, "0")) for state in JOB_STATES}
        out.update({state: int(n) for state, n in zip(terminal, sizes, strict=True)})
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

    async def usage(self, principal: str | None = None, limit: int = 1000) -> list[UsageInfo]:
        """The usage of ``principal``, or of the ``limit`` most recently active principals
        (newest first); a principal that never submitted has none."""
        if principal is not None:
            score = await self.store.execute("ZSCORE", self.keys.tenants, principal)
            named = [(principal, score)] if score is not None else []
        else:
            flat = await self.store.execute(
                "ZRANGE", self.keys.tenants, 0, max(limit, 1) - 1, "REV", "WITHSCORES")
            named = [(_s(flat[i]), flat[i + 1]) for i in range(0, len(flat), 2)]
        if not named:
            return []
        hashes = await self.store.execute_many(
            [("HGETALL", self.keys.usage(name)) for name, _ in named])
        out = []
        for (name, score), flat in zip(named, hashes, strict=True):
            h = _pairs(flat)
            cap = h.get("cap_inflight")
            out.append(UsageInfo(
                principal=name, in_flight=_int(h.get("inflight", "0")),
                queued=_int(h.get("queued", "0")), payload_bytes=_int(h.get("bytes", "0")),
                max_in_flight=_int(cap) if cap else None,
                refused={k.removeprefix("refused:"): _int(v) for k, v in sorted(h.items())
                         if k.startswith("refused:")},
                last_submit_ms=_int(_s(score)),
            ))
        return out

    async def answer(self, what: str, principal: str | None = None) -> dict[str, Any]:
        """The data of a ``query`` for ``what`` (``nodes``, ``pools``, ``clients``, ``usage``,
        else ``stats``). ``clients`` and ``usage`` are only ``principal``'s when it is given."""
        if what == "clients":
            return {"clients": [attrs.asdict(c) for c in await self.clients(principal)]}
        if what == "usage":
            return {"usage": [attrs.asdict(u) for u in await self.usage(principal)]}
        if what == "nodes":
            return {"nodes": [attrs.asdict(n) for n in await self.nodes()]}
        if what == "pools":
            return {"pools": [attrs.asdict(p) for p in await self.pools()]}
        return {
            "counts": await self.counts(),
            "exclusions": await self.exclusions(),
            "instances": await self.instances(),
        }
