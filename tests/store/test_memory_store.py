"""The embedded store (memory://): what differs from a real server's connection."""

from __future__ import annotations

import trio

from schedd.store.memory import MemoryStore, open_memory_store


async def test_a_blocked_read_waits_for_a_write_instead_of_polling() -> None:
    async with open_memory_store("memory://") as store:
        assert isinstance(store, MemoryStore)
        polls: list[tuple[object, ...]] = []
        real_run = store._run

        def counting_run(args: tuple[object, ...]) -> object:
            if args[0] == "XREAD":
                polls.append(args)
            return real_run(args)  # type: ignore[arg-type]

        store._run = counting_run  # type: ignore[method-assign]
        with trio.fail_after(5):
            start = trio.current_time()
            assert await store.execute_blocking(
                "XREAD", "BLOCK", 200, "STREAMS", "s", "0-0") is None
            assert trio.current_time() - start >= 0.2
            # nothing else ran: one poll, then a wait until the deadline (it used to poll in a
            # loop, waking on the event its own poll had set, and an idle daemon spun a core)
            assert len(polls) == 1

            got: list[object] = []

            async def read() -> None:
                got.append(await store.execute_blocking(
                    "XREAD", "BLOCK", 5000, "STREAMS", "s", "0-0"))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(read)
                await trio.sleep(0.05)
                await store.execute("XADD", "s", "1-1", "d", "x")  # wakes the reader at once
            assert got == [[[b"s", [[b"1-1", [b"d", b"x"]]]]]]
            assert len(polls) == 3
