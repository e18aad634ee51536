"""Pipelines on the wire (docs/protocol.md, "Pipelines"): one submit, stage_done per stage,
one done with every output; follow/status/cancel by the owner only; refused stages. Over both
transports and both stores."""

from __future__ import annotations

from typing import Any

import pytest

from schedd import protocol as p
from tests.daemon.harness import Daemon
from tests.daemon.test_follow import Wire, daemon, expect, send, until_pong, wire


@pytest.fixture(params=["tcp", "ws"])
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def node(d: Daemon, transport: str, node_id: str, pool: str) -> Wire:
    peer = await wire(d, transport, "node", "node-secret")
    await send(peer, p.Register(node_id=node_id, capacity=2, pools=[pool]))
    await expect(peer, p.Registered)
    return peer


async def finish(peer: Wire, output: Any, ok: bool = True) -> p.Assign:
    assign: p.Assign = await expect(peer, p.Assign)
    await send(peer, p.Accept(job_id=assign.job_id, attempt=assign.attempt),
               p.Progress(job_id=assign.job_id, attempt=assign.attempt, data={"at": output}),
               p.Result(job_id=assign.job_id, attempt=assign.attempt, ok=ok,
                        output=output if ok else None,
                        error=None if ok else p.ErrorInfo(code="E_MODEL", message="broke")))
    await until_pong(peer)
    return assign


STAGES: list[Any] = [{"pools": ["asr"]}, {"pools": ["mt"], "with": ["lang"]},
                     {"pools": ["tts"]}]


async def test_a_pipeline_runs_on_one_submit(store_url: str, transport: str) -> None:
    async with daemon(store_url) as d:
        asr, mt, tts = [await node(d, transport, f"{x}-1", x) for x in ("asr", "mt", "tts")]
        alice = await wire(d, transport, "client", "alice-secret")
        bob = await wire(d, transport, "client", "bob-secret")
        await send(alice, p.Submit(job_id="u1", stages=STAGES,
                                   payload={"audio": "..", "lang": "de"}, ref="s"))
        accepted = await expect(alice, p.Accepted)
        assert (accepted.job_id, accepted.state) == ("u1", "running")
        a1 = await finish(asr, {"text": "hello"})
        assert a1.job_id == "u1//0" and a1.payload == {"audio": "..", "lang": "de"}
        got = await until_pong(alice)
        assert [type(m) for m in got] == [p.Progress, p.StageDone]
        assert isinstance(got[0], p.Progress) and got[0].stage == "0" and got[0].job_id == "u1"
        assert isinstance(got[1], p.StageDone) and got[1].output == {"text": "hello"}
        # another principal sees nothing of it and may not touch it
        await send(bob, p.Follow(job_id="u1", ref="f"), p.Status(job_id="u1", ref="st"),
                   p.Cancel(job_id="u1", ref="c"), p.Submit(job_id="u1", stages=STAGES))
        refused = await until_pong(bob)
        assert [(type(m), getattr(m, "code", None)) for m in refused] == [
            (p.Error, "E_NOT_YOURS")] * 4
        a2 = await finish(mt, {"text": "hallo"})
        assert a2.payload == {"text": "hello", "lang": "de"}  # stage 0's output, with lang
        await send(alice, p.Status(job_id="u1", ref="st"))
        got = await until_pong(alice)
        assert [type(m) for m in got] == [p.Progress, p.StageDone, p.Job]
        assert isinstance(got[2], p.Job) and got[2].state == "running"
        await finish(tts, "wav")
        got = await until_pong(alice)
        assert [type(m) for m in got] == [p.Progress, p.StageDone, p.Done]
        done = got[2]
        assert isinstance(done, p.Done) and done.ok
        assert done.output["stages"] == {"0": {"text": "hello"}, "1": {"text": "hallo"},
                                         "2": "wav"}
        await send(alice, p.Submit(job_id="u1", stages=STAGES))
        again = await until_pong(alice)
        assert [type(m) for m in again] == [p.Accepted, p.Done]
        assert isinstance(again[0], p.Accepted) and again[0].duplicate


