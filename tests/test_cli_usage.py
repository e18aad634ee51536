"""``schedd usage``: usage and refusals per principal."""

from __future__ import annotations

import json

import pytest

from schedd import cli
from tests.test_cli import FakeClient, fake_client  # noqa: F401 (the fixture)

USAGE = {
    "usage": [
        {"principal": "token:1a2b3c4d", "in_flight": 3, "max_in_flight": 4, "queued": 7,
         "payload_bytes": 2048, "refused": {"E_QUOTA": 2, "E_RATE_LIMITED": 5},
         "last_submit_ms": 1},
        {"principal": "token:9f8e7d6c", "in_flight": 0, "max_in_flight": None, "queued": 0,
         "payload_bytes": 0, "refused": {}, "last_submit_ms": 0},
    ]
}


def test_usage_table_json_and_empty(
    fake_client: FakeClient, capsys: pytest.CaptureFixture[str]  # noqa: F811
) -> None:
    fake_client.answers["usage"] = USAGE
    assert cli.main(["usage"]) == 0
    header, first, second = capsys.readouterr().out.splitlines()
    assert header.split() == ["PRINCIPAL", "IN_FLIGHT", "QUEUED", "PAYLOAD_BYTES", "REFUSED"]
    assert first.split() == ["token:1a2b3c4d", "3/4", "7", "2048", "E_QUOTA=2,E_RATE_LIMITED=5"]
    assert second.split() == ["token:9f8e7d6c", "0/-", "0", "0", "-"]
    assert cli.main(["usage", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == USAGE
    fake_client.answers["usage"] = {"usage": []}
    assert cli.main(["usage"]) == 0
    assert capsys.readouterr().out == "no usage\n"
