"""``schedd bench --scenarios BLOB``: audio as a binary attachment against the same bytes base64
in the JSON payload.

Rules of this module:

* Parameters: ``SCALES[scale]["BLOB"]`` in :mod:`schedd.devtools.bench.scenarios`: ``bytes``
  of audio per job, ``jobs`` measured per mode after ``warmup`` more, ``rounds``.
* One daemon and its redis-server (the bench's
  :func:`~schedd.devtools.bench.running_daemon`), its ``max_frame`` raised so that the base64
  payload fits and its ``retention`` 1 s, so that Redis does not fill with the jobs' audio; one
  raw protocol node (heartbeating) and one raw protocol client in this process, on the bench's
  transport. Jobs run one after the other; the two modes alternate per round, so that a drift
  of the host's speed falls on both alike.
* Per mode: **bytes on the wire** per job, the payloads of the frames the client's ``submit``
  and the node's ``assign`` took (JSON and attachments; frame headers left out, a few bytes
  either way); **daemon CPU** per job (user + system seconds of the daemon process over the
  mode's jobs, from ``/proc``); **submit→node latency** (``submit`` sent to the node's
  ``assign`` and its last attachment received, both stamped in this process), p50 and p99.
* The ratios divide the base64 mode's figures by the attachment mode's: above 1 means the
  attachments win.
"""

from __future__ import annotations

import base64
import os
import time
from typing import Any, Final

import trio

import schedd.protocol as p
from schedd.devtools.bench.daemon import running_daemon
from schedd.devtools.bench.measure import POOL, _proc_times, percentiles
from schedd.devtools.bench.options import Options
from schedd.protocol.attachments import Blob, declared
from schedd.sdk.connect import open_channel
from schedd.transport.channel import Channel

__all__ = ["MODES", "run_blob", "table_rows"]

MODES: Final = ("attachment", "base64")
_MAX_FRAME: Final = 16 << 20  # the daemon's and the peers': a base64 payload fits
_TIMEOUT: Final = 30.0


class _Peer:
    """A raw protocol connection that counts the payload bytes it sends and receives."""

    def __init__(self, channel: Channel) -> None:
        self.channel = channel
        self.sent = 0
        self.received = 0

    async def send(self, message: p.Message, *blobs: bytes) -> None:
        frames = [p.encode(message), *(Blob(blob) for blob in blobs)]
        self.sent += sum(len(frame) for frame in frames)
        await self.channel.send_many(frames)

    async def receive(self) -> tuple[p.Message, list[bytes]]:
        raw = await self.channel.receive()
        data = raw.encode() if isinstance(raw, str) else raw
        self.received += len(data)
        message = p.decode(data)
        blobs = []
        for _ in declared(message):
            blob = await self.channel.receive()
            assert isinstance(blob, bytes)
            self.received += len(blob)
            blobs.append(bytes(blob))
        return message, blobs

    async def expect(self, kind: type[Any]) -> Any:
        message, _ = await self.receive()
        if not isinstance(message, kind):
            raise RuntimeError(f"expected {kind.TYPE}, got {message!r}")
        return message


async def _hello(channel: Channel, role: str) -> tuple[_Peer, float]:
    """The peer after its handshake, and the heartbeat interval its welcome gave."""
    peer = _Peer(channel)
    await peer.send(p.Hello(role=role, version=p.PROTOCOL_VERSION))  # type: ignore[arg-type]
    welcome = await peer.expect(p.Welcome)
    return peer, float(welcome.heartbeat_interval)


async def _heartbeats(channel: Channel, interval: float) -> None:
    """An idle node's heartbeat, every interval (a node that stops beating is lost)."""
    beat = p.encode(p.Heartbeat(inflight=0, running=[], load=0.0))
    while True:
        await trio.sleep(interval)
        await channel.send(beat)


async def _node(peer: _Peer, arrived: dict[str, float], size: int) -> None:
    """Answer every assign at once; stamp when it (and its attachments) arrived."""
    while True:
        message, blobs = await peer.receive()
        if not isinstance(message, p.Assign):
            continue
        arrived[message.job_id] = time.perf_counter()
        audio = blobs[0] if blobs else base64.b64decode(message.payload["audio"])
        if len(audio) != size:
            raise RuntimeError(f"job {message.job_id}: {len(audio)} bytes arrived, not {size}")
        await peer.channel.send_many([
            p.encode(p.Accept(job_id=message.job_id, attempt=message.attempt)),
            p.encode(p.Result(job_id=message.job_id, attempt=message.attempt, ok=True,
                              output={"n": len(audio)})),
        ])


