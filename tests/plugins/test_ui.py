"""The ui plugin: token, JSON API, /metrics, the dashboard in a real browser, docs/metrics.md."""

from __future__ import annotations

import logging
import random
import re
import ssl
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from importlib.metadata import entry_points, version
from pathlib import Path
from typing import Any

import attrs
import orjson
import pytest
import trio
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families

from schedd import protocol as p
from schedd.config import Config, converter
from schedd.core import FinishedJob, NodeInfo, PoolInfo, Queries
from schedd.devtools.redis_process import RedisServer
from schedd.errors import ConfigError, StoreUnavailable
from schedd.plugin_manager import PluginManager
from schedd.plugins import ui
from schedd.plugins.ui import UiSettings, add_collector
from schedd.plugins.ui.asgi import Dashboard, UiApplication
from schedd.plugins.ui.metrics import (
    METRICS,
    OTHER,
    build_families,
    capped,
    exported_sample_names,
    local_heartbeats,
)
from schedd.plugins.ui.stats import Snapshot, latency_ms, percentile, throughput
from schedd.sdk import Client, JobContext, Node
from schedd.store import open_store
from schedd.store.keys import Keys
from schedd.testing import FakeDaemon
from tests.daemon.harness import Daemon, running_daemon
from tests.plugins import make_tls_files
from tests.plugins.chromium import CHROMIUM, open_page

PLUGIN = "ui"
TOKEN = "test-token-0123456789"
DOCS = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"


# ---------------------------------------------------------------------------------------------
# A raw HTTP/1.1 client (httpx is not a dependency)
# ---------------------------------------------------------------------------------------------


@attrs.frozen
class HttpResponse:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)


async def http(
    url: str,
    path: str,
    *,
    token: str | None = None,
    method: str = "GET",
    headers: Iterable[tuple[str, str]] = (),
    ssl_context: ssl.SSLContext | None = None,
    body: bytes | None = None,
) -> HttpResponse:
    """One request on a fresh connection (``Connection: close``), read to the end."""
    host, _, port = url.split("://", 1)[1].rstrip("/").rpartition(":")
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}", "Connection: close"]
    if token is not None:
        lines.append(f"Authorization: Bearer {token}")
    lines += [f"{name}: {value}" for name, value in headers]
    if body is not None:
        lines.append(f"Content-Length: {len(body)}")
    with trio.fail_after(10):
        stream: trio.abc.Stream = await trio.open_tcp_stream(host.strip("[]"), int(port))
        if ssl_context is not None:
            stream = trio.SSLStream(stream, ssl_context, server_hostname=host.strip("[]"),
                                    https_compatible=True)
        async with stream:
            await stream.send_all(("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b""))
            data = b""
            while chunk := await stream.receive_some(65536):
                data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    parsed = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        parsed[name.strip().lower()] = value.strip()
    if "content-length" in parsed:
        body = body[: int(parsed["content-length"])]
    return HttpResponse(int(status_line.split()[1]), parsed, body)


# ---------------------------------------------------------------------------------------------
# Daemons with the ui, raw protocol peers to make data
# ---------------------------------------------------------------------------------------------


@asynccontextmanager
async def ui_daemon(
    store_url: str = "memory://", *, plugins: str = '["ui"]', **env: str
) -> AsyncIterator[tuple[Daemon, str]]:
    env = {
        "SCHEDD_PLUGINS__ENABLED": plugins,
        "SCHEDD_PLUGINS__UI__LISTEN": "127.0.0.1:0",
        "SCHEDD_PLUGINS__UI__TOKEN": TOKEN,
        **env,
    }
    async with running_daemon(store_url, **env) as daemon:
        yield daemon, daemon.app.listeners[PLUGIN]


async def run_job(client: Any, node: Any, pool: str, job_id: str, ok: bool = True) -> None:
    await client.send(p.Submit(pools=[pool], job_id=job_id, payload={"n": 1}))
    await client.expect(p.Accepted)
    assign = await node.expect(p.Assign)
    await node.send(p.Accept(job_id=assign.job_id, attempt=assign.attempt))
    error = None if ok else p.ErrorInfo(code="E_BROKEN", message="it broke")
    await node.send(p.Result(job_id=assign.job_id, attempt=assign.attempt, ok=ok,
                             output={"echo": 1} if ok else None, error=error))
    await client.expect(p.Done)


async def eventually(check: Any, timeout: float = 5.0) -> Any:
    """Poll ``await check()`` until it returns something truthy (snapshots are reused briefly)."""
    with trio.fail_after(timeout):
        while not (result := await check()):
            await trio.sleep(0.05)
    return result


# ---------------------------------------------------------------------------------------------
# Registration and settings
# ---------------------------------------------------------------------------------------------


def test_registered_through_the_entry_point() -> None:
    [entry] = [e for e in entry_points(group="schedd.plugins") if e.name == PLUGIN]
    assert entry.value == "schedd.plugins.ui"
    manager = PluginManager.load(Config(plugins=(PLUGIN,)))
    assert manager.plugin_config(PLUGIN) == UiSettings()
    settings = UiSettings()
    assert (settings.listen, settings.token, settings.refresh) == ("127.0.0.1:8780", "", 2.0)


def load_errors(table: dict[str, Any]) -> list[str]:
    config = Config(plugins=(PLUGIN,), plugin_tables={PLUGIN: table})
    with pytest.raises(ConfigError) as caught:
        PluginManager.load(config)
    return caught.value.errors


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"token": "short"}, "$.plugins.ui.token: a token needs at least 16 characters, got 5"),
        ({"token": "with space 0123456789"}, "$.plugins.ui.token: a token is printable ASCII"),
        ({"refresh": 0.0}, "$.plugins.ui.refresh: expected a number between 0.2 and 3600"),
        ({"metrics_label_limit": 1}, "$.plugins.ui.metrics_label_limit: expected an integer >= 2"),
        ({"listen": "8780"}, "$.plugins.ui.listen: expected host:port"),
        ({"colour": "red"}, "$.plugins.ui.colour: unknown setting"),
    ],
)
def test_bad_settings_are_reported_with_their_path(table: dict[str, Any], message: str) -> None:
    errors = load_errors(table)
    assert any(line.startswith(message) for line in errors), errors


