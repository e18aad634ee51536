"""The ui's operator actions: the admin token and its settings, POST /api/admin/... on both
stores (the read-only token gets 403 and nothing changes), and the dashboard's buttons in
headless Chromium."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from schedd import protocol as p
from schedd.config import converter
from schedd.plugins import ui
from schedd.plugins.ui import UiSettings
from schedd.plugins.ui.admin import MAX_BODY, requeue_filter
from schedd.sdk import JobContext, Node
from tests.plugins.chromium import CHROMIUM, open_page
from tests.plugins.test_ui import TOKEN, HttpResponse, http, load_errors, ui_daemon

ADMIN = "ui-admin-token-0123456789"


async def post(url: str, path: str, token: str | None, body: bytes = b"{}",
               method: str = "POST") -> HttpResponse:
    return await http(url, path, token=token, method=method, body=body,
                      headers=[("Content-Type", "application/json")])


# -- settings ------------------------------------------------------------------------------------


def test_admin_token_settings(tmp_path: Path) -> None:
    [short] = load_errors({"admin_token": "short"})
    assert short.startswith("$.plugins.ui.admin_token: a token needs at least 16 characters")
    [same] = load_errors({"token": TOKEN, "admin_token": TOKEN})
    assert "the admin token is the read-only token" in same
    admin_file = tmp_path / "admin"
    admin_file.write_text(f"# operators\n{ADMIN}\n")
    [both] = load_errors({"admin_token": ADMIN, "admin_token_file": str(admin_file)})
    assert "admin_token and admin_token_file are both set" in both
    read_file = tmp_path / "read"
    read_file.write_text(f"{ADMIN}\n")
    [same_file] = load_errors({"token_file": str(read_file), "admin_token_file": str(admin_file)})
    assert "the admin token is the read-only token" in same_file
    admin_file.write_text("tiny\n")
    [tiny] = load_errors({"admin_token_file": str(admin_file)})
    assert "admin_token_file" in tiny and "at least 16 characters" in tiny
    admin_file.write_text(f"{ADMIN}\n")
    settings = converter.structure({"admin_token_file": str(admin_file)}, UiSettings)
    assert ui._admin_token(settings) == ADMIN
    assert ui._admin_token(UiSettings()) == ""
    assert ADMIN not in repr(UiSettings(admin_token=ADMIN))


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"[1]", "must be a JSON object"),
        (b"{", "not JSON"),
        (b'{"limit": 101}', "limit must be an integer from 1 to 100"),
        (b'{"limit": 1000000000}', "limit must be an integer from 1 to 100"),
        (b'{"limit": true}', "limit must be an integer"),
        (b'{"states": ["done"]}', "states must be"),
        (b'{"states": []}', "states must be"),
        (b'{"since": -1}', "since must be"),
        (b'{"pool": ""}', "pool must be"),
        (b'{"colour": 1}', "unknown field(s) colour"),
    ],
)
def test_requeue_filter_refusals(body: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        requeue_filter(body)


def test_requeue_filter_defaults() -> None:
    wanted = requeue_filter(b"")
    assert (wanted.states, wanted.pool, wanted.since, wanted.limit) == (("failed",), None, None,
                                                                        100)
    wanted = requeue_filter(b'{"states": ["failed", "timed_out"], "pool": "p", "since": 600}')
    assert (wanted.states, wanted.pool, wanted.since) == (("failed", "timed_out"), "p", 600.0)


# -- HTTP ----------------------------------------------------------------------------------------


async def _failed_job(d: Any, node: Any, job_id: str) -> None:
    client = await d.client()
    await client.send(p.Submit(pools=["p"], job_id=job_id, max_attempts=1))
    await client.expect(p.Accepted)
    assign = await node.expect(p.Assign)
    await node.send(p.Result(job_id=job_id, attempt=assign.attempt, ok=False,
                             error=p.ErrorInfo(code="E_X", message="x")))
    assert (await client.expect(p.Done)).state == "failed"


async def test_admin_endpoints(store_url: str) -> None:
    async with ui_daemon(store_url, SCHEDD_PLUGINS__UI__ADMIN_TOKEN=ADMIN) as (d, url):
        node, _ = await d.node("p", node_id="n1")
        await _failed_job(d, node, "j1")

        async def node_state() -> str:
            return {n.node_id: n.state for n in await d.app.queries.nodes()}["n1"]

        async def job_state() -> str:
            job = await d.app.queries.job("j1")
            assert job is not None
            return job.state

        # refused: nothing changes
        for token, status in ((TOKEN, 403), (None, 401), ("wrong-token-0123456789", 401)):
            for path in ("/api/admin/nodes/n1/drain", "/api/admin/jobs/j1/requeue",
                         "/api/admin/jobs/j1/cancel", "/api/admin/jobs/requeue"):
                response = await post(url, path, token)
                assert response.status == status, (path, token, response.body)
        assert (await node_state(), await job_state()) == ("online", "failed")
        refused = await post(url, "/api/admin/nodes/n1/drain", TOKEN)
        assert refused.json()["error"]["code"] == "forbidden"
        # the admin token in the query string is not accepted
        assert (await post(url, f"/api/admin/nodes/n1/drain?token={ADMIN}", None)).status == 401
        assert (await post(url, "/api/admin/nodes/n1/drain", ADMIN, method="GET")).status == 405
        # drain, idempotent; undrain
        response = await post(url, "/api/admin/nodes/n1/drain", ADMIN)
        assert response.status == 200
        assert response.json() == {"action": "drain", "results": [
            {"node_id": "n1", "outcome": "drained", "state": "draining", "jobs": 0}]}
        again = await post(url, "/api/admin/nodes/n1/drain", ADMIN)
        assert again.json()["results"][0]["outcome"] == "unchanged"
        assert await node_state() == "draining"
        assert isinstance(await node.expect(p.Drain), p.Drain)
        response = await post(url, "/api/admin/nodes/n1/undrain", ADMIN)
        assert response.json()["results"][0]["outcome"] == "undrained"
        assert await node_state() == "online"
        # requeue one, cancel it, requeue by filter
        response = await post(url, "/api/admin/jobs/j1/requeue", ADMIN)
        assert response.json()["results"] == [
            {"job_id": "j1", "outcome": "requeued", "state": "assigned", "attempt": 2}]
        response = await post(url, "/api/admin/jobs/j1/requeue", ADMIN)
        assert response.json()["results"][0]["outcome"] == "unchanged"
        response = await post(url, "/api/admin/jobs/j1/cancel", ADMIN)
        assert response.json()["results"][0]["outcome"] == "canceled"
        response = await post(url, "/api/admin/jobs/requeue", ADMIN,
                              b'{"states": ["canceled"], "since": 600, "limit": 5}')
        assert [(r["job_id"], r["outcome"]) for r in response.json()["results"]] == [
            ("j1", "requeued")]
        # bounded and checked
        huge = await post(url, "/api/admin/jobs/requeue", ADMIN, b'{"limit": 100000}')
        assert huge.status == 400 and "at most 100" in huge.json()["error"]["message"]
        big = await post(url, "/api/admin/jobs/requeue", ADMIN, b"{" + b" " * MAX_BODY + b"}")
        assert big.status == 400
        # unknown ids and paths, and a done job
        for path in ("/api/admin/nodes/ghost/drain", "/api/admin/jobs/ghost/cancel",
                     "/api/admin/jobs/ghost/requeue", "/api/admin/nodes/n1/explode",
                     "/api/admin/things/x/drain", "/api/admin/nodes/drain"):
            assert (await post(url, path, ADMIN)).status == 404, path
        await node.send(p.Result(job_id="j1", attempt=3, ok=True, output=1))
        with trio.fail_after(5):
            while await job_state() != "done":
                await trio.sleep(0.02)
        conflict = await post(url, "/api/admin/jobs/j1/requeue", ADMIN)
        assert conflict.status == 409 and "E_BAD_STATE" in conflict.json()["error"]["message"]


async def test_no_admin_token_no_actions() -> None:
    async with ui_daemon() as (d, url):
        await d.node("p", node_id="n1")
        for token in (TOKEN, ADMIN, None):
            response = await post(url, "/api/admin/nodes/n1/drain", token)
            assert response.status == 403
            assert "no admin token is configured" in response.json()["error"]["message"]
        assert {n.node_id: n.state for n in await d.app.queries.nodes()}["n1"] == "online"


# -- the dashboard -------------------------------------------------------------------------------

ROWS = """[...document.querySelectorAll("#nodes tbody tr[data-node]")].map((tr) =>
  [tr.dataset.node, tr.dataset.state, tr.querySelector("td.actions button")?.textContent ?? ""])"""


async def fail(ctx: JobContext) -> Any:
    raise RuntimeError("it broke")


async def wait_for(page: Any, expression: str, timeout: float = 20) -> Any:
    with trio.fail_after(timeout):
        while not (value := await page.evaluate(expression)):
            await trio.sleep(0.1)
    return value


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary on PATH (CI installs it)")
async def test_dashboard_drains_a_node_and_requeues_a_job(tmp_path: Path) -> None:
    env = {"SCHEDD_PLUGINS__TRANSPORT_TCP__LISTEN": "127.0.0.1:0",
           "SCHEDD_PLUGINS__UI__REFRESH": "0.3", "SCHEDD_PLUGINS__UI__ADMIN_TOKEN": ADMIN}
    with trio.fail_after(90):
        async with ui_daemon(plugins='["transport_tcp", "ui"]', **env) as (d, url), \
                trio.open_nursery() as nodes:  # fmt: skip
            tcp = d.app.listeners["transport_tcp"]
            for node_id in ("gpu-a1", "gpu-a2"):
                await nodes.start(Node(tcp, fail, pools=["p"], node_id=node_id,
                                       heartbeat_interval=0.5).run)
            client = await d.client()
            await client.send(p.Submit(pools=["p"], job_id="j-failed", max_attempts=1))
            await client.expect(p.Accepted)
            assert (await client.expect(p.Done)).state == "failed"
            async with open_page(tmp_path / "chromium") as page:
                await page.call("Page.navigate", url=f"{url}/?token={TOKEN}")
                rows = await wait_for(page, f"(() => {{ const r = {ROWS}; "
                                            "return r.length === 2 && r; })()")
                assert sorted(rows) == [["gpu-a1", "online", "drain"],
                                        ["gpu-a2", "online", "drain"]]
                # without the admin token: asked for, nothing changes
                await page.evaluate('document.querySelector(\'tr[data-node="gpu-a1"] '
                                    'td.actions button\').click()')
                result = await page.evaluate('document.getElementById("admin-result").textContent')
                assert "enter the admin token first" in result
                # the read-only token is refused by the daemon
                await page.evaluate(f'document.getElementById("admin-token").value = "{TOKEN}"; '
                                    'document.getElementById("admin-save").click()')
                await page.evaluate('document.querySelector(\'tr[data-node="gpu-a1"] '
                                    'td.actions button\').click()')
                refused = await wait_for(page, '(() => { const r = document.getElementById('
                                               '"admin-result"); return r.dataset.state === '
                                               '"error" && r.textContent; })()')
                assert "refused (403)" in refused
                assert {n.node_id: n.state for n in await d.app.queries.nodes()}["gpu-a1"] == \
                    "online"
                # the admin token: drain, and the table shows it
                await page.evaluate('document.getElementById("admin-forget").click(); '
                                    f'document.getElementById("admin-token").value = "{ADMIN}"; '
                                    'document.getElementById("admin-save").click()')
                assert await page.evaluate('sessionStorage.getItem("schedd-admin-token")') == ADMIN
                await page.evaluate('document.querySelector(\'tr[data-node="gpu-a1"] '
                                    'td.actions button\').click()')
                drained = await wait_for(page, f"(() => {{ const r = {ROWS}; return r.some("
                                               "(x) => x[0] === 'gpu-a1' && x[1] === "
                                               "'draining') && r; })()")
                assert sorted(drained) == [["gpu-a1", "draining", "undrain"],
                                           ["gpu-a2", "online", "drain"]]
                result = await page.evaluate('document.getElementById("admin-result").textContent')
                assert result == "drain gpu-a1: drained (now draining)"
                # a job page's actions: the box another view renders
                await page.evaluate('(() => { const box = document.createElement("div"); '
                                    'box.id = "job-actions"; box.dataset.jobId = "j-failed"; '
                                    'box.dataset.jobState = "failed"; '
                                    'document.querySelector("main").prepend(box); })()')
                buttons = await wait_for(page, '(() => { const b = [...document.querySelectorAll('
                                               '"#job-actions button")].map((x) => x.textContent);'
                                               ' return b.length && b; })()')
                assert buttons == ["requeue"]
                await page.evaluate('document.querySelector("#job-actions button").click()')
                done = await wait_for(page, '(() => { const r = document.getElementById('
                                            '"admin-result"); return r.dataset.state === "done" '
                                            '&& r.textContent; })()')
                assert done.startswith("requeue j-failed: requeued (now ")
                await page.evaluate('document.getElementById("job-actions").dataset.jobState '
                                    '= "running"')
                assert await wait_for(page, '(() => { const b = [...document.querySelectorAll('
                                            '"#job-actions button")].map((x) => x.textContent);'
                                            ' return b[0] === "cancel" && b; })()') == ["cancel"]
                screenshot = await page.screenshot(tmp_path / "dashboard-actions.png")
                # no CSP violation, no script error (but the read-only token's refusal)
                assert [e for e in page.errors() if "status of 403" not in e] == []
            assert {n.node_id: n.state for n in await d.app.queries.nodes()}["gpu-a1"] == \
                "draining"
            job = await d.app.queries.job("j-failed")
            assert job is not None and job.attempt >= 2
            nodes.cancel_scope.cancel()
    print(f"dashboard actions screenshot: {screenshot}")
