"""Jobs per state: the scripts count the non-terminal states in ``counts``; a terminal state's
count is the size of its ``jobs_in`` index (Queries.counts), so it stays right through retries,
cancels, requeues, queue timeouts and removal at retention, on both stores."""

from __future__ import annotations

from typing import Any

import orjson
import trio

from schedd.core import AssignDelivery, JobSpec, Queries
from schedd.store.base import Store
from schedd.store.keys import Keys
from schedd.store.scripts import Script, _lua_files

from .helpers import make_core, spec

TERMINAL = ("done", "failed", "canceled", "timed_out")


async def _counts(store: Store, q: Queries) -> dict[str, int]:
    counts = await q.counts()
    return {k: v for k, v in counts.items() if v}


async def test_counts_follow_every_path_and_removal(store: Store) -> None:
    core, rec = await make_core(store, retention=0.3)
    q = Queries(store, core.keys)
    await core.register_node(node_id="n1", capacity=1, pools=["p"])
    # done at once
    await core.submit(spec("p", job_id="a"), principal="al")
    await core.result("a", node_id="n1", attempt=1, ok=True, output_json="1", accepted=True)
    # rejected on its only node: queued for another attempt, then canceled in the queue
    await core.submit(spec("p", job_id="b", max_attempts=2), principal="al")
    await core.reject("b", node_id="n1", attempt=1, reason="busy")
    assert await _counts(store, q) == {"done": 1, "queued": 1, "total:submitted": 2,
                                       "total:done": 1}
    await core.cancel("b", principal="al")
    # failed at its last attempt, then put back to work by an operator, and done
    await core.submit(spec("p", job_id="c", max_attempts=1), principal="al")
    await core.reject("c", node_id="n1", attempt=1, reason="no")
    assert (await q.counts())["failed"] == 1
    await core.requeue("c")
    assert (await q.counts())["failed"] == 0
    (again,) = [d for d in rec.of(AssignDelivery) if d.job_id == "c" and d.attempt == 2]
    # a job that waits behind it times out in the queue
    await core.submit(spec("p", job_id="d", queue_timeout=0.05), principal="al")
    await trio.sleep(0.1)
    await core.reap()
    await core.result("c", node_id="n1", attempt=again.attempt, ok=True, output_json="2",
                      accepted=True)
    expected = {"done": 2, "canceled": 1, "timed_out": 1, "total:submitted": 4,
                "total:done": 2, "total:failed": 1, "total:canceled": 1, "total:timed_out": 1}
    assert await _counts(store, q) == expected
    # the counts hash holds no terminal state: those are the indices' sizes
    raw = await store.execute("HGETALL", core.keys.counts)
    fields = {raw[i].decode() for i in range(0, len(raw), 2)}
    assert not fields & set(TERMINAL)
    for state in ("queued", "assigned", "running", "delayed"):
        assert await store.execute("HGET", core.keys.counts, state) in (None, b"0"), state
    usage = await store.execute("HMGET", core.keys.usage("al"), "queued", "inflight", "bytes")
    assert usage == [b"0", b"0", b"0"]
    # removal at retention: the terminal counts go, the lifetime totals stay
    await trio.sleep(0.35)
    assert (await core.reap())[2] == 4
    assert await _counts(store, q) == {k: v for k, v in expected.items()
                                       if k.startswith("total:")}


async def test_removal_finds_every_node_an_attempt_ran_on(store: Store) -> None:
    core, _ = await make_core(store, retention=0.1)
    k = core.keys
    await core.register_node(node_id="n1", capacity=1, pools=["p"])
    # attempt 1 on n1 rejected, queued (no node now), then timed out in the queue: its node
    # field is empty, n1 is in its tried set only
    await core.submit(spec("p", job_id="x", max_attempts=2, queue_timeout=0.05))
    await core.reject("x", node_id="n1", attempt=1, reason="no")
    assert await store.execute("HGET", k.job("x"), "node") == b""
    # failed at its only attempt: its node field names the node
    await core.submit(spec("p", job_id="y", max_attempts=1))
    await core.reject("y", node_id="n1", attempt=1, reason="no")
    await trio.sleep(0.06)
    await core.reap()
    assert await store.execute("ZRANGE", k.jobs_on("n1"), 0, -1) == [b"x", b"y"]
    await trio.sleep(0.15)
    assert (await core.reap())[2] == 2
    assert await store.execute("EXISTS", k.jobs_on("n1")) == 0
    assert await store.execute("ZCARD", k.jobs_in("timed_out")) == 0


#: job_result's read of the job, then an accept that came with the result: the job passes
#: through running (pass_state) and ends done, or, when ARGV[2] is 'later', fails retryably and
#: waits its backoff (retry_later)
PASS_THROUGH = """
CALLER = 'A'
local job_id = ARGV[1]
local job = hmget(K.job(job_id), {'state', 'node', 'attempt', 'client', 'pools', 'retain_ms',
  't_sub', 't_asg', 't_acc', 'principal', 'trace', 'max_attempts', 'backoff', 'pipe', 'stage',
  'session', 'oseq'})
local now = now_ms()
local _, node_now = release(job_id, job)
pass_state(job_id, job, 'running')
if ARGV[2] == 'later' then
  retry_later(job_id, job, job.node, 'try elsewhere', now, 0)
else
  finish(job_id, job, 'done', {ok = '1', output = '"ok"', error = 'null', t_acc = now}, now)
end
return EVENTS
"""


