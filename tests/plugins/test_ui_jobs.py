"""The ui's job browsing: ``/api/v1/jobs`` and a job's detail, hostile filters, and the jobs
view of the dashboard in a real headless Chromium."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from schedd import protocol as p
from tests.daemon.harness import Daemon, Peer
from tests.plugins.chromium import CHROMIUM, open_page
from tests.plugins.test_ui import TOKEN, http, run_job, ui_daemon

TOKENS = {
    "SCHEDD_AUTH__NODE_TOKENS": '["node-secret"]',
    "SCHEDD_AUTH__CLIENT_TOKENS": '["alice-secret", "bob-secret"]',
}


async def history(d: Daemon) -> tuple[Peer, Peer, Peer]:
    """Jobs of two principals on two nodes: alice's ``a-ok`` done and ``a-bad`` failed on n1,
    ``a-retried`` rejected by n1 then done on n2, ``a-waiting`` queued; bob's ``b-ok`` done."""
    n1, _ = await d.node("p", node_id="n1", capacity=1, token="node-secret")
    alice = await d.connect("client", "alice-secret")
    bob = await d.connect("client", "bob-secret")
    # listings order by submit ms, then by job id: the jobs are submitted in distinct ms
    await run_job(alice, n1, "p", "a-ok")
    await trio.sleep(0.002)
    await run_job(alice, n1, "p", "a-bad", ok=False)
    await trio.sleep(0.002)
    await run_job(bob, n1, "p", "b-ok")
    await trio.sleep(0.002)
    await alice.send(p.Submit(pools=["p"], job_id="a-retried", payload={"text": "x" * 100},
                              keep_payload=True))
    await alice.expect(p.Accepted)
    assign = await n1.expect(p.Assign)
    await n1.send(p.Reject(job_id=assign.job_id, attempt=1, reason="GPU out of memory"))
    n2, _ = await d.node("p", node_id="n2", capacity=1, token="node-secret")
    second = await n2.expect(p.Assign)
    await n2.send(p.Accept(job_id=second.job_id, attempt=2))
    await trio.sleep(0.01)
    await n2.send(p.Result(job_id=second.job_id, attempt=2, ok=True, output={"text": "y" * 50}))
    await alice.expect(p.Done)
    await trio.sleep(0.002)
    await alice.send(p.Submit(pools=["nobody"], job_id="a-waiting"))
    await alice.expect(p.Accepted)
    return n1, n2, alice


async def jobs(url: str, query: str = "") -> Any:
    response = await http(url, f"/api/v1/jobs{query}", token=TOKEN)
    assert response.status == 200, response.body
    return response.json()


def ids(page: Any) -> list[str]:
    return [job["job_id"] for job in page["jobs"]]