async def _one(client: _Peer, mode: str, job_id: str, audio: bytes) -> None:
    if mode == "attachment":
        await client.send(p.Submit(
            job_id=job_id, pools=[POOL], payload={"lang": "en"},
            attachments=[p.Attachment(name="audio", size=len(audio), media_type="audio/wav")]),
            audio)
    else:
        await client.send(p.Submit(job_id=job_id, pools=[POOL], payload={
            "lang": "en", "audio": base64.b64encode(audio).decode()}))
    await client.expect(p.Accepted)
    done = await client.expect(p.Done)
    if not done.ok:
        raise RuntimeError(f"job {job_id} ended {done.state}")


async def run_blob(opt: Options, params: dict[str, Any]) -> dict[str, Any]:
    size, jobs, warmup = int(params["bytes"]), int(params["jobs"]), int(params["warmup"])
    audio = os.urandom(size)
    # finished jobs go at once: hundreds of megabytes of audio are not kept for an hour
    settings = [("jobs", "retention", "1"), *opt.settings,
                ("limits", "max_frame", str(_MAX_FRAME)),
                ("limits", "max_attachment", str(max(size, 1)))]
    totals: dict[str, dict[str, Any]] = {
        mode: {"latency": [], "wire": 0, "cpu": 0.0, "jobs": 0} for mode in MODES}
    async with running_daemon(settings, url=None) as daemon:
        url = daemon.url(opt.transport)
        async with open_channel(url, max_frame=_MAX_FRAME) as node_channel, \
                open_channel(url, max_frame=_MAX_FRAME) as client_channel, \
                trio.open_nursery() as nursery:
            node, interval = await _hello(node_channel, "node")
            await node.send(p.Register(node_id="blob-node", capacity=1, pools=[POOL]))
            await node.expect(p.Registered)
            arrived: dict[str, float] = {}
            nursery.start_soon(_node, node, arrived, size)
            nursery.start_soon(_heartbeats, node_channel, interval)
            client, _ = await _hello(client_channel, "client")
            for index in range(warmup):
                with trio.fail_after(_TIMEOUT):
                    await _one(client, MODES[index % 2], f"warm-{index}", audio)
            for round_no in range(int(params["rounds"])):
                for mode in MODES:
                    total = totals[mode]
                    cpu, sent, received = _proc_times(daemon.pid), client.sent, node.received
                    for index in range(jobs):
                        job_id = f"{mode}-{round_no}-{index}"
                        started = time.perf_counter()
                        with trio.fail_after(_TIMEOUT):
                            await _one(client, mode, job_id, audio)
                        total["latency"].append(arrived.pop(job_id) - started)
                    total["cpu"] += _proc_times(daemon.pid) - cpu
                    total["wire"] += (client.sent - sent) + (node.received - received)
                    total["jobs"] += jobs
            nursery.cancel_scope.cancel()
    results: dict[str, Any] = {"bytes": size, "transport": opt.transport}
    for mode, total in totals.items():
        count = max(total["jobs"], 1)
        results[mode] = {
            "jobs": total["jobs"],
            "wire_bytes_per_job": round(total["wire"] / count),
            "daemon_cpu_ms_per_job": round(total["cpu"] * 1000 / count, 3),
            "submit_to_node_ms": percentiles(total["latency"]),
        }
        opt.say(f"  {mode}: {results[mode]}")
    a, b = results["attachment"], results["base64"]
    results["base64_over_attachment"] = {
        "wire_bytes": round(b["wire_bytes_per_job"] / max(a["wire_bytes_per_job"], 1), 3),
        "daemon_cpu": round(b["daemon_cpu_ms_per_job"] / max(a["daemon_cpu_ms_per_job"], 1e-9),
                            3),
        "submit_to_node_p50": round(b["submit_to_node_ms"]["p50"]
                                    / max(a["submit_to_node_ms"]["p50"], 1e-9), 3),
    }
    ratios = results["base64_over_attachment"]
    results["attachments_win"] = all(value > 1 for value in ratios.values())
    opt.say(f"  base64 / attachment: {ratios}")
    return results


def table_rows(r: dict[str, Any]) -> list[tuple[str, str, str]]:
    """The BLOB rows of the bench table."""
    rows = []
    for mode in MODES:
        m = r[mode]
        rows.append((f"BLOB {mode}", f"{m['wire_bytes_per_job']} B/job, "
                     f"{m['daemon_cpu_ms_per_job']} ms CPU/job",
                     f"submit->node p50 {m['submit_to_node_ms']['p50']} ms"))
    ratios = r["base64_over_attachment"]
    rows.append(("BLOB base64/attachment", f"wire {ratios['wire_bytes']}x, CPU "
                 f"{ratios['daemon_cpu']}x", f"p50 {ratios['submit_to_node_p50']}x"))
    return rows

