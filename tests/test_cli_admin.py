"""``schedd drain``, ``undrain``, ``cancel`` and ``requeue`` against a real daemon process (on
both stores): they act with an admin token, are refused clearly without one, and are
idempotent."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import trio

from schedd.cli import main as cli_main
from schedd.sdk import Client, JobContext, Node
from tests.e2e_daemon import SCHEDD, DaemonProcess

ADMIN = "admin-token-0123456789abcdef"
CLIENT = "client-token"
NODE = "node-token"
AUTH = (f'[auth]\nnode_tokens = ["{NODE}"]\nclient_tokens = ["{CLIENT}"]\n'
        f'admin_tokens = ["{ADMIN}"]\n')


async def schedd(*argv: str) -> tuple[int, str, str]:
    result = await trio.run_process([SCHEDD, *argv], capture_stdout=True, capture_stderr=True,
                                    check=False)
    return result.returncode, result.stdout.decode(), result.stderr.decode()


async def failing(ctx: JobContext) -> Any:
    raise RuntimeError("boom")


async def test_operator_commands(store_url: str, tmp_path: Path) -> None:
    daemon = DaemonProcess(tmp_path, store_url, extra=AUTH)
    await daemon.start()
    url = ["--url", daemon.tcp]
    try:
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                node = Node(daemon.tcp, failing, pools=["p"], node_id="n1", token=NODE)
                await nursery.start(node.run)
                # refused without an admin token: a clear message, exit 2, nothing changed
                code, out, err = await schedd("drain", "n1", *url, "--token", CLIENT)
                assert code == 2 and out == ""
                assert "refused: drain is an operator action" in err
                assert "not an admin token" in err
                code, out, _ = await schedd("nodes", *url, "--token", CLIENT, "--json")
                assert json.loads(out)["nodes"][0]["state"] == "online"
                # drain, twice
                code, out, err = await schedd("drain", "n1", *url, "--token", ADMIN)
                assert code == 0, err
                assert out == "n1: drained (now draining, 0 job(s) still running)\n"
                code, out, _ = await schedd("drain", "n1", *url, "--token", ADMIN)
                assert out == "n1: unchanged (now draining, 0 job(s) still running)\n"
                code, out, _ = await schedd("undrain", "n1", *url, "--token", ADMIN, "--json")
                assert json.loads(out) == [{"node_id": "n1", "outcome": "undrained",
                                            "state": "online"}]
                # a job fails on the node; requeue it by id, then by filter
                async with Client.connect(daemon.tcp, token=CLIENT) as client:
                    job = await client.submit(pools=["p"], payload=1, job_id="j1",
                                              max_attempts=1)
                    assert (await job.result()).state == "failed"
                code, out, _ = await schedd("requeue", "j1", "nope", *url, "--token", ADMIN)
                assert code == 1
                assert out.splitlines() == [
                    "j1: requeued (now assigned, attempt 2)",
                    "nope: E_NO_JOB: job nope does not exist"]
                async with Client.connect(daemon.tcp, token=CLIENT) as client:
                    again = await client.follow("j1")  # the requeued attempt fails too
                    assert (await again.result()).attempts == 2
                code, out, _ = await schedd("requeue", "--state", "failed", "--since", "10m",
                                            "--limit", "5", *url, "--token", ADMIN)
                assert out == "j1: requeued (now assigned, attempt 3)\n"
                code, out, err = await schedd("requeue", "--limit", "1000", *url,
                                              "--token", ADMIN)
                assert code == 2 and "limit" in err and "100" in err
                code, out, _ = await schedd("cancel", "j1", *url, "--token", ADMIN)
                assert code == 0 and out.startswith("j1: ")
                code, out, err = await schedd("cancel", "nope", *url, "--token", ADMIN)
                assert code == 2 and "E_NO_JOB" in err
                code, out, err = await schedd("undrain", "ghost", *url, "--token", ADMIN)
                assert code == 2 and "E_NO_NODE" in err
                nursery.cancel_scope.cancel()
    finally:
        daemon.stop()
    log = daemon.output()
    assert "operator token:" in log and "drain node n1: drained" in log


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["requeue", "j1", "--state", "failed"], "give JOB ids or a filter"),
        (["requeue", "--state", "done"], "'done' is not requeued"),
        (["requeue", "--since", "ten"], "expected an age such as"),
        (["requeue", "--limit", "0"], "must be >= 1"),
        (["drain"], "the following arguments are required: NODE"),
    ],
)
def test_operator_argument_errors(argv: list[str], message: str,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(argv) == 2
    assert message in capsys.readouterr().err


def test_since_units() -> None:
    from schedd.cli.admin import _since

    assert [_since(t) for t in ("90", "90s", "10m", "2h", "1d", "0.5m")] == [
        90, 90, 600, 7200, 86400, 30]