def test_token_and_token_file(tmp_path: Path) -> None:
    token_file = tmp_path / "ui-token"
    token_file.write_text("# the dashboard token\n\n  file-token-0123456789  \n")
    settings = converter.structure({"token_file": str(token_file)}, UiSettings)
    assert ui._token(settings) == ("file-token-0123456789", False)
    [both] = load_errors({"token": TOKEN, "token_file": str(token_file)})
    assert both == "$.plugins.ui: token and token_file are both set: set one of them"
    token_file.write_text("# nothing\n")
    [empty] = load_errors({"token_file": str(token_file)})
    assert "holds no token" in empty
    assert repr(UiSettings(token=TOKEN)).count(TOKEN) == 0  # never in logs


# ---------------------------------------------------------------------------------------------
# Start-up: listening, refusals, the logged dashboard URL
# ---------------------------------------------------------------------------------------------


async def test_generated_token_is_logged_in_the_dashboard_url(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="schedd")
    env = {"SCHEDD_PLUGINS__ENABLED": '["ui"]', "SCHEDD_PLUGINS__UI__LISTEN": "127.0.0.1:0"}
    async with running_daemon(**env) as d:
        url = d.app.listeners[PLUGIN]
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", url)
        [line] = [r for r in caplog.records if r.getMessage().startswith("dashboard: ")]
        assert line.levelno == logging.WARNING
        pattern = r"dashboard: (http://\S+)/\?token=([A-Za-z0-9_-]{40,})"
        match = re.search(pattern, line.getMessage())
        assert match and match.group(1) == url
        token = match.group(2)
        assert (await http(url, f"/?token={token}")).status == 200
        assert (await http(url, "/api/v1/stats", token=token)).status == 200
        assert (await http(url, "/api/v1/stats", token=TOKEN)).status == 401


async def test_configured_token_is_never_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="schedd")
    async with ui_daemon() as (_, url):
        assert (await http(url, "/api/v1/stats", token=TOKEN)).status == 200
    assert TOKEN not in caplog.text
    assert f"dashboard: {url}/?token=<the [plugins.ui] token>" in caplog.text


class FakeUiApp(FakeDaemon):
    """The public fake daemon, answering what the ui reads from a store (empty, or broken)."""

    def __init__(self, settings: UiSettings, store: Any, *, tokens: bool = False) -> None:
        super().__init__({PLUGIN: settings}, tokens=tokens, queries=Queries(store, Keys("schedd")))
        self.store = store

    async def store_ping(self) -> None:
        await self.store.execute("PING")

    async def store_time_ms(self) -> int:
        seconds, micros = await self.store.execute("TIME")
        return int(seconds) * 1000 + int(micros) // 1000


async def test_non_loopback_needs_auth_tokens_and_a_configured_ui_token() -> None:
    async with open_store("memory://") as store, trio.open_nursery() as nursery:
        no_auth = FakeUiApp(UiSettings(listen="0.0.0.0:0", token=TOKEN), store)
        with pytest.raises(ConfigError, match="not loopback"):
            await nursery.start(ui.serve, no_auth)
        assert no_auth.checked == [(PLUGIN, "0.0.0.0")]
        generated = FakeUiApp(UiSettings(listen="0.0.0.0:0"), store, tokens=True)
        refused = r"\$\.plugins\.ui\.listen: .*token would be generated"
        with pytest.raises(ConfigError, match=refused):
            await nursery.start(ui.serve, generated)
        allowed = FakeUiApp(UiSettings(listen="0.0.0.0:0", token=TOKEN), store, tokens=True)
        await nursery.start(ui.serve, allowed)
        url = allowed.urls[PLUGIN]
        assert url.startswith("http://0.0.0.0:")
        port = url.rpartition(":")[2]
        assert (await http(f"http://127.0.0.1:{port}", "/healthz")).json() == {
            "ok": True, "version": "0.0.0-test", "instance": "test-instance"}
        loopback = FakeUiApp(UiSettings(listen="127.0.0.1:0"), store)
        await nursery.start(ui.serve, loopback)
        assert loopback.checked == []  # check_listener's warning is about nodes and clients
        nursery.cancel_scope.cancel()


