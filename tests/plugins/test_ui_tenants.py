"""The ui's view of quotas: per-principal families on /metrics (bounded labels), and
/api/v1/tenants behind the dashboard's Tenants table."""

from __future__ import annotations

from typing import Any

from schedd import protocol as p
from schedd.core import UsageInfo
from schedd.plugins.ui.metrics import OTHER, build_families
from schedd.plugins.ui.stats import Snapshot
from tests.plugins.test_ui import TOKEN, eventually, http, samples, ui_daemon


def usage(name: str, in_flight: int, queued: int = 0, **refused: int) -> UsageInfo:
    return UsageInfo(principal=name, in_flight=in_flight, queued=queued,
                     payload_bytes=10 * (in_flight + queued), max_in_flight=None,
                     refused=refused, last_submit_ms=1)


def snapshot(*rows: UsageInfo) -> Snapshot:
    return Snapshot(now_ms=1, counts={}, exclusions={}, instances={}, nodes=[], pools=[],
                    finished=[], usage=list(rows))


def values(families: list[Any], name: str) -> dict[tuple[str, ...], float]:
    (family,) = [f for f in families if f.name == name.removesuffix("_total")]
    return {tuple(s.labels.values()): s.value for s in family.samples if s.name == name}


def test_principals_are_capped_the_busiest_by_name() -> None:
    rows = [usage(f"p{i}", in_flight=i, E_QUOTA=1) for i in range(10)]
    families = build_families(snapshot(*rows), {}, label_limit=4, heartbeats={})
    jobs = values(families, "schedd_principal_jobs")
    named = {labels[0] for labels in jobs}
    assert named == {"p9", "p8", "p7", OTHER}
    assert jobs[(OTHER, "in_flight")] == sum(range(7))
    refusals = values(families, "schedd_principal_refusals_total")
    assert refusals[(OTHER, "E_QUOTA")] == 7 and refusals[("p9", "E_RATE_LIMITED")] == 0
    assert values(families, "schedd_principal_payload_bytes")[("p9",)] == 90


def test_few_principals_are_all_named() -> None:
    families = build_families(snapshot(usage("a", 1), usage("b", 0, queued=2)), {},
                              label_limit=2, heartbeats={})
    jobs = values(families, "schedd_principal_jobs")
    assert jobs[("b", "queued")] == 2 and jobs[("a", "in_flight")] == 1


async def test_tenants_api_and_metrics(store_url: str) -> None:
    async with ui_daemon(store_url, SCHEDD_QUOTAS__MAX_QUEUED="1") as (d, url):
        client = await d.connect("client")
        await client.send(p.Submit(pools=["p"], job_id="j1", payload={"n": 1}))
        await client.expect(p.Accepted)
        await client.send(p.Submit(pools=["p"], job_id="j2"))
        refused = await client.expect(p.Error)
        assert refused.code == "E_QUOTA"

        tenants = (await http(url, "/api/v1/tenants", token=TOKEN)).json()["tenants"]
        (mine,) = tenants
        assert (mine["queued"], mine["in_flight"], mine["refused"]) == (1, 0, {"E_QUOTA": 1})
        assert mine["payload_bytes"] == len(b'{"n":1}')

        async def scrape() -> Any:
            found = samples((await http(url, "/metrics", token=TOKEN)).body.decode())
            key = ("schedd_principal_refusals_total",
                   (("code", "E_QUOTA"), ("principal", mine["principal"])))
            return found if found.get(key) == 1 else None

        found = await eventually(scrape)
        assert found[("schedd_principal_jobs",
                      (("principal", mine["principal"]), ("state", "queued")))] == 1
