"""The collector settings of long-running processes: settle_gc and the settler service."""

from __future__ import annotations

import gc
import weakref
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing

from schedd import runtime


@pytest.fixture(autouse=True)
def _unfrozen() -> Iterator[None]:
    yield
    gc.unfreeze()  # the rest of the test process keeps a normal collector


class Cycle:
    def __init__(self) -> None:
        self.me = self


def test_settle_gc_reclaims_frozen_cycles_and_freezes_survivors() -> None:
    garbage, kept = Cycle(), Cycle()
    gone = weakref.ref(garbage)
    gc.freeze()  # both frozen, as after an earlier settle
    del garbage  # a cycle: reference counting cannot free it, and no pass looks at it
    gc.collect()
    assert gone() is not None
    took = runtime.settle_gc()
    assert gone() is None
    assert gc.get_freeze_count() > 0 and took >= 0
    assert any(o is kept for o in gc.get_objects()) is False  # frozen: out of every generation
    gc.unfreeze()
    assert any(o is kept for o in gc.get_objects())


def test_freeze_young_collects_young_cycles_and_freezes_survivors() -> None:
    gc.collect()
    garbage, kept = Cycle(), Cycle()
    gone = weakref.ref(garbage)
    del garbage  # young garbage: the young pass finds it
    before = gc.get_freeze_count()
    took = runtime.freeze_young()
    assert gone() is None
    assert gc.get_freeze_count() > before and took >= 0
    assert not any(o is kept for o in gc.get_objects())  # out of every generation
    gc.unfreeze()
    assert any(o is kept for o in gc.get_objects())


class Fleet:
    """A connection count the test moves, and the freezes and full passes it caused."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        self.opened = 0
        self.settles: list[tuple[float, int]] = []
        self.freezes: list[int] = []  # connections opened at each young freeze
        monkeypatch.setattr(runtime, "settle_gc", self._settle)
        monkeypatch.setattr(runtime, "freeze_young", self._freeze)

    def _settle(self) -> float:
        self.settles.append((trio.current_time(), self.count))
        return 0.0

    def _freeze(self) -> float:
        self.freezes.append(self.opened)
        return 0.0

    def connect(self, n: int) -> None:
        self.count += n
        self.opened += n

    def close(self, n: int) -> None:
        self.count -= n

    def replace(self, n: int) -> None:
        self.opened += n  # as many closed as opened: the count does not move

    @asynccontextmanager
    async def settler(self) -> AsyncIterator[None]:
        async with trio.open_nursery() as nursery:
            await nursery.start(runtime.serve_gc_settler, lambda: self.count, lambda: self.opened)
            yield
            nursery.cancel_scope.cancel()


async def test_arriving_connections_are_frozen_as_they_come_without_a_full_pass(
    monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.testing.MockClock,
) -> None:
    fleet = Fleet(monkeypatch)
    async with fleet.settler():
        for _ in range(50):  # a ramp: 200 connections a second for 50 s
            fleet.connect(200)
            await trio.sleep(1)
        await trio.sleep(30)
    # a young freeze at the first look after each FREEZE_STEP (500) arrivals: each walks what
    # three or four seconds of this ramp brought (a look may run before or after that
    # second's connections)
    steps = [b - a for a, b in zip([0, *fleet.freezes], fleet.freezes, strict=False)]
    assert all(runtime.FREEZE_STEP <= step <= runtime.FREEZE_STEP + 400 for step in steps), steps
    assert 10_000 - fleet.freezes[-1] < runtime.FREEZE_STEP  # the rest waits for more
    assert fleet.settles == []  # nothing ended: no full pass, at any count


async def test_a_full_pass_follows_many_ended_connections_once_the_count_holds(
    monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.testing.MockClock,
) -> None:
    fleet = Fleet(monkeypatch)
    async with fleet.settler():
        fleet.connect(5000)
        await trio.sleep(10)
        fleet.close(700)  # less than a fifth of the 4,300 left: their cycles can wait
        await trio.sleep(20)
        assert fleet.settles == []
        for _ in range(5):  # 500 more leave over 5 s: 1,200 ended, over a fifth of 3,800
            fleet.close(100)
            await trio.sleep(1)
        closed_at = trio.current_time() - 1
        assert fleet.settles == []  # still moving
        await trio.sleep(10)
        assert [count for _, count in fleet.settles] == [3800]
        # at least `steady` (5 s) after the count stopped, within two looks
        assert closed_at + 5 <= fleet.settles[0][0] <= closed_at + 5 + 2
        fleet.close(700)  # ended since that pass: 700, less than a fifth of the 3,800 then
        await trio.sleep(20)
        assert len(fleet.settles) == 1
        fleet.close(100)  # 800 in all
        await trio.sleep(20)
        assert [count for _, count in fleet.settles] == [3800, 3000]
    assert fleet.freezes == [5000]  # the 5,000 that arrived together; nothing arrived later


async def test_settler_counts_replaced_connections_and_ignores_small_fleets(
    monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.testing.MockClock,
) -> None:
    fleet = Fleet(monkeypatch)
    async with fleet.settler():
        fleet.connect(runtime.SETTLE_MINIMUM)
        fleet.close(runtime.SETTLE_MINIMUM - 1)
        await trio.sleep(30)
        assert fleet.settles == []  # a small process: the collector's own passes are short
        fleet.connect(1000)
        fleet.close(1)  # SETTLE_MINIMUM ended in all
        await trio.sleep(10)
        assert [count for _, count in fleet.settles] == [1000]
        for _ in range(20):  # churn: 600 connections replaced, the count unchanged
            fleet.replace(30)
            await trio.sleep(1)
        assert len(fleet.settles) == 1  # still churning
        await trio.sleep(10)
        assert [count for _, count in fleet.settles] == [1000, 1000]


async def test_constant_churn_gets_a_full_pass_once_per_turnover_of_the_fleet(
    monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.testing.MockClock,
) -> None:
    fleet = Fleet(monkeypatch)
    async with fleet.settler():
        fleet.connect(1000)
        await trio.sleep(10)
        for _ in range(120):  # nodes reconnect 20 a second, for ever: the arrivals never hold
            fleet.replace(20)
            await trio.sleep(1)
        # without the rule, the cycles of every ended connection frozen so far would wait
        # for the churn to stop
        assert [count for _, count in fleet.settles] == [1000, 1000]
        first, second = (at for at, _ in fleet.settles)
        assert 45 <= second - first <= 55  # a whole fleet's worth ended in between
        for _ in range(50):  # the same churn while the count falls: no pass
            fleet.replace(20)
            fleet.close(15)
            await trio.sleep(1)
        assert len(fleet.settles) == 2