async def test_address_in_use_is_a_config_error() -> None:
    [taken] = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = taken.socket.getsockname()[1]
    async with open_store("memory://") as store, trio.open_nursery() as nursery:
        app = FakeUiApp(UiSettings(listen=f"127.0.0.1:{port}", token=TOKEN), store)
        with pytest.raises(ConfigError, match=r"\$\.plugins\.ui\.listen: cannot listen on"):
            await nursery.start(ui.serve, app)
    await taken.aclose()


async def test_https_with_tls_files(tmp_path: Path) -> None:
    tls = make_tls_files(tmp_path)
    settings = UiSettings(listen="127.0.0.1:0", token=TOKEN, tls_cert=tls.cert, tls_key=tls.key)
    async with open_store("memory://") as store, trio.open_nursery() as nursery:
        app = FakeUiApp(settings, store)
        await nursery.start(ui.serve, app)
        url = app.urls[PLUGIN]
        assert url.startswith("https://127.0.0.1:")
        response = await http(url, "/api/v1/pools", token=TOKEN, ssl_context=tls.client_context)
        assert (response.status, response.json()["pools"]) == (200, [])
        nursery.cancel_scope.cancel()


# ---------------------------------------------------------------------------------------------
# Authentication and the JSON API
# ---------------------------------------------------------------------------------------------

PROTECTED = ["/", "/metrics", "/api/v1/nodes", "/api/v1/pools", "/api/v1/stats",
             "/api/v1/instances", "/api/v1/clients", "/api/v1/jobs/j1", "/api/v1/nope", "/nope"]


async def test_every_path_but_healthz_needs_the_token() -> None:
    async with ui_daemon() as (d, url):
        health = await http(url, "/healthz")
        assert (health.status, health.json()) == (
            200, {"ok": True, "version": version("schedd"), "instance": d.app.instance})
        for path in PROTECTED:
            for token in (None, "wrong-token-0123456789", TOKEN[:-1], TOKEN + "x", ""):
                response = await http(url, path, token=token)
                assert response.status == 401, (path, token)
                assert response.json()["error"]["code"] == "unauthorized"
                assert response.headers["www-authenticate"] == 'Bearer realm="schedd"'
            wrong_query = await http(url, f"{path}?token=nope")
            assert wrong_query.status == 401
        # both ways of presenting it work; the header wins over the query
        assert (await http(url, "/api/v1/stats", token=TOKEN)).status == 200
        assert (await http(url, f"/api/v1/stats?token={TOKEN}")).status == 200
        assert (await http(url, f"/api/v1/stats?token={TOKEN}", token="bad")).status == 401
        basic = await http(url, "/api/v1/stats", headers=[("Authorization", f"Basic {TOKEN}")])
        assert basic.status == 401


async def test_methods_head_and_unknown_paths() -> None:
    async with ui_daemon() as (_, url):
        post = await http(url, "/api/v1/stats", token=TOKEN, method="POST")
        assert (post.status, post.headers["allow"]) == (405, "GET, HEAD")
        assert post.json()["error"]["code"] == "method_not_allowed"
        head = await http(url, "/api/v1/stats", token=TOKEN, method="HEAD")
        assert head.status == 200 and head.body == b"" and int(head.headers["content-length"]) > 0
        missing = await http(url, "/api/v1/nope", token=TOKEN)
        assert (missing.status, missing.json()["error"]["code"]) == (404, "not_found")
        page = await http(url, "/", token=TOKEN)
        assert page.headers["content-type"] == "text/html; charset=utf-8"
        csp = page.headers["content-security-policy"]
        assert "default-src 'none'" in csp and "connect-src 'self'" in csp
        assert "'unsafe-inline'" not in csp
        for response in (post, head, missing, page):
            assert response.headers["cache-control"] == "no-store"
            assert response.headers["referrer-policy"] == "no-referrer"