async def test_follow_delivers_later_stages_and_cancel_ends_it(
    store_url: str, transport: str,
) -> None:
    async with daemon(store_url) as d:
        asr, mt = [await node(d, transport, f"{x}-1", x) for x in ("asr", "mt")]
        first = await wire(d, transport, "client", "alice-secret")
        await send(first, p.Submit(job_id="u2", stages=STAGES[:2], payload={"lang": "fr"}))
        await expect(first, p.Accepted)
        second = await wire(d, transport, "client", "alice-secret")
        await send(second, p.Follow(job_id="u2", ref="f"))
        assert (await expect(second, p.Job)).state == "running"
        await finish(asr, "t")
        got = await until_pong(second)
        assert [type(m) for m in got] == [p.Progress, p.StageDone]
        assign: p.Assign = await expect(mt, p.Assign)
        await send(second, p.Cancel(job_id="u2", ref="c"))
        cancel = await expect(mt, p.Cancel)
        assert cancel.job_id == assign.job_id == "u2//1"
        done = await expect(second, p.Done)
        assert done.state == "canceled"


async def test_a_failing_stage_fails_the_pipeline(store_url: str, transport: str) -> None:
    async with daemon(store_url) as d:
        asr = await node(d, transport, "asr-1", "asr")
        alice = await wire(d, transport, "client", "alice-secret")
        await send(alice, p.Submit(job_id="u3", stages=[{"pools": ["asr"], "max_attempts": 1},
                                                         {"pools": ["mt"]}]))
        await expect(alice, p.Accepted)
        await finish(asr, None, ok=False)
        got = await until_pong(alice)
        assert [type(m) for m in got] == [p.Progress, p.StageDone, p.Done]
        stage, done = got[1], got[2]
        assert isinstance(stage, p.StageDone) and stage.state == "failed"
        assert stage.error is not None and stage.error.code == "E_MODEL"
        assert isinstance(done, p.Done) and done.state == "failed"
        assert done.error is not None and done.error.code == "E_STAGE_FAILED"
        assert "stage 0" in done.error.message


async def test_hostile_stages_are_refused(store_url: str, transport: str) -> None:
    async with daemon(store_url) as d:
        alice = await wire(d, transport, "client", "alice-secret")
        one = {"pools": ["a"]}
        await send(alice,
                   p.Submit(job_id="h1", stages=[one] * 9, ref="1"),
                   p.Submit(job_id="h2", stages=[{"pools": ["a"], "branches": {
                       f"b{i}": [one] for i in range(17)}}], ref="2"),
                   p.Submit(job_id="h3", stages=[{"requirements": {"x": 1}}], ref="3"),
                   p.Submit(job_id="h4", stages=[{"pools": "a"}], ref="4"),
                   p.Submit(job_id="h//5", stages=[one], ref="5"),
                   p.Submit(job_id="h6", pools=["a"], ref="6"),
                   # what a pipeline does not take is refused, not ignored
                   p.Submit(job_id="h7", stages=[one], delay=5.0, ref="7"),
                   p.Submit(job_id="h8", stages=[one], not_before=1.0, ref="8"),
                   p.Submit(job_id="h9", stages=[one], cost=2, ref="9"))
        got = await until_pong(alice)
        errors = {m.ref: m.code for m in got if isinstance(m, p.Error)}
        assert errors == {"1": "E_TOO_MANY_STAGES", "2": "E_TOO_MANY_BRANCHES",
                          "3": "E_BAD_STAGE", "4": "E_BAD_STAGE", "5": "E_BAD_ARG",
                          "7": "E_BAD_ARG", "8": "E_BAD_ARG", "9": "E_BAD_ARG"}
        assert "takes no cost" in next(m.message for m in got
                                       if isinstance(m, p.Error) and m.ref == "9")
        await send(alice, p.Status(job_id="h1", ref="s"))
        (missing,) = await until_pong(alice)
        assert isinstance(missing, p.Error) and missing.code == "E_NO_JOB"


