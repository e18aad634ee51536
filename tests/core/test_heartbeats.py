"""The heartbeat batcher: which beats go to Redis, how far their liveness reaches, and how a
silent node is found by the instance holding its connection."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import trio

from schedd import errors
from schedd.core import Core, CoreSettings, HeartbeatBatcher, Queries, Registration
from schedd.core.heartbeats import SELECT_SLICE
from schedd.store.base import Store
from tests.core.helpers import make_core

# one-second beats, found dead after 3 intervals, the liveness of an unchanged node written
# every 2 beats
SETTINGS: dict[str, Any] = {"heartbeat_interval": 1.0, "liveness_intervals": 3,
                            "heartbeat_flush": 0.1, "reaper_interval": 0.25,
                            "liveness_refresh": 2}


async def _redis_ms(store: Store) -> int:
    seconds, micros = await store.execute("TIME")
    return int(seconds) * 1000 + int(micros) // 1000


async def _alive_until(core: Core, node_id: str) -> int | None:
    score = await core.store.execute("ZSCORE", core.keys.alive, node_id)
    return None if score is None else int(float(score))


class Recording:
    """Wraps ``Core.heartbeat_batch`` to keep what each flush sent."""

    def __init__(self, core: Core) -> None:
        self.calls: list[tuple[list[tuple[str, int, float, int]], list[tuple[str, int]]]] = []
        self.fail = 0
        real = core.heartbeat_batch

        async def heartbeat_batch(beats: Any, silent: Any = ()) -> list[str]:
            self.calls.append((list(beats), list(silent)))
            if self.fail:
                self.fail -= 1
                raise errors.StoreUnavailable("redis went away")
            return await real(beats, silent)

        core.heartbeat_batch = heartbeat_batch  # type: ignore[method-assign]

    @property
    def sent(self) -> list[tuple[str, int, float, int]]:
        return self.calls[-1][0]

    @property
    def silent(self) -> list[tuple[str, int]]:
        return self.calls[-1][1]


async def _one_node(store: Store, on_stale: Callable[[str, int], None] | None = None,
                    **settings: Any) -> tuple[Core, HeartbeatBatcher, Recording, Registration]:
    """Node n1, registered, and a batcher over a recorded core."""
    core, _ = await make_core(store, **{**SETTINGS, **settings})
    reg = await core.register_node(node_id="n1", capacity=2, pools=["p"])
    batcher = HeartbeatBatcher(core, on_stale=on_stale)
    return core, batcher, Recording(core), reg


async def _two_nodes_beating(
        store: Store) -> tuple[Core, HeartbeatBatcher, Recording, tuple[Registration, ...]]:
    """Nodes n1 and n2, registered, each with one beat flushed at 100.0."""
    core, _ = await make_core(store, **SETTINGS)
    regs = tuple([await core.register_node(node_id=n, capacity=1, pools=["p"])
                  for n in ("n1", "n2")])
    batcher = HeartbeatBatcher(core)
    calls = Recording(core)
    for reg in regs:
        batcher.beat(reg.node_id, reg.epoch)
    await batcher.flush(now=100.0)
    return core, batcher, calls, regs


def test_settings_derive_the_refresh_and_the_horizon() -> None:
    default = CoreSettings()
    assert default.liveness_refresh == 3
    assert default.refresh_after == pytest.approx(2.5)  # sent on every third 1 s beat
    assert default.liveness_horizon == pytest.approx(2.65 + 2.0)
    two = CoreSettings(**SETTINGS)
    assert two.refresh_after == pytest.approx(1.5)
    # the ttl plus the one beat left out: a live node keeps the margin it had before
    assert two.liveness_horizon == pytest.approx(two.liveness_ttl + 1.0)
    every = CoreSettings(**{**SETTINGS, "liveness_refresh": 1})
    assert every.liveness_horizon == pytest.approx(every.liveness_ttl)
    assert every.refresh_after == pytest.approx(0.5)  # every beat is due


async def test_unchanged_beats_reach_redis_every_liveness_refresh_beats(store: Store) -> None:
    core, batcher, calls, reg = await _one_node(store)

    batcher.beat("n1", reg.epoch)
    before = await _redis_ms(store)
    await batcher.flush(now=100.0)
    assert calls.sent == [("n1", reg.epoch, 0.0, 0)]  # the first beat this instance sees
    until = await _alive_until(core, "n1")
    assert until is not None
    # a sent beat's liveness reaches the horizon, not just the ttl
    assert before + core.settings.liveness_horizon * 1000 <= until
    assert until <= await _redis_ms(store) + core.settings.liveness_horizon * 1000

    batcher.beat("n1", reg.epoch)
    await batcher.flush(now=101.0)
    assert calls.sent == []  # unchanged, and its liveness still reaches far enough
    assert await _alive_until(core, "n1") == until

    batcher.beat("n1", reg.epoch)
    await batcher.flush(now=102.0)
    assert calls.sent == [("n1", reg.epoch, 0.0, 0)]  # the second beat since: due again
    assert (until2 := await _alive_until(core, "n1")) is not None and until2 >= until
    assert (batcher.beats, batcher.sent, batcher.flushes) == (3, 2, 3)


@pytest.mark.parametrize("change", ["load", "inflight", "epoch"])
async def test_a_changed_beat_is_sent_at_once(store: Store, change: str) -> None:
    core, batcher, calls, reg = await _one_node(store)
    batcher.beat("n1", reg.epoch, 0.0, 0)
    await batcher.flush(now=100.0)
    epoch = reg.epoch
    if change == "epoch":
        epoch = (await core.register_node(node_id="n1", capacity=2, pools=["p"])).epoch
    beat = {"load": ("n1", epoch, 0.5, 0), "inflight": ("n1", epoch, 0.0, 1),
            "epoch": ("n1", epoch, 0.0, 0)}[change]
    batcher.beat(*beat)
    assert await batcher.flush(now=100.5) == []
    assert calls.sent == [beat]
    (node,) = await Queries(store, core.keys).nodes()
    assert node.load == beat[2]
    assert await store.execute("HGET", core.keys.beats, "n1") == (
        f"{node.last_heartbeat_ms} {beat[2]!r} {beat[3]}".encode())


async def test_liveness_refresh_1_sends_every_beat(store: Store) -> None:
    _, batcher, calls, reg = await _one_node(store, liveness_refresh=1)
    for second in range(4):
        batcher.beat("n1", reg.epoch)
        await batcher.flush(now=100.0 + second)
        assert calls.sent == [("n1", reg.epoch, 0.0, 0)]


async def test_the_default_sends_every_third_unchanged_beat(store: Store) -> None:
    default = CoreSettings().liveness_refresh
    _, batcher, calls, reg = await _one_node(store, liveness_refresh=default)
    sent = []
    for second in range(7):
        batcher.beat("n1", reg.epoch)
        await batcher.flush(now=100.0 + second)
        sent.append(bool(calls.sent))
    assert sent == [True, False, False, True, False, False, True]


async def test_a_silent_node_is_ended_by_its_instance_and_reaped(store: Store) -> None:
    core, batcher, calls, (r1, r2) = await _two_nodes_beating(store)
    # n2 keeps beating, n1 goes silent; Redis alone would keep n1 alive for the horizon
    for now in (101.0, 102.0):
        batcher.beat("n2", r2.epoch)
        await batcher.flush(now=now)
        assert calls.silent == []
    batcher.beat("n2", r2.epoch)
    await batcher.flush(now=100.0 + core.settings.liveness_ttl)
    assert calls.silent == [("n1", r1.epoch)]
    assert batcher.silenced == 1
    until = await _alive_until(core, "n1")
    assert until is not None and until <= await _redis_ms(store)
    lost, _, _, _ = await core.reap()
    assert lost == 1
    nodes = {n.node_id: n for n in await Queries(store, core.keys).nodes()}
    assert nodes["n1"].state == "offline" and nodes["n1"].reason == "liveness expired"
    assert nodes["n2"].state == "online"
    # reported once: the next flush has nobody silent
    batcher.beat("n2", r2.epoch)
    await batcher.flush(now=104.0)
    assert calls.silent == []


async def test_silence_does_not_touch_a_newer_registration_or_an_offline_node(
        store: Store) -> None:
    a, _ = await make_core(store, "A", **SETTINGS)
    b, _ = await make_core(store, "B", **SETTINGS)
    old = await a.register_node(node_id="moved", capacity=1, pools=["p"])
    gone = await a.register_node(node_id="gone", capacity=1, pools=["p"])
    batcher = HeartbeatBatcher(a)
    batcher.beat("moved", old.epoch)
    batcher.beat("gone", gone.epoch)
    await batcher.flush(now=100.0)
    await b.register_node(node_id="moved", capacity=1, pools=["p"])  # now B's
    await a.node_offline("gone", epoch=gone.epoch, reason="bye")
    before = await _alive_until(a, "moved")
    await batcher.flush(now=100.0 + a.settings.liveness_ttl)
    assert batcher.silenced == 2
    assert await _alive_until(a, "moved") == before  # fenced: B's registration stays alive
    assert await _alive_until(a, "gone") is None  # an offline node is not put back
    assert (await a.reap())[0] == 0


async def test_a_failed_flush_sends_its_beats_and_silences_again(store: Store) -> None:
    core, batcher, calls, (r1, r2) = await _two_nodes_beating(store)
    batcher.beat("n1", r1.epoch, 0.5, 1)
    calls.fail = 1
    with pytest.raises(errors.StoreUnavailable):
        await batcher.flush(now=100.0 + core.settings.liveness_ttl)
    assert calls.silent == [("n2", r2.epoch)]
    assert (batcher.flushes, batcher.sent) == (1, 2)
    # the same beat again, unchanged since the one that failed: sent, and n2 still silent
    batcher.beat("n1", r1.epoch, 0.5, 1)
    await batcher.flush(now=101.0 + core.settings.liveness_ttl)
    assert calls.sent == [("n1", r1.epoch, 0.5, 1)]
    assert calls.silent == [("n2", r2.epoch)]
    (n1,) = [n for n in await Queries(store, core.keys).nodes() if n.node_id == "n1"]
    assert n1.load == 0.5


async def test_a_node_beating_again_after_a_failed_silence_is_not_ended(store: Store) -> None:
    core, batcher, calls, reg = await _one_node(store)
    batcher.beat("n1", reg.epoch)
    await batcher.flush(now=100.0)
    calls.fail = 1
    with pytest.raises(errors.StoreUnavailable):
        await batcher.flush(now=103.0)
    assert calls.silent == [("n1", reg.epoch)]
    batcher.beat("n1", reg.epoch)
    await batcher.flush(now=103.5)
    assert calls.silent == []
    assert calls.sent == [("n1", reg.epoch, 0.0, 0)]  # new to the batcher again: sent
    assert (await core.reap())[0] == 0


async def test_a_stale_node_is_forgotten_so_its_next_beat_is_sent(store: Store) -> None:
    stale: list[tuple[str, int]] = []
    core, batcher, calls, reg = await _one_node(
        store, on_stale=lambda node_id, epoch: stale.append((node_id, epoch)))
    batcher.beat("n1", reg.epoch)
    await batcher.flush(now=100.0)
    await core.node_offline("n1", epoch=reg.epoch, reason="bye")
    batcher.beat("n1", reg.epoch)
    await batcher.flush(now=101.0)
    assert calls.sent == [] and stale == []  # not due: the staleness waits for the refresh
    batcher.beat("n1", reg.epoch)
    assert await batcher.flush(now=102.0) == ["n1"]
    assert stale == [("n1", reg.epoch)]
    batcher.beat("n1", reg.epoch)
    await batcher.flush(now=102.5)
    assert calls.sent == [("n1", reg.epoch, 0.0, 0)]


async def test_the_script_refuses_a_bad_silent_count(store: Store) -> None:
    core, _ = await make_core(store)
    keys = [core.keys.alive, core.keys.instances]
    cases: list[list[str | int | float]] = [
        ["A", 1000, 1000], ["A", 1000, 1000, "x"], ["A", 1000, 1000, -1],
        ["A", 1000, 1000, 1.5], ["A", 1000, 1000, 2, "n1", 1]]
    for args in cases:
        with pytest.raises(errors.BadArgument, match="silent"):
            await core.scripts.call(store, "heartbeat_batch", keys, args)
    with pytest.raises(errors.BadArgument, match="groups of four"):
        await core.scripts.call(store, "heartbeat_batch", keys,
                                ["A", 1000, 1000, 1, "n1", 1, "n2", 1, 0])


async def test_a_forgotten_node_is_not_found_silent(store: Store) -> None:
    core, batcher, calls, (r1, r2) = await _two_nodes_beating(store)
    batcher.beat("n1", r1.epoch, 0.5, 0)  # its last beat, still waiting when it disconnects
    batcher.forget("n1", r1.epoch)
    batcher.forget("n2", r2.epoch - 1)  # an earlier epoch's connection ended: n2's stays
    await batcher.flush(now=100.0 + core.settings.liveness_ttl)
    assert calls.sent == []
    assert calls.silent == [("n2", r2.epoch)]
    assert batcher.silenced == 1


async def test_forgetting_a_connection_forgets_the_one_it_replaced(store: Store) -> None:
    core, batcher, calls, (r1, _) = await _two_nodes_beating(store)
    # n1 registered again here (epoch r1 + 1, its first connection closed) and that connection
    # ended before its first beat: n1's beats of the replaced connection go with it
    batcher.forget("n1", r1.epoch + 1)
    assert "n1" not in batcher._seen
    await batcher.flush(now=100.0 + core.settings.liveness_ttl)
    assert [node for node, _ in calls.silent] == ["n2"]


def _at_checkpoint(monkeypatch: pytest.MonkeyPatch,
                   hook: Callable[[int], None]) -> list[int]:
    """Call ``hook(n)`` at the batcher's n-th checkpoint (from 1), before it yields; returns
    the list of checkpoints taken."""
    from schedd.core import heartbeats

    taken: list[int] = []
    real = heartbeats.checkpoint  # type: ignore[attr-defined]  # the module's own import

    async def checkpoint() -> None:
        taken.append(len(taken) + 1)
        hook(len(taken))
        await real()

    monkeypatch.setattr(heartbeats, "checkpoint", checkpoint)
    return taken


async def test_a_large_window_is_looked_at_in_slices(
        store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """A flush looks at SELECT_SLICE beats between two checkpoints (and takes one more before
    the call), so other tasks run while it selects; a node forgotten at a checkpoint is skipped
    (its beat is not sent, and it is not found silent later); a beat arriving there waits for
    the next flush."""
    core, _ = await make_core(store, **SETTINGS)
    nodes = 2 * SELECT_SLICE + 10
    regs = [await core.register_node(node_id=f"n{i:04d}", capacity=1, pools=["p"])
            for i in range(nodes)]
    batcher = HeartbeatBatcher(core)
    calls = Recording(core)
    for reg in regs:
        batcher.beat(reg.node_id, reg.epoch)
    looked_at: list[int] = []

    def at(n: int) -> None:
        looked_at.append(batcher.beats)
        if n == 1:
            batcher.forget(regs[-1].node_id, regs[-1].epoch)  # not looked at yet
            batcher.forget(regs[0].node_id, regs[0].epoch)  # looked at already
            batcher.beat(regs[1].node_id, regs[1].epoch, 0.5, 1)  # for the next window

    taken = _at_checkpoint(monkeypatch, at)
    await batcher.flush(now=100.0)
    assert taken == [1, 2, 3]
    assert looked_at == [SELECT_SLICE, 2 * SELECT_SLICE, nodes - 1]
    # n0 was looked at before it was forgotten, the last node after: not sent
    assert {beat[0] for beat in calls.sent} == {reg.node_id for reg in regs[:-1]}
    assert batcher.beats == nodes - 1 and batcher.sent == nodes - 1
    await batcher.flush(now=100.5)
    assert calls.sent == [(regs[1].node_id, regs[1].epoch, 0.5, 1)]
    await batcher.flush(now=100.0 + core.settings.liveness_ttl)
    # n1 beat since, and neither forgotten node is found silent
    assert {node for node, _ in calls.silent} == {reg.node_id for reg in regs[2:-1]}


async def test_a_flush_cancelled_while_it_selects_sends_those_beats_next_time(
        store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    core, _ = await make_core(store, **SETTINGS)
    regs = [await core.register_node(node_id=f"n{i:04d}", capacity=1, pools=["p"])
            for i in range(SELECT_SLICE + 5)]
    batcher = HeartbeatBatcher(core)
    calls = Recording(core)
    for reg in regs:
        batcher.beat(reg.node_id, reg.epoch)
    with trio.CancelScope() as scope:
        _at_checkpoint(monkeypatch, lambda n: scope.cancel())
        await batcher.flush(now=100.0)
    assert scope.cancelled_caught
    assert calls.calls == []  # nothing was sent
    monkeypatch.undo()
    # the beats looked at before the cancel are not taken as sent: the next ones go out
    for reg in regs[:SELECT_SLICE]:
        batcher.beat(reg.node_id, reg.epoch)
    await batcher.flush(now=100.5)
    assert {beat[0] for beat in calls.sent} == {reg.node_id for reg in regs[:SELECT_SLICE]}