async def test_api_shapes(store_url: str) -> None:
    async with ui_daemon(store_url) as (d, url):
        await d.node("zh>en", capacity=2, node_id="n1")
        n2, _ = await d.node("zh>en", "en>ja", capacity=1, node_id="n2")
        client = await d.connect("client")
        # one job each way: n2 (the only en>ja member) finishes one, fails another
        await run_job(client, n2, "en>ja", "j-ok")
        await run_job(client, n2, "en>ja", "j-bad", ok=False)
        # and one that waits: a pool nobody serves
        await client.send(p.Submit(pools=["fr>de"], job_id="j-waiting"))
        assert (await client.expect(p.Accepted)).state == "queued"

        async def stats() -> Any:
            data = (await http(url, "/api/v1/stats", token=TOKEN)).json()
            return data if data["totals"]["submitted"] == 3 else None

        data = await eventually(stats)
        assert set(data) == {"now_ms", "instance", "jobs", "totals", "nodes", "pools",
                             "throughput", "latency_ms", "exclusions", "instances"}
        assert data["instance"] == d.app.instance
        assert data["jobs"] == {"delayed": 0, "queued": 1, "assigned": 0, "running": 0, "done": 1,
                                "failed": 1, "canceled": 0, "timed_out": 0}
        assert data["totals"] == {"submitted": 3, "done": 1, "failed": 1, "canceled": 0,
                                  "timed_out": 0}
        assert data["nodes"] == {"total": 2, "by_state": {"online": 2, "draining": 0,
                                 "offline": 0}, "capacity": 3, "used": 0}
        assert data["pools"]["count"] == 3 and data["pools"]["free_slots"] == 4
        throughput_ = data["throughput"]
        assert (throughput_["window_s"], throughput_["span_s"], throughput_["finished"]) == (
            60.0, 60.0, 2)
        assert throughput_["finished_per_s"] == pytest.approx(2 / 60)
        assert throughput_["by_state_per_s"]["failed"] == pytest.approx(1 / 60)
        done_latency = data["latency_ms"]["submit_to_done"]
        assert done_latency["count"] == 1 and done_latency["p50"] >= 0
        assert set(done_latency) == {"count", "p50", "p90", "p99"}
        assert data["latency_ms"]["submit_to_assigned"]["count"] == 2
        assert data["exclusions"] == {"no_free_slot": 1}  # fr>de has no member

        nodes = (await http(url, "/api/v1/nodes", token=TOKEN)).json()
        assert set(nodes) == {"now_ms", "nodes"}
        by_id = {n["node_id"]: n for n in nodes["nodes"]}
        assert set(by_id) == {"n1", "n2"}
        assert set(by_id["n2"]) == {
            "node_id", "state", "owner", "epoch", "capacity", "used", "pools", "load",
            "last_heartbeat_ms", "alive_until_ms", "capabilities", "labels", "reason",
            "protocol", "heartbeat_age_s",
        }
        assert by_id["n2"]["protocol"] == p.PROTOCOL_VERSION
        assert (by_id["n2"]["state"], by_id["n2"]["pools"], by_id["n2"]["owner"]) == (
            "online", ["zh>en", "en>ja"], d.app.instance)
        assert 0 <= by_id["n2"]["heartbeat_age_s"] < 5

        pools = (await http(url, "/api/v1/pools", token=TOKEN)).json()
        by_pool = {pool["pool"]: pool for pool in pools["pools"]}
        assert by_pool["zh>en"] == {"pool": "zh>en", "members": {"n1": 2, "n2": 1},
                                    "free_slots": 3, "queued": 0, "size": 2}
        assert by_pool["fr>de"] == {"pool": "fr>de", "members": {}, "free_slots": 0,
                                    "queued": 1, "size": 0}

        async def instances() -> Any:
            data = (await http(url, "/api/v1/instances", token=TOKEN)).json()
            return data if data["instances"] else None

        listed = await eventually(instances)
        [me] = listed["instances"]
        assert (me["instance"], me["alive"], me["this"]) == (d.app.instance, True, True)
        assert me["expires_ms"] > listed["now_ms"]
        assert listed["this"] == {"instance": d.app.instance, "version": version("schedd"),
                                  "listeners": {"ui": url},
                                  "connections": {"node": 2, "client": 1, "pending": 0}}

        [connected] = (await http(url, "/api/v1/clients", token=TOKEN)).json()["clients"]
        assert set(connected) == {"instance", "principal", "peer", "protocol", "name",
                                  "connected_ms"}
        assert (connected["instance"], connected["protocol"]) == (
            d.app.instance, p.PROTOCOL_VERSION)

        job = (await http(url, "/api/v1/jobs/j-bad", token=TOKEN)).json()["job"]
        assert (job["job_id"], job["state"], job["ok"], job["node"]) == (
            "j-bad", "failed", False, "n2")
        assert job["error"]["code"] == "E_BROKEN"
        assert set(job["timings"]) == {"submitted", "assigned", "accepted", "finished"}
        missing = await http(url, "/api/v1/jobs/nope", token=TOKEN)
        assert missing.status == 404
        assert missing.json()["error"] == {
            "code": "not_found",
            "message": "no job 'nope' (never submitted, or past its retention)",
        }
        # ids are percent-decoded, and may hold a slash
        await client.send(p.Submit(pools=["fr>de"], job_id="a/b c"))
        await client.expect(p.Accepted)
        slashed = await http(url, "/api/v1/jobs/a%2Fb%20c", token=TOKEN)
        assert slashed.json()["job"]["job_id"] == "a/b c"


@pytest.mark.redis_server
async def test_every_instance_serves_the_same_global_view(redis_server: RedisServer) -> None:
    from tests.conftest import _flush

    _flush(redis_server.port)
    async with ui_daemon(redis_server.url) as (a, url_a), ui_daemon(redis_server.url) as (b, url_b):
        await a.node("p", node_id="on-a")
        await b.node("p", node_id="on-b")

        async def both_nodes(url: str) -> Any:
            nodes = (await http(url, "/api/v1/nodes", token=TOKEN)).json()["nodes"]
            return sorted((n["node_id"], n["owner"]) for n in nodes)

        expected = sorted([("on-a", a.app.instance), ("on-b", b.app.instance)])
        assert await eventually(lambda: _equal(both_nodes(url_a), expected)) is True
        assert await eventually(lambda: _equal(both_nodes(url_b), expected)) is True

        async def two_instances(url: str) -> Any:
            data = (await http(url, "/api/v1/instances", token=TOKEN)).json()
            return sorted(i["instance"] for i in data["instances"] if i["alive"])

        names = sorted([a.app.instance, b.app.instance])
        assert await eventually(lambda: _equal(two_instances(url_a), names)) is True
        assert await eventually(lambda: _equal(two_instances(url_b), names)) is True


