"""A JobHandle's progress and stage streams, made when first used: what is pushed before
anyone reads is kept, and a stream first asked for after the end ends at once."""

from __future__ import annotations

import anyio
import pytest

from schedd.protocol import Done, StageDone
from schedd.sdk import JobHandle, RequestFailed

pytestmark = [pytest.mark.anyio, pytest.mark.parametrize("anyio_backend", ["trio", "asyncio"])]


class _NoClient:
    async def cancel(self, job_id: str) -> None:
        raise AssertionError("not cancelled in this test")


async def _all(stream: object) -> list[object]:
    with anyio.fail_after(5):
        return [item async for item in stream]  # type: ignore[attr-defined]


async def test_progress_pushed_before_it_is_read_is_kept_until_the_end() -> None:
    handle = JobHandle(_NoClient(), "j")
    handle._push_progress({"p": 1})
    handle._push_progress({"p": 2})
    stage = StageDone(job_id="j", stage="asr", state="done", ok=True)
    handle._push_stage(stage)
    handle._finish(Done(job_id="j", state="done", ok=True))
    handle._push_progress({"p": 3})  # after the end: dropped
    assert await _all(handle.progress()) == [{"p": 1}, {"p": 2}]
    assert await _all(handle.stages()) == [stage]


async def test_streams_first_asked_for_after_the_end_end_at_once() -> None:
    for end in ("done", "failed"):
        handle = JobHandle(_NoClient(), "j")
        if end == "done":
            handle._finish(Done(job_id="j", state="done", ok=True))
        else:
            handle._fail(RequestFailed("E_NO_JOB", "gone"))
        assert await _all(handle.progress()) == []
        assert await _all(handle.stages()) == []


async def test_a_reader_waiting_before_the_end_is_woken_by_it() -> None:
    handle = JobHandle(_NoClient(), "j")
    got: list[object] = []

    async def read() -> None:
        got.extend(await _all(handle.progress()))

    async with anyio.create_task_group() as tg:
        tg.start_soon(read)
        await anyio.sleep(0.01)
        handle._push_progress("x")
        await anyio.sleep(0.01)
        handle._finish(Done(job_id="j", state="done", ok=True))
    assert got == ["x"]
    assert handle.progress() is handle.progress()  # one stream per handle