async def test_the_jobs_api_lists_every_principal_with_filters(store_url: str) -> None:
    async with ui_daemon(store_url, **TOKENS) as (d, url):
        await history(d)
        everything = await jobs(url)
        assert ids(everything) == ["a-waiting", "a-retried", "b-ok", "a-bad", "a-ok"]
        assert everything["cursor"] is None and everything["now_ms"] > 0
        assert set(everything["jobs"][0]) == {
            "job_id", "state", "principal", "node", "pools", "attempt", "max_attempts",
            "submitted_ms", "finished_ms", "error"}
        alice = everything["jobs"][0]["principal"]
        assert ids(await jobs(url, "?state=failed")) == ["a-bad"]
        # a node finds the jobs that had an attempt on it, the last or an earlier one
        assert ids(await jobs(url, "?state=done&node=n1")) == ["a-retried", "b-ok", "a-ok"]
        assert ids(await jobs(url, "?node=n1&state=done&since=1h&principal=")) == [
            "a-retried", "b-ok", "a-ok"]
        assert ids(await jobs(url, f"?principal={alice}&state=done")) == ["a-retried", "a-ok"]
        assert ids(await jobs(url, "?node=n2")) == ["a-retried"]
        assert ids(await jobs(url, "?pool=nobody&state=")) == ["a-waiting"]  # empty: no filter
        first = await jobs(url, "?limit=2")
        rest = await jobs(url, f"?limit=2&cursor={first['cursor']}")
        assert ids(first) + ids(rest) == ids(everything)[:4]
        assert ids(await jobs(url, f"?since={everything['now_ms'] + 60_000}")) == []

        detail = (await http(url, "/api/v1/jobs/a-retried", token=TOKEN)).json()["job"]
        assert "output" not in detail  # sizes, not the content
        assert detail["payload_bytes"] == len('{"text":"' + "x" * 100 + '"}')
        assert detail["output_bytes"] == len('{"text":"' + "y" * 50 + '"}')
        first_try, second_try = detail["attempts"]
        assert (first_try["node"], first_try["outcome"]) == ("n1", "rejected")
        assert "GPU out of memory" in first_try["reason"]
        assert (second_try["node"], second_try["outcome"]) == ("n2", "done")
        assert second_try["ended_ms"] >= second_try["accepted_ms"] >= second_try["assigned_ms"]


@pytest.mark.parametrize(("query", "field"), [
    ("?limit=100000", "limit"),
    ("?limit=0", "limit"),
    ("?limit=-1", "limit"),
    ("?limit=ten", "limit"),
    ("?state=exploded", "state"),
    ("?since=yesterday", "since"),
    ("?since=1h&until=2h", "until"),
    ("?until=-5", "until"),
    ("?cursor=zzz", "cursor"),
    ("?cursor=1.2.3", "cursor"),
    ("?node=a%00b", "node"),
    ("?pool=" + "x" * 300, "pool"),
    ("?sort=evil", "sort"),
    ("?state=done&state=failed", "state"),
])
async def test_hostile_filters_are_400_with_the_field(query: str, field: str) -> None:
    async with ui_daemon() as (_d, url):
        response = await http(url, f"/api/v1/jobs{query}", token=TOKEN)
        assert response.status == 400, response.body
        error = response.json()["error"]
        assert error["code"] == "bad_filter" and error["field"] == field
        assert error["message"]
        assert (await http(url, f"/api/v1/jobs{query}")).status == 401  # the token comes first


# ---------------------------------------------------------------------------------------------
# The jobs view in a real headless Chromium
# ---------------------------------------------------------------------------------------------

TABLE = """(() => {
  const table = document.querySelector("#jobs");
  if (!table || !table.dataset.loaded) return null;
  return {
    view: document.body.dataset.view,
    loaded: table.dataset.loaded,
    rows: [...table.querySelectorAll("tbody tr[data-job]")].map((tr) =>
      [tr.dataset.job, tr.dataset.state, tr.children[3].textContent]),
    error: document.querySelector("#jobs-error").textContent,
    overviewShown: getComputedStyle(document.querySelector("#tiles")).display !== "none",
  };
})()"""

DETAIL = """(() => {
  const view = document.querySelector("#job-view");
  if (!view.dataset.loaded) return null;
  const actions = document.querySelector("#job-actions");
  return {
    view: document.body.dataset.view,
    id: document.querySelector("#job-id").textContent,
    state: document.querySelector("#job-state").textContent,
    attempts: [...document.querySelectorAll("#job-attempts tbody tr[data-attempt]")].map((tr) =>
      [tr.dataset.attempt, tr.children[1].textContent, tr.dataset.outcome,
       tr.children[6].textContent]),
    bars: document.querySelectorAll("#job-timeline rect").length,
    rows: [...document.querySelectorAll("#job-timeline g[data-kind]")].map((g) =>
      g.dataset.kind),
    outcomes: [...document.querySelectorAll("#job-timeline g[data-outcome]")].map((g) =>
      g.dataset.outcome).filter((o) => o),
    facts: Object.fromEntries([...document.querySelectorAll("#job-facts tr")].map((tr) =>
      [tr.children[0].textContent, tr.children[1].textContent])),
    error: document.querySelector("#job-error").textContent,
    actions: [actions.dataset.jobId, actions.dataset.jobState, actions.children.length],
  };
})()"""