async def _equal(value: Any, expected: Any) -> bool:
    return bool(await value == expected)


# ---------------------------------------------------------------------------------------------
# /metrics
# ---------------------------------------------------------------------------------------------


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


async def test_metrics_are_parsed_by_prometheus_client(store_url: str) -> None:
    async with ui_daemon(store_url) as (d, url):
        n1, _ = await d.node("zh>en", capacity=2, node_id="n1")
        client = await d.connect("client")
        await run_job(client, n1, "zh>en", "j1")
        await run_job(client, n1, "zh>en", "j2", ok=False)
        await client.send(p.Submit(pools=["fr>de"], job_id="j3"))
        await client.expect(p.Accepted)

        async def scrape() -> Any:
            response = await http(url, "/metrics", token=TOKEN)
            assert response.status == 200
            assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
            found = samples(response.body.decode())
            return found if found[("schedd_jobs_submitted_total", ())] == 3 else None

        found = await eventually(scrape)
        names = {name for name, _ in found}
        # with data, every family has samples
        assert names == {spec.name for spec in METRICS}
        assert found[("schedd_redis_up", ())] == 1
        assert found[("schedd_jobs", (("state", "queued"),))] == 1
        assert found[("schedd_jobs", (("state", "done"),))] == 1
        assert found[("schedd_jobs_finished_total", (("state", "done"),))] == 1
        assert found[("schedd_jobs_finished_total", (("state", "failed"),))] == 1
        assert found[("schedd_nodes", (("state", "online"),))] == 1
        assert found[("schedd_nodes", (("state", "offline"),))] == 0
        assert found[("schedd_slots_capacity", ())] == 2
        assert found[("schedd_slots_used", ())] == 0
        assert found[("schedd_pools", ())] == 2
        assert found[("schedd_pool_members", (("pool", "zh>en"),))] == 1
        assert found[("schedd_pool_free_slots", (("pool", "zh>en"),))] == 2
        assert found[("schedd_queue_length", (("pool", "fr>de"),))] == 1
        assert found[("schedd_queue_length", (("pool", "zh>en"),))] == 0
        assert found[("schedd_local_connections", (("role", "node"),))] == 1
        assert found[("schedd_local_connections", (("role", "client"),))] == 1
        assert found[("schedd_jobs_finished_per_second", ())] == pytest.approx(2 / 60)
        assert found[("schedd_job_latency_samples", (("phase", "submit_to_done"),))] == 1
        assert found[("schedd_job_latency_samples", (("phase", "submit_to_assigned"),))] == 2
        quantiles = {labels: v for (name, labels), v in found.items()
                     if name == "schedd_job_latency_seconds"}
        assert len(quantiles) == 6
        assert all(0 <= v < 5 for v in quantiles.values())
        assert found[("schedd_instances", ())] in (0, 1)  # presence is flushed periodically
        # no label carries a node or job id
        for (_, labels) in found:
            assert not {value for _, value in labels} & {"n1", "j1", "j2", "j3"}


async def test_openmetrics_when_asked() -> None:
    async with ui_daemon() as (_, url):
        response = await http(url, "/metrics", token=TOKEN, headers=[
            ("Accept", "application/openmetrics-text; version=1.0.0")])
        assert response.headers["content-type"].startswith("application/openmetrics-text")
        families = openmetrics_families(  # type: ignore[no-untyped-call]  # the strict parser
            response.body.decode())
        assert {f.name for f in families} >= {"schedd_redis_up", "schedd_jobs_submitted"}


class BrokenStore:
    url = "redis://gone"

    async def execute(self, *args: Any) -> Any:
        raise StoreUnavailable("connection refused")

    async def execute_many(self, commands: Any) -> Any:
        raise StoreUnavailable("connection refused")


def http_scope(path: str, token: str | None = TOKEN) -> dict[str, Any]:
    headers = [] if token is None else [(b"authorization", f"Bearer {token}".encode())]
    return {"type": "http", "method": "GET", "path": path, "query_string": b"",
            "headers": headers}


async def test_redis_down_healthz_503_and_metrics_still_answer() -> None:
    store = BrokenStore()
    app = FakeUiApp(UiSettings(token=TOKEN), store)
    application = UiApplication(app, TOKEN, Dashboard.load(2.0), 1000)
    health = await application.respond(http_scope("/healthz", token=None))
    assert health.status == 503
    assert orjson.loads(health.body) == {"ok": False, "error": "connection refused",
                                         "version": "0.0.0-test", "instance": "test-instance"}
    for path in ("/api/v1/stats", "/api/v1/clients"):
        stats = await application.respond(http_scope(path))
        assert stats.status == 503
        assert orjson.loads(stats.body)["error"]["code"] == "store_unavailable"
    metrics = await application.respond(http_scope("/metrics"))
    assert metrics.status == 200
    found = samples(metrics.body.decode())
    assert found[("schedd_redis_up", ())] == 0
    assert found[("schedd_local_connections", (("role", "node"),))] == 0
    assert found[("schedd_local_heartbeats_total", (("outcome", "written"),))] == 0
    assert {name for name, _ in found} == {
        "schedd_redis_up", "schedd_local_connections", "schedd_local_heartbeats_total",
        "schedd_local_nodes_silenced_total"}


