"""The commands-per-job tool: each path of a job's life, measured on a real redis-server."""

from __future__ import annotations

from schedd.devtools.job_commands import burst, one_at_a_time, one_job, run, table
from schedd.devtools.redis_process import RedisServer
from schedd.store import open_store


async def test_every_path_is_measured_with_its_commands(redis_server: RedisServer) -> None:
    async with open_store(redis_server.url) as store:
        rows = await one_job(store)
        rows += await one_at_a_time(store, 20)
        rows.append(await burst(store, 40))
    by_path = {r["path"]: r for r in rows}
    assert set(by_path) == {
        "submit placed", "submit queued", "accept+result, feeds", "accept+result",
        "removal (gc)", "heartbeat_batch, 1 node", "heartbeat_batch, 100 nodes",
        "20 submits placed, per call", "20 accept+results, per call", "20 one at a time, per job",
        "burst of 40, per job"}
    for row in rows:
        assert row["commands"] > 0, row
        assert abs(sum(row["by_command"].values()) - row["commands"]) < 0.1, row
    # the removal is a reap pass less an idle one: the same number of script calls
    assert by_path["removal (gc)"]["script_calls"] == 0
    assert by_path["submit placed"]["script_calls"] == 1
    # every script call reads Redis's clock once
    assert by_path["submit placed"]["by_command"]["TIME"] == 1
    # the batch's cost does not grow per node (one HMGET, ZADD and HSET per 500 nodes)
    assert (by_path["heartbeat_batch, 100 nodes"]["commands"]
            == by_path["heartbeat_batch, 1 node"]["commands"])
    # the burst's jobs mostly queue: each then costs a submit, a feed and a result
    assert by_path["burst of 40, per job"]["commands"] > by_path["accept+result"]["commands"]
    # one at a time, a job costs a placed submit and an accept+result
    assert by_path["20 submits placed, per call"]["commands"] == by_path["submit placed"][
        "commands"]
    assert by_path["20 accept+results, per call"]["commands"] == by_path["accept+result"][
        "commands"]
    assert by_path["20 one at a time, per job"]["commands"] == (
        by_path["submit placed"]["commands"] + by_path["accept+result"]["commands"])
    assert "submit placed" in table(rows)


#: commands per path at most (docs/architecture.md, "Redis commands per job"): a change that
#: adds a command to a job's life shows here, and goes into that table with its reason
CEILINGS = {"submit placed": 22, "submit queued": 24, "accept+result": 27,
            "accept+result, feeds": 53, "removal (gc)": 9}


async def test_a_jobs_life_costs_no_more_commands_than_recorded(redis_server: RedisServer) -> None:
    async with open_store(redis_server.url) as store:
        rows = {r["path"]: r for r in await one_job(store)}
    for path, ceiling in CEILINGS.items():
        assert rows[path]["commands"] <= ceiling, rows[path]
    result = rows["accept+result"]["by_command"]
    # finish reads the job once more at most (what release did not), and measures nothing
    assert result.get("HMGET", 0) <= 3 and "HSTRLEN" not in result, result


async def test_the_tool_measures_the_aof_bytes_of_a_job_on_its_own_server() -> None:
    rows = {r["path"]: r for r in await run(10)}
    serial = rows["10 one at a time, per job"]
    # at least the job hash's one HSET of a dozen fields is appended per job
    assert serial["aof_bytes"] > 300
    assert "aof_bytes" not in rows["burst of 10, per job"]