async def wait_for(page: Any, expression: str, check: Any) -> Any:
    with trio.fail_after(20):
        while True:
            value = await page.evaluate(expression)
            if value and check(value):
                return value
            await trio.sleep(0.1)


async def set_filter(page: Any, field: str, value: str) -> None:
    await page.evaluate(
        f"(() => {{ document.querySelector('#f-{field}').value = {value!r};"
        " document.querySelector('#job-filters').requestSubmit(); })()"
    )


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary on PATH (CI installs it)")
async def test_the_jobs_view_filters_and_shows_a_job_in_chromium(tmp_path: Path) -> None:
    with trio.fail_after(90):
        async with ui_daemon(**TOKENS) as (d, url):
            await history(d)
            async with open_page(tmp_path / "chromium") as page:
                await page.call("Page.navigate", url=f"{url}/?token={TOKEN}#jobs")
                table = await wait_for(page, TABLE, lambda t: len(t["rows"]) == 5)
                assert table["view"] == "jobs" and not table["overviewShown"]
                assert [row[0] for row in table["rows"]] == [
                    "a-waiting", "a-retried", "b-ok", "a-bad", "a-ok"]

                await set_filter(page, "state", "failed")
                table = await wait_for(page, TABLE, lambda t: len(t["rows"]) == 1)
                assert table["rows"] == [["a-bad", "failed", "n1"]]
                await set_filter(page, "state", "done")
                await set_filter(page, "node", "n1")
                table = await wait_for(page, TABLE, lambda t: [r[0] for r in t["rows"]] == [
                    "a-retried", "b-ok", "a-ok"])
                await set_filter(page, "state", "")
                await set_filter(page, "node", "n2")
                table = await wait_for(page, TABLE, lambda t: [r[0] for r in t["rows"]] == [
                    "a-retried"])
                assert await page.evaluate("location.hash") == "#jobs?node=n2"
                await page.screenshot(tmp_path / "jobs.png")

                await page.evaluate("document.querySelector('#jobs a').click()")
                detail = await wait_for(page, DETAIL, lambda v: v["id"] == "a-retried")
                assert detail["view"] == "job" and detail["state"] == "done"
                assert [a[:3] for a in detail["attempts"]] == [
                    ["1", "n1", "rejected"], ["2", "n2", "done"]]
                assert "GPU out of memory" in detail["attempts"][0][3]
                # queued, attempt 1 (assigned), queued again until n2 came, attempt 2
                # (assigned, then running: two bars)
                assert detail["rows"] == ["queued", "assigned", "queued", "assigned"]
                assert detail["bars"] == 5 and detail["outcomes"] == ["rejected", "done"]
                assert detail["facts"]["payload"] == "111 B"
                assert detail["facts"]["output"] == "61 B"
                assert detail["facts"]["tried"] == "n1"
                assert detail["error"] == "\u2013"  # an en dash: no error
                assert detail["actions"] == ["a-retried", "done", 0]
                screenshot = await page.screenshot(tmp_path / "job.png")

                await page.call("Page.navigate", url=f"{url}/?token={TOKEN}#job/a-bad")
                failed = await wait_for(page, DETAIL, lambda v: v["id"] == "a-bad")
                assert failed["error"] == "E_BROKEN: it broke"
                assert failed["attempts"][0][:3] == ["1", "n1", "failed"]
                assert page.errors() == []  # no CSP violation, no script error
    assert screenshot.stat().st_size > 10_000
    print(f"job detail screenshot: {screenshot}; jobs table: {tmp_path / 'jobs.png'}")
