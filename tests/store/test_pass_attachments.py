"""lib.lua's pass_attachments, which hands one job's output attachments to another job as its
input (a stage fed by the stage before it), run in a script of its own on both stores."""

from __future__ import annotations

import pytest

from schedd.store.base import Store
from schedd.store.keys import Keys
from schedd.store.scripts import Script, _lua_files

KEYS = Keys("t")
AUDIO = bytes(range(256)) * 3
ATT = '[{"name":"tts.wav","size":768,"media_type":"audio/wav"}]'


async def _pass(store: Store, move: bool) -> bytes:
    library, _ = _lua_files()
    script = Script("pass", "return pass_attachments(ARGV[1], ARGV[2], ARGV[3] == '1')",
                    library, "unused")
    reply: bytes = await store.execute("EVAL", script.source, 1, KEYS.counts, "a", "b",
                                       "1" if move else "0")
    return reply


@pytest.mark.parametrize("move", [False, True])
async def test_output_attachments_become_the_next_jobs_input(store: Store, move: bool) -> None:
    await store.execute("HSET", KEYS.job("a"), "out_att", ATT, "att_bytes", len(AUDIO) + 5)
    await store.execute("HSET", KEYS.job_blobs("a"), "out:tts.wav", AUDIO, "in:x", b"12345")
    await store.execute("HSET", KEYS.job("b"), "state", "queued")
    assert await _pass(store, move) == ATT.encode()
    assert await store.execute("HGET", KEYS.job_blobs("b"), "in:tts.wav") == AUDIO
    assert await store.execute("HMGET", KEYS.job("b"), "att", "att_bytes") == [
        ATT.encode(), str(len(AUDIO)).encode()]
    left = await store.execute("HMGET", KEYS.job_blobs("a"), "out:tts.wav", "in:x")
    held = await store.execute("HMGET", KEYS.job("a"), "out_att", "att_bytes")
    if move:
        assert left == [None, b"12345"] and held == [None, b"5"]
    else:
        assert left == [AUDIO, b"12345"] and held == [ATT.encode(), str(len(AUDIO) + 5).encode()]


async def test_a_job_without_output_attachments_passes_none(store: Store) -> None:
    await store.execute("HSET", KEYS.job("a"), "state", "done")
    assert await _pass(store, False) == b""
    assert await store.execute("EXISTS", KEYS.job_blobs("b")) == 0