def test_local_heartbeat_counters_come_from_the_batcher() -> None:
    counts = {"beats": 10, "sent": 4, "silenced": 2}
    families = {f.name: f for f in build_families(None, {}, label_limit=10,
                                                  heartbeats=local_heartbeats(counts))}
    beats = {s.labels["outcome"]: s.value for s in families["schedd_local_heartbeats"].samples}
    assert beats == {"written": 4, "unchanged": 6}
    assert families["schedd_local_nodes_silenced"].samples[0].value == 2
    assert local_heartbeats({}) == {"written": 0, "unchanged": 0, "silenced": 0}


async def test_a_nodes_heartbeats_are_counted_at_its_instance() -> None:
    async with ui_daemon() as (d, url):
        node, _ = await d.node("p", node_id="n1")
        await node.send(p.Heartbeat(inflight=0))
        await node.send(p.Ping(ref="after"))  # answered once the beat is recorded
        assert (await node.expect(p.Pong)).ref == "after"
        await d.app.batcher.flush()  # (or the batcher's own flush was first)
        response = await http(url, "/metrics", token=TOKEN)
        found = samples(response.body.decode())
        assert found[("schedd_local_heartbeats_total", (("outcome", "written"),))] >= 1
        assert found[("schedd_local_nodes_silenced_total", ())] == 0


async def test_other_plugins_add_collectors() -> None:
    from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily

    class Reconciled:
        def __init__(self) -> None:
            self.refreshed = 0

        async def refresh(self) -> None:
            self.refreshed += 1

        def collect(self) -> Iterable[Any]:
            family = CounterMetricFamily("schedd_reconcile_repairs", "repairs", labels=["kind"])
            family.add_metric(["orphan_job"], self.refreshed)
            yield family

    class Broken:
        def collect(self) -> Iterable[Any]:
            raise RuntimeError("bug")

    class Duplicate:
        def collect(self) -> Iterable[Any]:
            yield GaugeMetricFamily("schedd_pools", "a second schedd_pools", value=99)

    async with ui_daemon() as (d, url):
        reconciled = Reconciled()
        for collector in (reconciled, Broken(), Duplicate()):
            add_collector(d.daemon, collector)
        for expected in (1, 2):
            found = samples((await http(url, "/metrics", token=TOKEN)).body.decode())
            assert found[("schedd_reconcile_repairs_total", (("kind", "orphan_job"),))] == expected
            assert found[("schedd_pools", ())] == 0  # the duplicate was dropped
            assert found[("schedd_redis_up", ())] == 1


async def test_the_reconcile_plugin_exports_through_the_extension_point() -> None:
    env = {"SCHEDD_PLUGINS__RECONCILE__PERIOD": "0.05"}
    async with ui_daemon(plugins='["reconcile", "ui"]', **env) as (_, url):

        async def scrape() -> Any:
            found = samples((await http(url, "/metrics", token=TOKEN)).body.decode())
            passes = sum(v for (name, _), v in found.items()
                         if name == "schedd_reconcile_passes_total")  # fmt: skip
            return found if passes >= 1 else None

        found = await eventually(scrape)
        assert any(name == "schedd_reconcile_corrections_total" for name, _ in found)
        assert found[("schedd_redis_up", ())] == 1


# ---------------------------------------------------------------------------------------------
# Figures: percentiles, windows, label caps
# ---------------------------------------------------------------------------------------------


def finished(n: int, now_ms: int, every_ms: int, state: str = "done") -> list[FinishedJob]:
    """``n`` completions, newest first, one every ``every_ms`` up to ``now_ms``."""
    return [FinishedJob(job_id=f"j{i}", state=state, node="n", submitted_ms=now_ms - i * every_ms
                        - 100 - i, assigned_ms=now_ms - i * every_ms - 90,
                        accepted_ms=now_ms - i * every_ms - 80, finished_ms=now_ms - i * every_ms)
            for i in range(n)]  # fmt: skip


def test_percentiles_are_nearest_rank() -> None:
    values = list(range(1, 101))
    assert [percentile(values, q) for q in (50, 90, 99, 100)] == [50, 90, 99, 100]
    assert percentile([7], 99) == 7
    assert percentile([1, 2], 50) == 1
    assert percentile([], 50) is None


def test_throughput_window_and_trimmed_list() -> None:
    now = 1_000_000_000
    sparse = finished(100, now, 1000)  # one a second: 60 fall inside the last minute
    window = throughput(sparse, now)
    assert (len(window.recent), window.span_s) == (60, 60.0)
    assert window.per_second() == pytest.approx(1.0)
    # 2000 kept completions over 20 s: the window shrinks to what the list covers
    dense = finished(2000, now, 10)
    window = throughput(dense, now)
    assert window.span_s == pytest.approx(19.99)
    assert window.per_second() == pytest.approx(2000 / 19.99)
    # nothing recent
    assert throughput(finished(5, now - 120_000, 10), now).per_second() == 0


def test_latency_phases() -> None:
    now = 1_000_000_000
    jobs = finished(10, now, 100) + finished(3, now, 100, state="failed")
    figures = latency_ms(jobs)
    assert figures["submit_to_done"]["count"] == 10
    assert figures["submit_to_done"]["p50"] == 104  # 100 + i for i in 0..9, nearest rank 5
    assert figures["submit_to_assigned"]["count"] == 13
    never_assigned = attrs.evolve(jobs[0], assigned_ms=0)
    assert latency_ms([never_assigned])["submit_to_assigned"]["count"] == 0
    assert latency_ms([])["submit_to_done"] == {"count": 0, "p50": None, "p90": None, "p99": None}


