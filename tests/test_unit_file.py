"""contrib/schedd.service: what the daemon relies on is in it, and systemd accepts it."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from schedd.config import DrainSection, load_config
from schedd.errors import ConfigError

UNIT = Path(__file__).resolve().parents[1] / "contrib" / "schedd.service"

Sections = dict[str, list[tuple[str, str]]]


def parse_unit(text: str) -> tuple[Sections, list[str]]:
    """systemd's unit syntax, enough for this file: sections, repeated keys, ``\\`` continuation.

    Returns the sections (every assignment in order) and the commented-out assignments.
    """
    sections: Sections = {}
    commented: list[str] = []
    current: list[tuple[str, str]] | None = None
    pending = ""
    for raw in text.splitlines():
        line = pending + raw.strip()
        pending = ""
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if not line:
            continue
        if line[0] in "#;":
            body = line[1:].strip()
            if re.match(r"^[A-Z][A-Za-z]+=", body):
                commented.append(body)
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
            continue
        key, sep, value = line.partition("=")
        assert sep, f"not an assignment: {line!r}"
        assert current is not None, f"assignment outside a section: {line!r}"
        current.append((key.strip(), value.strip()))
    return sections, commented


@pytest.fixture(scope="module")
def unit() -> tuple[Sections, list[str]]:
    return parse_unit(UNIT.read_text(encoding="utf-8"))


def values(sections: Sections, section: str, key: str) -> list[str]:
    return [value for name, value in sections.get(section, []) if name == key]


def one(sections: Sections, section: str, key: str) -> str:
    found = values(sections, section, key)
    assert len(found) == 1, f"[{section}] {key}= is set {len(found)} times"
    return found[0]


def test_sections(unit: tuple[Sections, list[str]]) -> None:
    sections, _ = unit
    assert list(sections) == ["Unit", "Service", "Install"]
    assert one(sections, "Install", "WantedBy") == "multi-user.target"


def test_notify_reload_stop_watchdog(unit: tuple[Sections, list[str]]) -> None:
    sections, _ = unit
    service = "Service"
    assert one(sections, service, "Type") == "notify"
    assert one(sections, service, "NotifyAccess") == "main"
    assert one(sections, service, "ExecStart") == (
        "/usr/local/bin/schedd run -c /etc/schedd/sched.toml"
    )
    assert one(sections, service, "ExecReload") == "/bin/kill -HUP $MAINPID"
    assert one(sections, service, "KillSignal") == "SIGTERM"
    assert one(sections, service, "WatchdogSec") == "10"
    assert one(sections, service, "Restart") == "on-failure"
    # A configuration error (exit 2) does not heal by restarting.
    assert one(sections, service, "RestartPreventExitStatus") == "2"
    # systemd must not kill a drain that is still within [drain] timeout.
    stop = float(one(sections, service, "TimeoutStopSec"))
    assert stop >= DrainSection().timeout + 10


HARDENING = {
    "DynamicUser": "yes",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "NoNewPrivileges": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectControlGroups": "yes",
    "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
    "RestrictNamespaces": "yes",
    "LockPersonality": "yes",
    "MemoryDenyWriteExecute": "yes",
    "SystemCallArchitectures": "native",
    "CapabilityBoundingSet": "",
    "ConfigurationDirectory": "schedd",
}


@pytest.mark.parametrize(("key", "expected"), HARDENING.items())
def test_hardening(key: str, expected: str, unit: tuple[Sections, list[str]]) -> None:
    sections, _ = unit
    assert one(sections, "Service", key) == expected


def test_memory_deny_write_execute_is_safe_for_the_embedded_store() -> None:
    """MemoryDenyWriteExecute breaks JIT compilers; fakeredis must run PUC Lua, not LuaJIT."""
    from fakeredis.commands_mixins import scripting_mixin

    assert scripting_mixin.LUA_MODULE.__name__.startswith("lupa.lua5")


def test_examples_name_real_settings(unit: tuple[Sections, list[str]]) -> None:
    _, commented = unit
    assert any(line.startswith("LoadCredential=") for line in commented)
    env = dict(
        line[len("Environment=") :].split("=", 1)
        for line in commented
        if line.startswith("Environment=")
    )
    assert env, "the unit shows Environment= examples"
    assert all(name.startswith("SCHEDD_") for name in env)
    try:
        load_config(None, env)
    except ConfigError as exc:
        # The credential files exist only under systemd; anything else is a wrong example.
        problems = [line for line in exc.errors if "cannot read /run/credentials/" not in line]
        assert problems == []


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed")
    # verify insists that ExecStart= names an existing executable: use this Python instead.
    text = UNIT.read_text(encoding="utf-8").replace("/usr/local/bin/schedd", sys.executable)
    copy = tmp_path / "schedd.service"
    copy.write_text(text, encoding="utf-8")
    result = subprocess.run(
        [tool, "verify", str(copy)], capture_output=True, text=True, timeout=120, check=False
    )
    output = result.stdout + result.stderr
    if result.returncode != 0 and "schedd.service" not in output:
        pytest.skip(f"systemd-analyze cannot run here: {output.strip()[:300]}")
    # Other units on the host may draw warnings; only ours matters.
    ours = [line for line in output.splitlines() if "schedd.service" in line]
    assert ours == []
    assert result.returncode == 0, output