async def _pass_through(store: Store, job_id: str, then: str) -> list[Any]:
    library, _ = _lua_files()
    script = Script("pass", PASS_THROUGH, library, "unused")
    events = await store.execute("EVAL", script.source, 1, Keys("t").counts, job_id, then)
    return [orjson.loads(e)[2:4] for e in events]


async def test_a_state_passed_through_is_told_but_not_counted(store: Store) -> None:
    core, _ = await make_core(store)
    k = core.keys
    q = Queries(store, k)
    await core.register_node(node_id="n1", capacity=1, pools=["p"])
    await core.register_node(node_id="n2", capacity=1, pools=["p"])
    await core.submit(spec("p", job_id="a"), principal="al")
    assert await _pass_through(store, "a", "done") == [["running", 1], ["done", 1]]
    counts = await q.counts()
    assert (counts["assigned"], counts["running"], counts["done"]) == (0, 0, 1)
    assert await store.execute("HGET", k.counts, "running") is None  # never moved
    assert await store.execute("HGET", k.usage("al"), "inflight") == b"0"
    # passed through running, then waiting its backoff: counted from assigned to delayed
    await core.submit(spec("p", job_id="b", max_attempts=2), principal="al")
    assert await _pass_through(store, "b", "later") == [["running", 1], ["delayed", 1]]
    counts = await q.counts()
    assert (counts["assigned"], counts["running"], counts["delayed"]) == (0, 0, 1)
    assert await store.execute("HMGET", k.usage("al"), "inflight", "queued") == [b"0", b"1"]


async def test_a_finished_job_records_the_bytes_it_keeps(store: Store) -> None:
    """rbytes: output, error and the attachments it keeps (its input's go when it ends done),
    whether finish found att_bytes already read (a result with attachments) or not."""
    core, _ = await make_core(store)
    k = core.keys
    await core.register_node(node_id="n1", capacity=3, pools=["p"])
    audio_in, audio_out = bytes(300), bytes(1000)
    await core.submit(JobSpec(pools=("p",), job_id="a", payload_json='"x"',
                              attachments=(("in.wav", "audio/wav", audio_in),)))
    await core.result("a", node_id="n1", attempt=1, ok=True, output_json='"text"', accepted=True,
                      attachments=[("out.wav", "audio/wav", audio_out)])
    expected = len('"text"') + len("null") + len(audio_out)
    assert await store.execute("HGET", k.job("a"), "rbytes") == str(expected).encode()
    assert await store.execute("HGET", k.retained, "") == str(expected).encode()
    # failed: the payload and the input attachment stay (an operator may requeue it)
    await core.submit(JobSpec(pools=("p",), job_id="b", payload_json='"x"',
                              attachments=(("in.wav", "audio/wav", audio_in),)))
    await core.result("b", node_id="n1", attempt=1, ok=False, error={"code": "E", "message": "m"})
    error = await store.execute("HGET", k.job("b"), "error")
    assert await store.execute("HGET", k.job("b"), "rbytes") == str(
        len("null") + len(error) + len('"x"') + len(audio_in)).encode()


async def test_retention_evicts_in_finish_order_not_submit_order(store: Store) -> None:
    """ended_of orders a principal's finished jobs by finish ms, then submit order within one ms:
    the job that finished first goes first, even when it was submitted after another; an entry
    an earlier version scored by its counter (a small number) counts as older than any."""
    core, _ = await make_core(store, retain_count=2)
    k = core.keys
    await core.register_node(node_id="n1", capacity=3, pools=["p"])
    for job_id in ("a", "b", "c"):
        await core.submit(spec("p", job_id=job_id), principal="al")
    await core.result("b", node_id="n1", attempt=1, ok=True, accepted=True)
    await trio.sleep(0.002)
    await core.result("a", node_id="n1", attempt=1, ok=True, accepted=True)
    await trio.sleep(0.002)
    await core.result("c", node_id="n1", attempt=1, ok=True, accepted=True)
    assert await store.execute("EXISTS", k.job("b")) == 0
    assert await store.execute("ZRANGE", k.ended_of("al"), 0, -1) == [b"a", b"c"]
    # the score: finish ms, then submit order (seq) within one ms
    flat = await store.execute("ZRANGE", k.ended_of("al"), 0, -1, "WITHSCORES")
    scores = [int(s) for s in flat[1::2]]
    t_fin = int(await store.execute("HGET", k.job("c"), "t_fin"))
    seq = int(await store.execute("HGET", k.job("c"), "seq"))
    assert scores[1] == t_fin * 1000 + seq % 1000
    # an entry of an earlier version (its counter) is older than every one scored by time
    await store.execute("ZADD", k.ended_of("al"), 7, "a")
    await core.submit(spec("p", job_id="d"), principal="al")
    await core.result("d", node_id="n1", attempt=1, ok=True, accepted=True)
    assert await store.execute("ZRANGE", k.ended_of("al"), 0, -1) == [b"c", b"d"]
