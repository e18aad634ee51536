"""The SDK's pipelines against a real daemon (both transports, both stores): one submit with
stages, ``handle.stages()`` yields each stage as it ends, ``result()`` holds every output; the
nodes run ordinary handlers (a stage is an assign)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import trio

from schedd.sdk import Client, JobContext, Node
from tests.e2e_daemon import DaemonProcess


@pytest.mark.parametrize("transport", ["ws", "tcp"])
async def test_a_speech_pipeline_through_the_sdk(
    tmp_path: Path, store_url: str, transport: str
) -> None:
    async def asr(job: JobContext) -> Any:
        return {"text": f"text of {job.payload['audio']}"}

    async def mt(job: JobContext) -> Any:
        return {"text": f"{job.payload['text']} in {job.payload['lang']}"}

    async def tts(job: JobContext) -> Any:
        return {"audio": f"speech of {job.payload['text']}"}

    daemon = DaemonProcess(tmp_path, store_url)
    try:
        await daemon.start()
        url = daemon.ws if transport == "ws" else daemon.tcp
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                for name, handler in (("asr", asr), ("mt", mt), ("tts", tts)):
                    await nursery.start(Node(url, handler, pools=[name], node_id=name).run)
                async with Client.connect(url) as client:
                    handle = await client.submit(
                        {"audio": "u1.wav", "lang": "de"}, job_id="u1",
                        stages=[{"pools": ["asr"]}, {"pools": ["mt"], "with": ["lang"]},
                                {"pools": ["tts"]}])
                    seen = [(s.stage, s.output) async for s in handle.stages()]
                    done = await handle.result()
                nursery.cancel_scope.cancel()
        assert seen == [("0", {"text": "text of u1.wav"}),
                        ("1", {"text": "text of u1.wav in de"}),
                        ("2", {"audio": "speech of text of u1.wav in de"})]
        assert done.ok and done.output["stages"]["2"] == {
            "audio": "speech of text of u1.wav in de"}
    finally:
        daemon.stop()


README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


async def test_the_readme_speech_pipeline_runs_as_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (code,) = [block for block in re.findall(r"```python\n(.*?)```", README, re.S)
               if "utterance-1" in block]

    async def echo(job: JobContext) -> Any:  # what `schedd node` answers
        return {"echo": job.payload, "node": "demo"}

    daemon = DaemonProcess(tmp_path, "memory://")
    try:
        await daemon.start()
        namespace: dict[str, Any] = {"__name__": "readme_example"}
        exec(compile(code.replace("ws://127.0.0.1:8765", daemon.ws).replace(
            "trio.run(main)", ""), "README.md", "exec"), namespace)
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                for pool in ("asr", "nmt", "tts"):
                    await nursery.start(Node(daemon.ws, echo, pools=[pool], node_id=pool).run)
                await namespace["main"]()
                nursery.cancel_scope.cancel()
    finally:
        daemon.stop()
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[:3] for line in lines[:3]] == [
        ["stage", "0", "done"], ["stage", "1", "done"], ["stage", "2", "done"]]
    assert "'lang': 'de'" in lines[1]  # the nmt stage got the payload's lang
    assert lines[3] == "done ['0', '1', '2']"


async def test_the_blocking_client_yields_a_pipelines_stages(tmp_path: Path) -> None:
    from schedd.sdk import BlockingClient

    async def echo(job: JobContext) -> Any:
        return {"seen": job.payload}

    daemon = DaemonProcess(tmp_path, "memory://")
    try:
        await daemon.start()

        def drive() -> tuple[list[str], Any]:
            with BlockingClient(daemon.tcp) as client:
                handle = client.submit("x", stages=[{"pools": ["a"]}, {"pools": ["b"]}])
                names = [s.stage for s in handle.stages(timeout=20)]
                return names, handle.result(timeout=20)

        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                for pool in ("a", "b"):
                    await nursery.start(Node(daemon.tcp, echo, pools=[pool], node_id=pool).run)
                names, done = await trio.to_thread.run_sync(drive)
                nursery.cancel_scope.cancel()
    finally:
        daemon.stop()
    assert names == ["0", "1"]
    assert done.ok and done.output["stages"]["1"] == {"seen": {"seen": "x"}}