def test_label_values_are_capped() -> None:
    assert capped({"a": 1, "b": 2}, 2) == {"a": 1, "b": 2}
    assert capped({"a": 1, "b": 5, "c": 3, "d": 1}, 3) == {"b": 5, "c": 3, OTHER: 2}
    pools = [PoolInfo(pool=f"p{i:03d}", members={"n": 1}, free_slots=1, queued=i % 7)
             for i in range(50)]  # fmt: skip
    snapshot = Snapshot(now_ms=1, counts={}, exclusions={f"unavailable:s{i}": i for i in range(30)},
                        instances={}, nodes=[], pools=pools, finished=[])
    families = {f.name: f for f in build_families(snapshot, {}, label_limit=10)}
    queue = {s.labels["pool"]: s.value for s in families["schedd_queue_length"].samples}
    assert len(queue) == 10 and sum(queue.values()) == sum(i % 7 for i in range(50))
    assert OTHER in queue and all(queue[k] >= 5 for k in queue if k != OTHER)  # the busiest
    members = {s.labels["pool"]: s.value for s in families["schedd_pool_members"].samples}
    assert set(members) == set(queue) and members[OTHER] == 41
    reasons = families["schedd_exclusions"].samples
    assert len(reasons) == 10 and sum(s.value for s in reasons) == sum(range(30))
    assert families["schedd_pools"].samples[0].value == 50  # the real count, uncapped


def test_node_states_always_listed() -> None:
    node = NodeInfo(node_id="n", state="draining", owner="i", epoch=1, capacity=4, used=3,
                    pools=[], load=0.0, last_heartbeat_ms=0, alive_until_ms=None,
                    capabilities={}, labels={}, reason="")  # fmt: skip
    snapshot = Snapshot(now_ms=1, counts={}, exclusions={}, instances={"a": 2, "b": 0},
                        nodes=[node], pools=[], finished=[])
    families = {f.name: f for f in build_families(snapshot, {"node": 0}, label_limit=10)}
    assert {s.labels["state"]: s.value for s in families["schedd_nodes"].samples} == {
        "online": 0, "draining": 1, "offline": 0}
    assert families["schedd_slots_used"].samples[0].value == 3
    assert families["schedd_instances"].samples[0].value == 1  # "b" has expired


# ---------------------------------------------------------------------------------------------
# docs/metrics.md
# ---------------------------------------------------------------------------------------------


def _docs() -> str:
    return DOCS.read_text(encoding="utf-8")


def test_every_metric_is_documented_with_its_type_and_labels() -> None:
    rows = {}
    for line in _docs().splitlines():
        match = re.match(r"^\| `(schedd_[a-z_]+)` \| (gauge|counter) \| ([^|]*) \|", line)
        if match:
            rows[match.group(1)] = (match.group(2), match.group(3).strip())
    for spec in METRICS:
        assert spec.name in rows, f"{spec.name} is not documented in docs/metrics.md"
        kind, labels = rows[spec.name]
        assert kind == spec.kind, spec.name
        documented = tuple(re.findall(r"`([a-z_]+)`", labels))
        assert documented == spec.labels, spec.name
    assert set(rows) == exported_sample_names(), "docs list a metric that is not exported"


def test_alert_rules_use_only_exported_metrics() -> None:
    blocks = re.findall(r"```yaml\n(.*?)```", _docs(), re.DOTALL)
    assert blocks, "docs/metrics.md has no yaml block of alert rules"
    expressions = [line for block in blocks for line in block.splitlines() if "expr:" in line]
    # multi-line expressions continue on indented lines after `expr: |`
    text = "\n".join(blocks)
    used = set(re.findall(r"\bschedd_[a-z_]+\b", text))
    assert len(expressions) >= 5 and len(used) >= 5
    unknown = used - exported_sample_names()
    assert not unknown, f"alert rules use metrics that are not exported: {sorted(unknown)}"


# ---------------------------------------------------------------------------------------------
# The dashboard, in a real headless Chromium
# ---------------------------------------------------------------------------------------------

DOM_SUMMARY = """(() => {
  const q = (s) => document.querySelector(s);
  if (!q("#status")) return null;  // still the blank page, or not parsed yet
  const texts = (s) => [...document.querySelectorAll(s)].map((e) => e.textContent);
  const points = (id, key) => {
    const line = q(`#${id} polyline[data-series="${key}"]`);
    return line ? line.getAttribute("points").trim().split(/\\s+/).length : 0;
  };
  return {
    status: q("#status").dataset.state,
    statusText: q("#status").textContent,
    instance: q("#this-instance").textContent,
    version: q("#this-version").textContent,
    clients: [...document.querySelectorAll("#clients tbody tr[data-client]")].map((tr) =>
      [...tr.children].map((td) => td.textContent)),
    nodeProtocols: [...document.querySelectorAll("#nodes tbody tr[data-node]")].map((tr) =>
      tr.children[7].textContent),
    nodes: [...document.querySelectorAll("#nodes tbody tr[data-node]")].map((tr) =>
      [tr.dataset.node, tr.dataset.state, tr.children[2].textContent, tr.children[4].textContent,
       tr.children[5].textContent]),
    pools: [...document.querySelectorAll("#pools tbody tr[data-pool]")].map((tr) =>
      [tr.dataset.pool, [tr.children[2].textContent, tr.children[3].textContent]]),
    instances: texts("#instances tbody tr[data-instance] td:first-child"),
    thisPill: texts("#instances .pill.this").length,
    exclusions: texts("#exclusions tbody tr[data-reason] td:first-child"),
    tiles: Object.fromEntries([...document.querySelectorAll(".tile .value")].map((e) =>
      [e.id, e.textContent])),
    throughput: points("chart-throughput", "finished"),
    submitted: points("chart-throughput", "submitted"),
    latency: points("chart-latency", "p99"),
    backlog: points("chart-backlog", "queued"),
    width: document.documentElement.scrollWidth,
  };
})()"""


