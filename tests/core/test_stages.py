"""Stage chains and fan-out in the scripts, on the embedded store and a real redis-server."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
import trio

from schedd import errors
from schedd.core import (
    AssignDelivery,
    CancelJob,
    Core,
    DoneDelivery,
    JobSpec,
    ProgressDelivery,
    Queries,
    StageDoneDelivery,
)
from schedd.errors import ProtocolError
from schedd.session.stages import MAX_BRANCHES, MAX_STAGES, plan_stages
from schedd.store.base import Store
from tests.core.helpers import Recorder, make_core
from tests.core.test_instances import two_instances

DEFAULTS = {"ack_timeout": 5.0, "run_timeout": 30.0, "queue_timeout": 60.0, "max_attempts": 3}


def declared(_job_id: str, requirements: dict[str, Any], pools: list[str]) -> list[str]:
    return pools


def pipeline(job_id: str, stages: list[Any], payload: Any = None, **kw: Any) -> JobSpec:
    return JobSpec(pools=(), payload_json=orjson.dumps(payload).decode(), job_id=job_id,
                   stages_json=plan_stages(job_id, stages, declared, DEFAULTS), **kw)


def assigns(rec: Recorder) -> list[AssignDelivery]:
    return rec.of(AssignDelivery)


async def run(core: Core, a: AssignDelivery, output: Any = None, ok: bool = True) -> None:
    await core.result(a.job_id, node_id=a.node_id, attempt=a.attempt, ok=ok,
                      output_json=orjson.dumps(output).decode(), accepted=True,
                      error=None if ok else {"code": "E_MODEL", "message": "it broke"})


async def fleet(core: Core) -> dict[str, int]:
    epochs = {}
    for pool in ("asr", "mt", "tts"):
        reg = await core.register_node(node_id=f"{pool}-1", capacity=4, pools=[pool])
        epochs[reg.node_id] = reg.epoch
    return epochs


CHAIN = [{"pools": ["asr"]}, {"pools": ["mt"], "with": ["lang"]}, {"pools": ["tts"]}]


async def test_chain_hands_each_output_to_the_next_stage(store: Store) -> None:
    core, rec = await make_core(store)
    await fleet(core)
    sub = await core.submit(pipeline("u1", CHAIN, {"audio": "a", "lang": "de"}), principal="al")
    assert (sub.state, sub.duplicate) == ("running", False)
    (a1,) = assigns(rec)
    assert (a1.job_id, a1.node_id, orjson.loads(a1.payload_json)) == (
        "u1//0", "asr-1", {"audio": "a", "lang": "de"})
    await core.progress(a1.job_id, node_id="asr-1", attempt=1, data_json='{"partial": "he"}')
    (prog,) = rec.of(ProgressDelivery)
    assert (prog.job_id, prog.stage, prog.principal) == ("u1", "0", "al")
    await run(core, a1, {"text": "hello"})
    (sd1,) = rec.of(StageDoneDelivery)
    assert (sd1.job_id, sd1.stage, sd1.index, sd1.state, sd1.principal) == (
        "u1", "0", 0, "done", "al")
    assert orjson.loads(sd1.output_json) == {"text": "hello"}
    a2 = assigns(rec)[1]  # created by the result's own script call
    assert (a2.job_id, a2.node_id) == ("u1//1", "mt-1")
    assert orjson.loads(a2.payload_json) == {"text": "hello", "lang": "de"}
    await run(core, a2, {"text": "hallo"})
    a3 = assigns(rec)[2]
    assert orjson.loads(a3.payload_json) == {"text": "hallo"}  # no `with`: the output as is
    assert not rec.of(DoneDelivery)
    await run(core, a3, "wav")
    (done,) = rec.of(DoneDelivery)
    assert (done.job_id, done.state, done.ok, done.principal) == ("u1", "done", True, "al")
    out = orjson.loads(done.output_json)
    assert out["stages"] == {"0": {"text": "hello"}, "1": {"text": "hallo"}, "2": "wav"}
    assert out["branches"] == {"": {"state": "done", "stage": "2"}}
    assert len(rec.of(StageDoneDelivery)) == 3
    counts = await Queries(store, core.keys).counts()
    # a terminal state counts its retained jobs as listed: the three stages and the pipeline
    assert counts["running"] == 0 and counts["assigned"] == 0 and counts["done"] == 4
    assert counts["total:done"] == 3  # lifetime totals count jobs that ran: the stages


async def test_duplicate_submit_returns_the_pipeline(store: Store) -> None:
    core, rec = await make_core(store)
    await fleet(core)
    await core.submit(pipeline("u1", CHAIN), principal="al")
    again = await core.submit(pipeline("u1", CHAIN), principal="al")
    assert (again.duplicate, again.state) == (True, "running")
    assert len(assigns(rec)) == 1
    with pytest.raises(errors.NotYours):
        await core.submit(pipeline("u1", CHAIN), principal="eve")
    with pytest.raises(errors.NotYours):
        await core.follow("u1", principal="eve")
    with pytest.raises(errors.NotYours):
        await core.cancel("u1", principal="eve")
    for a in (assigns(rec)[0],):
        await run(core, a, 1)
    await run(core, assigns(rec)[1], 2)
    await run(core, assigns(rec)[2], 3)
    done = await core.submit(pipeline("u1", CHAIN), principal="al")
    assert done.duplicate and done.state == "done" and done.done is not None
    assert orjson.loads(done.done.output_json)["stages"] == {"0": 1, "1": 2, "2": 3}
    followed = await core.follow("u1", principal="al")
    assert followed.state == "done" and followed.done is not None


async def test_failing_stage_fails_the_pipeline_naming_it(store: Store) -> None:
    core, rec = await make_core(store)
    await fleet(core)
    stages = [{"pools": ["asr"]}, {"pools": ["mt"], "max_attempts": 1}, {"pools": ["tts"]}]
    await core.submit(pipeline("u1", stages), principal="al")
    await run(core, assigns(rec)[0], "t")
    await run(core, assigns(rec)[1], ok=False)
    (done,) = rec.of(DoneDelivery)
    assert (done.state, done.ok) == ("failed", False)
    assert done.error is not None and done.error["code"] == "E_STAGE_FAILED"
    assert "stage 1" in done.error["message"]
    out = orjson.loads(done.output_json)
    assert out["branches"][""]["stage"] == "1" and out["branches"][""]["state"] == "failed"
    assert len(assigns(rec)) == 2  # the third stage never started
    with pytest.raises(errors.InvalidState):
        await core.requeue("u1")


async def test_stage_node_dying_is_reassigned_and_the_chain_continues(store: Store) -> None:
    core, rec = await make_core(store)
    epochs = await fleet(core)
    reg = await core.register_node(node_id="mt-2", capacity=4, pools=["mt"])
    epochs["mt-2"] = reg.epoch
    await core.submit(pipeline("u1", CHAIN), principal="al")
    await run(core, assigns(rec)[0], "t")
    a2 = assigns(rec)[1]
    await core.node_offline(a2.node_id, epoch=epochs[a2.node_id], reason="died")
    a2b = assigns(rec)[2]
    assert a2b.job_id == "u1//1" and a2b.attempt == 2 and a2b.node_id != a2.node_id
    with pytest.raises(errors.StaleAttempt):
        await run(core, a2, "late")
    await run(core, a2b, "t2")
    await run(core, assigns(rec)[3], "t3")
    (done,) = rec.of(DoneDelivery)
    assert done.state == "done" and orjson.loads(done.output_json)["stages"]["1"] == "t2"


async def test_cancel_mid_chain_cancels_the_running_stage_and_the_rest(store: Store) -> None:
    core, rec = await make_core(store)
    await fleet(core)
    await core.submit(pipeline("u1", CHAIN), principal="al")
    await run(core, assigns(rec)[0], "t")
    a2 = assigns(rec)[1]
    assert await core.cancel("u1", principal="al") == "canceled"
    (cancel,) = rec.of(CancelJob)
    assert (cancel.job_id, cancel.node_id) == ("u1//1", "mt-1")
    (done,) = rec.of(DoneDelivery)
    assert done.state == "canceled"
    with pytest.raises(errors.StaleAttempt):
        await run(core, a2, "late")
    assert len(assigns(rec)) == 2 and len(rec.of(DoneDelivery)) == 1
    assert await core.cancel("u1", principal="al") == "canceled"  # a no-op now
    counts = await Queries(store, core.keys).counts()
    assert counts["running"] == 0 and counts["assigned"] == 0


FAN = [{"pools": ["asr"], "branches": {
    "de": [{"pools": ["mt"]}, {"pools": ["tts"]}],
    "fr": [{"pools": ["mt"], "max_attempts": 1}, {"pools": ["tts"]}],
}}]


async def test_fan_out_branch_failing_leaves_the_others(store: Store) -> None:
    core, rec = await make_core(store)
    await fleet(core)
    await core.submit(pipeline("u1", FAN), principal="al")
    await run(core, assigns(rec)[0], "text")
    by_id = {a.job_id: a for a in assigns(rec)}
    assert set(by_id) == {"u1//0", "u1//de/1", "u1//fr/1"}
    assert orjson.loads(by_id["u1//de/1"].payload_json) == "text"
    await run(core, by_id["u1//fr/1"], ok=False)
    await run(core, by_id["u1//de/1"], "hallo")
    assert not rec.of(DoneDelivery)
    tts = assigns(rec)[-1]
    assert tts.job_id == "u1//de/2"
    await run(core, tts, "wav-de")
    (done,) = rec.of(DoneDelivery)
    out = orjson.loads(done.output_json)
    assert out["branches"]["de"] == {"state": "done", "stage": "de/2"}
    assert out["branches"]["fr"]["state"] == "failed" and out["branches"]["fr"]["stage"] == "fr/1"
    assert out["stages"]["de/2"] == "wav-de"
    assert done.state == "failed" and done.error is not None
    assert [(s.stage, s.branch, s.state) for s in rec.of(StageDoneDelivery)] == [
        ("0", "", "done"), ("fr/1", "fr", "failed"), ("de/1", "de", "done"),
        ("de/2", "de", "done")]


async def test_fail_fast_cancels_the_sibling_branches(store: Store) -> None:
    core, rec = await make_core(store)
    await fleet(core)
    await core.submit(pipeline("u1", FAN, fail_fast=True), principal="al")
    await run(core, assigns(rec)[0], "text")
    by_id = {a.job_id: a for a in assigns(rec)}
    await run(core, by_id["u1//fr/1"], ok=False)
    (done,) = rec.of(DoneDelivery)
    assert done.state == "failed" and "fr/1" in (done.error or {}).get("message", "")
    assert [c.job_id for c in rec.of(CancelJob)] == ["u1//de/1"]
    with pytest.raises(errors.StaleAttempt):
        await run(core, by_id["u1//de/1"], "late")
    assert len(rec.of(DoneDelivery)) == 1


async def test_stage_queued_without_a_free_slot_starts_when_one_frees(store: Store) -> None:
    core, rec = await make_core(store)
    await core.register_node(node_id="asr-1", capacity=1, pools=["asr"])
    await core.submit(pipeline("u1", [{"pools": ["asr"]}, {"pools": ["mt"]}]), principal="al")
    await run(core, assigns(rec)[0], "t")
    assert len(assigns(rec)) == 1  # stage 1 waits in the mt queue
    await core.register_node(node_id="mt-1", capacity=1, pools=["mt"])
    a2 = assigns(rec)[1]
    assert a2.job_id == "u1//1"
    await run(core, a2, "x")
    assert rec.of(DoneDelivery)[0].state == "done"


async def test_first_stage_refused_stores_nothing(store: Store) -> None:
    core, _rec = await make_core(store, queue=False)
    with pytest.raises(errors.NoCapacity):
        await core.submit(pipeline("u1", CHAIN), principal="al")
    assert await Queries(store, core.keys).job("u1") is None
    # with attachments too: neither the pipeline nor their bytes stay
    with pytest.raises(errors.NoCapacity):
        await core.submit(pipeline("u1", CHAIN, attachments=(("a.wav", "audio/wav", b"xy"),)),
                          principal="al")
    assert await store.execute("EXISTS", core.keys.job("u1"), core.keys.job_blobs("u1")) == 0


def test_hostile_stages_are_refused_with_specific_codes() -> None:
    def code(stages: Any, resolve: Any = declared) -> str:
        with pytest.raises(ProtocolError) as exc:
            plan_stages("u", stages, resolve, DEFAULTS)
        return exc.value.code

    assert code([{"pools": ["a"]}] * (MAX_STAGES + 1)) == "E_TOO_MANY_STAGES"
    many = {f"b{i}": [{"pools": ["a"]}] for i in range(MAX_BRANCHES + 1)}
    assert code([{"pools": ["a"], "branches": many}]) == "E_TOO_MANY_BRANCHES"
    assert code([{"pools": []}]) == "E_BAD_STAGE"
    assert code([{"pools": ["a"]}], lambda *a: []) == "E_BAD_STAGE"
    assert code([]) == "E_BAD_STAGE"
    assert code(["x"]) == "E_BAD_STAGE"
    assert code([{"pools": ["a"], "bogus": 1}]) == "E_BAD_STAGE"
    assert code([{"pools": ["a"], "run_timeout": -1}]) == "E_BAD_STAGE"
    assert code([{"pools": ["a"], "branches": {"x": [{"pools": ["a"]}]}},
                 {"pools": ["a"]}]) == "E_BAD_STAGE"
    assert code([{"pools": ["a"], "branches": {"x/y": [{"pools": ["a"]}]}}]) == "E_BAD_STAGE"
    deep = [{"pools": ["a"]}] * 4 + [{"pools": ["a"], "branches": {
        "x": [{"pools": ["a"]}] * 4}}]
    assert code(deep) == "E_TOO_MANY_STAGES"  # the branch counts the stages before it


async def test_next_stage_that_can_neither_run_nor_queue_fails_its_branch(store: Store) -> None:
    core, rec = await make_core(store, queue=False)
    await core.register_node(node_id="asr-1", capacity=1, pools=["asr"])
    await core.submit(pipeline("u1", [{"pools": ["asr"]}, {"pools": ["mt"]}]), principal="al")
    await run(core, assigns(rec)[0], "t")
    (done,) = rec.of(DoneDelivery)
    assert done.state == "failed" and "stage 1" in (done.error or {}).get("message", "")
    branch = orjson.loads(done.output_json)["branches"][""]
    assert branch["stage"] == "1" and branch["error"]["code"] == "E_NO_CAPACITY"
    assert await Queries(store, core.keys).job("u1//1") is None


async def test_a_finished_pipeline_is_removed_after_its_retention(store: Store) -> None:
    core, rec = await make_core(store, retention=0.001)
    await fleet(core)
    await core.submit(pipeline("u1", [{"pools": ["asr"]}]), principal="al")
    await run(core, assigns(rec)[0], "t")
    assert rec.of(DoneDelivery)[0].state == "done"
    await trio.sleep(0.01)
    await core.reap()
    queries = Queries(store, core.keys)
    assert await queries.job("u1") is None and await queries.job("u1//0") is None


async def test_stage_done_and_the_next_stage_cross_instances(store_url: str) -> None:
    """The client's instance (A) gets every stage_done and the done through its inbox; the
    next stage's assign reaches the instance that owns its node (B), from B's own result."""
    async with two_instances(store_url) as ((a, rec_a, _), (b, rec_b, _)):
        for pool in ("asr", "mt"):
            await b.register_node(node_id=f"{pool}-1", capacity=1, pools=[pool])
        await a.submit(pipeline("u1", [{"pools": ["asr"]}, {"pools": ["mt"]}]),
                       principal="al")
        (a1,) = await rec_b.wait_for(AssignDelivery)
        await run(b, a1, "t")
        a2 = (await rec_b.wait_for(AssignDelivery, 2))[1]
        assert a2.job_id == "u1//1"
        await run(b, a2, "u")
        await rec_a.wait_for(DoneDelivery)
        assert [s.stage for s in rec_a.of(StageDoneDelivery)] == ["0", "1"]
        assert not rec_b.of(StageDoneDelivery) and not rec_b.of(DoneDelivery)


async def test_a_stage_missing_its_deadline_at_its_last_attempt_fails_the_pipeline(
    store: Store,
) -> None:
    core, rec = await make_core(store)
    await fleet(core)
    stages = [{"pools": ["asr"], "ack_timeout": 0.001, "max_attempts": 1}, {"pools": ["mt"]}]
    await core.submit(pipeline("u1", stages), principal="al")
    await trio.sleep(0.01)  # the ack deadline passes: the reaper ends the attempt
    await core.reap()
    (done,) = rec.of(DoneDelivery)
    assert done.state == "failed" and "stage 0" in (done.error or {}).get("message", "")
    (stage,) = rec.of(StageDoneDelivery)
    assert stage.state == "failed" and (stage.error or {}).get("code") == "E_ATTEMPTS"
    assert len(rec.of(CancelJob)) == 1 and len(assigns(rec)) == 1


async def test_a_sessions_stage_keeps_to_the_node_that_served_it(store: Store) -> None:
    core, rec = await make_core(store)
    for name in ("asr-1", "asr-2"):
        await core.register_node(node_id=name, capacity=4, pools=["asr"])
    for name in ("mt-1", "mt-2"):
        await core.register_node(node_id=name, capacity=4, pools=["mt"])
    chain = [{"pools": ["asr"]}, {"pools": ["mt"]}]
    for utterance in range(4):
        await core.submit(pipeline(f"u{utterance}", chain, session_id="talk-1"),
                          principal="al")
        await run(core, assigns(rec)[-1], "t")
        await run(core, assigns(rec)[-1], "u")
        # a job between utterances moves the turn of equal nodes on
        await core.submit(JobSpec(pools=("elsewhere",), job_id=f"j{utterance}"),
                          principal="al")
    by_stage: dict[str, set[str]] = {}
    for a in assigns(rec):
        by_stage.setdefault(a.job_id.split("//")[1], set()).add(a.node_id)
    assert len(by_stage["0"]) == 1 and len(by_stage["1"]) == 1
    assert len(rec.of(DoneDelivery)) == 4


async def test_cancel_while_a_stage_is_queued_and_a_followed_stage(store: Store) -> None:
    core, rec = await make_core(store)
    await core.register_node(node_id="asr-1", capacity=1, pools=["asr"])
    await core.submit(pipeline("u1", [{"pools": ["asr"]}, {"pools": ["mt"]}]), principal="al")
    with pytest.raises(errors.NotYours):
        await core.follow("u1//0", principal="eve")
    followed = await core.follow("u1//0", principal="al")  # a stage's own job id
    assert followed.state == "assigned"
    await run(core, assigns(rec)[0], "t")
    stage_done = [d for d in rec.of(DoneDelivery) if d.job_id == "u1//0"]
    assert len(stage_done) == 1 and stage_done[0].ok
    queries = Queries(store, core.keys)
    assert (await queries.counts())["queued"] == 1  # stage 1 waits for an mt node
    assert await core.cancel("u1", principal="al") == "canceled"
    assert (await queries.counts())["queued"] == 0
    info = await queries.job("u1//1")
    assert info is not None and info.state == "canceled"
    pipeline_done = [d for d in rec.of(DoneDelivery) if d.job_id == "u1"]
    assert len(pipeline_done) == 1 and pipeline_done[0].state == "canceled"
    await core.register_node(node_id="mt-1", capacity=1, pools=["mt"])
    assert len(assigns(rec)) == 1  # nothing left to run


async def test_a_pipeline_of_an_ordered_session_ends_in_its_seq_order(store: Store) -> None:
    core, rec = await make_core(store)
    await fleet(core)
    await core.submit(pipeline("u1", CHAIN, {"lang": "de"}, session_id="call", seq=1),
                      principal="alice")
    first = await core.submit(JobSpec(pools=("asr",), payload_json="{}", job_id="u0",
                                      session_id="call", seq=0), principal="alice")
    assert first.state == "assigned"
    # the pipeline (seq 1) runs its three stages to its end before the job of seq 0 ends
    for name in ("0", "1", "2"):
        (stage,) = [a for a in assigns(rec) if a.job_id == f"u1//{name}"]
        await run(core, stage, {"text": "x"})
    key = core.keys.inbox(core.instance)

    async def delivered() -> list[str]:
        for entry_id, fields in await store.execute("XRANGE", key, "-", "+"):
            core.dispatch(fields[1])
            await store.execute("XDEL", key, entry_id)
        return [d.job_id for d in rec.of(DoneDelivery) if d.seq is not None]

    assert await delivered() == []  # its done waits for seq 0
    (job0,) = [a for a in assigns(rec) if a.job_id == "u0"]
    await run(core, job0, "zero")
    assert await delivered() == ["u0", "u1"]
    done = [d for d in rec.of(DoneDelivery) if d.job_id == "u1"][-1]
    assert (done.state, done.seq, done.session_id) == ("done", 1, "call")
    with pytest.raises(errors.DuplicateSeq):  # its seq is taken, as a job's would be
        await core.submit(pipeline("u9", CHAIN, {}, session_id="call", seq=1),
                          principal="alice")


async def test_attachments_flow_through_the_stages_to_the_pipelines_done(store: Store) -> None:
    core, rec = await make_core(store)
    await fleet(core)
    audio = bytes(range(256)) * 4
    await core.submit(pipeline("u1", CHAIN, {"lang": "de"},
                               attachments=(("in.wav", "audio/wav", audio),)),
                      principal="alice")
    blobs = core.keys.job_blobs

    def stage(name: str) -> AssignDelivery:
        (a,) = [a for a in assigns(rec) if a.job_id == f"u1//{name}"]
        return a

    # stage 0 gets the submit's attachments as its input
    assert orjson.loads(stage("0").attachments_json)[0]["name"] == "in.wav"
    assert await store.execute("HGET", blobs("u1//0"), "in:in.wav") == audio
    await core.result("u1//0", node_id=stage("0").node_id, attempt=1, ok=True,
                      output_json='{"text": "x"}', accepted=True,
                      attachments=[("asr.json", "application/json", b"{}")])
    # the next stage gets the previous stage's output attachments as its input
    assert [a["name"] for a in orjson.loads(stage("1").attachments_json)] == ["asr.json"]
    await run(core, stage("1"), {"text": "y"})
    assert stage("2").attachments_json in ("", "[]")  # stage 1 returned none
    tts = b"\x00\xff" * 100
    await core.result("u1//2", node_id=stage("2").node_id, attempt=1, ok=True,
                      output_json='{"wav": true}', accepted=True,
                      attachments=[("tts.wav", "audio/wav", tts)])
    done = [d for d in rec.of(DoneDelivery) if d.job_id == "u1"][-1]
    assert done.state == "done"
    assert [a["name"] for a in orjson.loads(done.attachments_json)] == ["tts.wav"]
    assert await store.execute("HGET", blobs("u1"), "out:tts.wav") == tts
