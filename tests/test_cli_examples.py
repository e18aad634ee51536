"""The ``schedd node`` and ``schedd submit`` examples of ``schedd --help`` and ``schedd <command>
--help`` work as shown against a daemon started from the shipped sched.toml (langset plugin):
the nodes register and every example job is accepted and done."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
from functools import partial
from pathlib import Path

import trio

from schedd import cli
from tests.e2e_daemon import SCHEDD, DaemonProcess


def help_examples() -> list[str]:
    """Every example line of the top-level help and of each command's help."""
    parser = cli.build_parser()
    parsers = [parser]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            parsers.extend(action.choices.values())
    return [line.strip() for p in parsers
            for line in (p.epilog or "").partition("examples:\n")[2].split("\n\n")[0].splitlines()]


def runnable(command: str, url: str) -> str:
    """``command`` for a shell: this venv's schedd, talking to ``url``."""
    command = command.removesuffix("&").strip()
    return re.sub(r"(^|\| )schedd ", rf"\g<1>{SCHEDD} ", command) + f" --url {url}"


def test_examples_are_found() -> None:
    examples = help_examples()
    assert any("--requirements" in line for line in examples)
    assert any(line.startswith("schedd node") for line in examples)


async def test_node_and_submit_help_examples_run_against_the_shipped_configuration(
    tmp_path: Path,
) -> None:
    local = [line for line in help_examples() if "--url" not in line]
    nodes = [line for line in local if line.startswith("schedd node ")]
    submits = [line for line in local if re.search(r"(^|\| )schedd submit ", line)]
    assert len(nodes) >= 2 and len(submits) >= 4
    daemon = DaemonProcess.shipped(tmp_path)
    running: list[subprocess.Popen[bytes]] = []
    try:
        await daemon.start()
        for line in nodes:
            running.append(subprocess.Popen("exec " + runnable(line, daemon.ws), shell=True,
                                            cwd=tmp_path, stdout=subprocess.DEVNULL,
                                            stderr=subprocess.DEVNULL))
        for line in submits:
            done = await trio.to_thread.run_sync(partial(
                subprocess.run, runnable(line, daemon.ws), shell=True, cwd=tmp_path,
                capture_output=True, timeout=60))
            assert done.returncode == 0, (line, done.stdout, done.stderr)
        assert not [p.returncode for p in running if p.poll() is not None]  # nodes still up
        # nothing written by the shell (an unquoted `>` in a pool name is a redirection)
        assert sorted(os.listdir(tmp_path)) == [daemon.dir.name]
    finally:
        for proc in running:
            proc.kill()
            proc.wait()
        daemon.stop()