async def test_langset_requirements_resolve_per_stage(store_url: str, transport: str) -> None:
    async with daemon(store_url, SCHEDD_PLUGINS__ENABLED='["langset"]') as d:
        asr = await node(d, transport, "asr-1", "asr")
        mts = {}
        for lang in ("de", "fr"):
            mt = await wire(d, transport, "node", "node-secret")
            await send(mt, p.Register(node_id=f"mt-{lang}", capacity=1, capabilities={
                "asr_langs": ["en"], "semantic_langs": ["en", lang]}))
            assert f"en>{lang}" in (await expect(mt, p.Registered)).pools
            mts[lang] = mt
        alice = await wire(d, transport, "client", "alice-secret")
        await send(alice, p.Submit(job_id="u4", stages=[{"pools": ["asr"], "branches": {
            lang: [{"requirements": {"src_lang": "en", "tgt_lang": lang}}]
            for lang in ("de", "fr")}}]))
        await expect(alice, p.Accepted)
        await finish(asr, "hello")
        assert (await finish(mts["de"], "hallo")).job_id == "u4//de/1"
        assert (await finish(mts["fr"], "bonjour")).job_id == "u4//fr/1"
        got = await until_pong(alice)
        done = got[-1]
        assert isinstance(done, p.Done) and done.ok, got
        assert done.output["stages"] == {"0": "hello", "de/1": "hallo", "fr/1": "bonjour"}
        assert set(done.output["branches"]) == {"de", "fr"}
        stage_done = [m for m in got if isinstance(m, p.StageDone)]
        assert {(m.stage, m.branch) for m in stage_done} == {
            ("0", None), ("de/1", "de"), ("fr/1", "fr")}
        await send(alice, p.Submit(job_id="u5", stages=[
            {"pools": ["asr"]}, {"requirements": {"src_lang": "en"}}], ref="bad"))
        (refused,) = await until_pong(alice)
        assert isinstance(refused, p.Error) and refused.code == "E_BAD_ARG"
        assert "tgt_lang" in refused.message


async def test_a_stage_nodes_connection_dying_moves_the_stage(
    store_url: str, transport: str,
) -> None:
    async with daemon(store_url) as d:
        asr = await node(d, transport, "asr-1", "asr")
        mt1 = await node(d, transport, "mt-1", "mt")
        alice = await wire(d, transport, "client", "alice-secret")
        await send(alice, p.Submit(job_id="u6", stages=STAGES[:2], payload={"lang": "de"}))
        await expect(alice, p.Accepted)
        await finish(asr, {"text": "hi"})
        first: p.Assign = await expect(mt1, p.Assign)
        assert (first.job_id, first.attempt) == ("u6//1", 1)
        mt2 = await node(d, transport, "mt-2", "mt")
        await mt1.aclose()  # the node dies holding the stage
        again = await finish(mt2, {"text": "hallo"})
        assert (again.job_id, again.attempt) == ("u6//1", 2)
        assert again.payload == {"text": "hi", "lang": "de"}
        got = await until_pong(alice)
        done = got[-1]
        assert isinstance(done, p.Done) and done.ok, got
        assert done.output["stages"]["1"] == {"text": "hallo"}


FAN: list[Any] = [{"pools": ["asr"], "branches": {
    "de": [{"pools": ["mt"], "max_attempts": 1}], "fr": [{"pools": ["tts"]}]}}]


@pytest.mark.parametrize("fail_fast", [False, True])
async def test_fan_out_with_a_failing_branch(
    store_url: str, transport: str, fail_fast: bool,
) -> None:
    async with daemon(store_url) as d:
        asr, mt, tts = [await node(d, transport, f"{x}-1", x) for x in ("asr", "mt", "tts")]
        alice = await wire(d, transport, "client", "alice-secret")
        await send(alice, p.Submit(job_id="u7", stages=FAN, fail_fast=fail_fast))
        await expect(alice, p.Accepted)
        await finish(asr, "text")
        await finish(mt, None, ok=False)  # branch de fails
        fr: p.Assign = await expect(tts, p.Assign)
        if fail_fast:
            assert (await expect(tts, p.Cancel)).job_id == fr.job_id == "u7//fr/1"
        else:
            await send(tts, p.Accept(job_id=fr.job_id, attempt=fr.attempt),
                       p.Result(job_id=fr.job_id, attempt=fr.attempt, ok=True, output="bonjour"))
            await until_pong(tts)
        got = await until_pong(alice)
        done = got[-1]
        assert isinstance(done, p.Done) and done.state == "failed", got
        branches = done.output["branches"]
        assert branches["de"]["state"] == "failed" and branches["de"]["stage"] == "de/1"
        if fail_fast:
            assert "fr" not in branches
        else:
            assert branches["fr"] == {"state": "done", "stage": "fr/1"}
            assert done.output["stages"]["fr/1"] == "bonjour"
        stages = [(m.stage, m.state) for m in got if isinstance(m, p.StageDone)]
        assert stages[:2] == [("0", "done"), ("de/1", "failed")]