async def echo(ctx: JobContext) -> Any:
    await trio.sleep(random.uniform(0.02, 0.15))
    return {"echo": ctx.payload}


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary on PATH (CI installs it)")
async def test_dashboard_shows_live_data_in_chromium(tmp_path: Path) -> None:
    env = {
        "SCHEDD_PLUGINS__TRANSPORT_TCP__LISTEN": "127.0.0.1:0",
        "SCHEDD_PLUGINS__UI__REFRESH": "0.5",
    }
    with trio.fail_after(90):
        async with ui_daemon(plugins='["transport_tcp", "ui"]', **env) as (d, url), \
                trio.open_nursery() as sim:  # fmt: skip
            tcp = d.app.listeners["transport_tcp"]
            layout = {"gpu-a1": ["zh>en", "en>zh"], "gpu-a2": ["zh>en"], "gpu-b1": ["en>ja"],
                      "gpu-b2": ["en>ja", "ja>en"]}
            for node_id, pools in layout.items():
                node = Node(tcp, echo, pools=pools, capacity=2, node_id=node_id,
                            heartbeat_interval=0.5)
                await sim.start(node.run)

            async def submit_forever() -> None:
                async with Client.connect(tcp) as client:
                    while True:
                        pool = random.choice(["zh>en", "zh>en", "en>ja", "en>zh", "ja>en"])
                        await client.submit({"text": "hi"}, pools=[pool])
                        await trio.sleep(0.02)

            sim.start_soon(submit_forever)
            async with Client.connect(tcp) as client:
                await client.submit(pools=["fr>de"], job_id="nobody-serves-this")

            async with open_page(tmp_path / "chromium") as page:
                await page.call("Page.navigate", url=f"{url}/?token={TOKEN}")
                summary: dict[str, Any] = {}
                with trio.fail_after(45):
                    while True:
                        summary = await page.evaluate(DOM_SUMMARY) or {}
                        if (summary.get("status") == "live" and len(summary["nodes"]) == 4
                                and summary["throughput"] >= 4 and summary["latency"] >= 4
                                and summary["instances"] and summary["clients"]):  # fmt: skip
                            break
                        await trio.sleep(0.25)
                screenshot = await page.screenshot(tmp_path / "dashboard.png")
                await page.screenshot(tmp_path / "dashboard-full.png", full_page=True)
                assert page.errors() == []  # no CSP violation, no script error

            sim.cancel_scope.cancel()

    assert summary["instance"] == d.app.instance
    assert summary["version"] == version("schedd")
    assert summary["nodeProtocols"] == [str(p.PROTOCOL_VERSION)] * len(layout)
    for instance, principal, peer, protocol, _name, connected in summary["clients"]:
        assert (instance, protocol) == (d.app.instance, str(p.PROTOCOL_VERSION))
        assert principal and peer.startswith("127.0.0.1:") and connected.endswith("ago")
    nodes = {row[0]: row for row in summary["nodes"]}
    assert set(nodes) == set(layout)
    for node_id, pools in layout.items():
        _, state, slots, node_pools, heartbeat = nodes[node_id]
        assert state == "online"
        assert re.fullmatch(r"[0-2]/2", slots)
        assert node_pools == ", ".join(pools)
        assert heartbeat.endswith("s ago")
    pool_rows = dict(summary["pools"])
    assert set(pool_rows) == {"zh>en", "en>zh", "en>ja", "ja>en", "fr>de"}
    assert "gpu-a1:" in pool_rows["zh>en"][1] and "gpu-a2:" in pool_rows["zh>en"][1]
    assert pool_rows["fr>de"] == ["1", "\u2013"]  # a queued job, no member (an en dash)
    assert d.app.instance in summary["instances"] and summary["thisPill"] == 1
    tiles = summary["tiles"]
    assert tiles["tile-nodes"] == "4 / 4"
    assert int(tiles["tile-queued"]) >= 1  # fr>de has no node; bursts may queue more
    assert float(tiles["tile-rate"]) > 0
    assert tiles["tile-p50"].endswith(("ms", " s"))
    assert summary["submitted"] >= 4 and summary["backlog"] >= 4
    assert summary["width"] <= 1366  # no horizontal scrolling on a laptop screen
    assert screenshot.stat().st_size > 20_000
    print(f"dashboard screenshot: {screenshot}")
