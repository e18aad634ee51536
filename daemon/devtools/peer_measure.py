"""What the PEER scenario measures around a burst, as pure functions: Redis's command counts
and CPU from ``INFO``, processes' CPU from ``/proc``, and the figures per job and their ratios.

Rules of this module:

* A **snapshot** (:class:`Snapshot`) is taken before and after a burst: ``INFO commandstats``
  parsed (:func:`schedd.devtools.redis_process.command_stats`), ``INFO cpu`` parsed
  (:func:`redis_cpu_seconds`), and the CPU seconds of each process role (``daemon``,
  ``client``, ``worker``, ``redis``) counted over the role's process and its live descendants
  (:func:`tree_cpu_seconds`: a prefork worker's children are part of the worker).
* A command's figures in a difference are after minus before; a command absent before counts
  from zero. A difference never goes below zero: ``CONFIG RESETSTAT`` between the snapshots
  would make it so, and is a mistake of the caller (:class:`ValueError`).
* ``INFO commandstats`` counts the commands a script runs as commands of their own, and their
  time also in the script command's (``fcall``, ``evalsha``): ``redis_calls`` and
  ``redis_usec`` (over every command) count the inside of scripts once as commands and, for
  the time, once more in ``script_usec``. ``redis_cpu_us`` (``INFO cpu``) counts nothing twice.
* Per-job figures are sums over every round divided by the jobs of every round
  (:func:`per_job`), so a longer round weighs more; the ratios divide schedd's figure by a
  peer's, ``None`` where either is missing or the divisor is zero.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any, Final

import attrs

from schedd.devtools.redis_process import command_stats

__all__ = ["Snapshot", "commandstats_diff", "cpu_diff", "per_job", "ratio", "redis_cpu_seconds",
           "tree_cpu_seconds"]

_CLK_TCK: Final = os.sysconf("SC_CLK_TCK")
#: the commands kept by name in a result, the most called first
TOP_COMMANDS: Final = 8
#: the commands that run a script (their commands inside count as commands of their own)
SCRIPT_COMMANDS: Final = ("fcall", "fcall_ro", "evalsha", "evalsha_ro", "eval", "eval_ro")


def redis_cpu_seconds(info: bytes) -> float:
    """``used_cpu_user + used_cpu_sys`` of ``INFO cpu``, in seconds."""
    total = 0.0
    found = set()
    for line in info.decode().splitlines():
        name, _, value = line.partition(":")
        if name in ("used_cpu_user", "used_cpu_sys"):
            total += float(value)
            found.add(name)
    if len(found) != 2:
        raise ValueError(f"INFO cpu without used_cpu_user and used_cpu_sys: {info[:200]!r}")
    return total


def _stat_fields(pid: int) -> list[str]:
    with open(f"/proc/{pid}/stat") as fh:
        # the command name (field 2) may hold spaces and parentheses: split after the last ")"
        return fh.read().rsplit(")", 1)[1].split()


def _children(proc: str = "/proc") -> dict[int, list[int]]:
    """Every live process's children, by parent pid."""
    out: dict[int, list[int]] = {}
    for entry in os.listdir(proc):
        if not entry.isdigit():
            continue
        try:
            parent = int(_stat_fields(int(entry))[1])  # ppid (field 4)
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        out.setdefault(parent, []).append(int(entry))
    return out


def tree_cpu_seconds(pid: int, children: Mapping[int, list[int]] | None = None) -> float:
    """CPU seconds (utime + stime) of ``pid`` and its live descendants, from /proc."""
    tree = _children() if children is None else children
    total, stack, seen = 0.0, [pid], set()
    while stack:
        one = stack.pop()
        if one in seen:
            continue
        seen.add(one)
        try:
            fields = _stat_fields(one)
        except OSError:
            continue  # ended: a worker's child may exit at any time
        total += (int(fields[11]) + int(fields[12])) / _CLK_TCK  # utime, stime (fields 14, 15)
        stack.extend(tree.get(one, ()))
    return total


@attrs.frozen
class Snapshot:
    """Redis's and the processes' counters at one moment."""

    commands: dict[str, dict[str, float]]
    redis_cpu_s: float
    process_cpu_s: dict[str, float]


def take(commandstats: bytes, cpu: bytes, pids: Mapping[str, int]) -> Snapshot:
    """A snapshot from ``INFO commandstats`` and ``INFO cpu`` and the pids of the roles."""
    children = _children()
    return Snapshot(command_stats(commandstats), redis_cpu_seconds(cpu),
                    {role: tree_cpu_seconds(pid, children) for role, pid in pids.items()})


def commandstats_diff(before: Mapping[str, Mapping[str, float]],
                      after: Mapping[str, Mapping[str, float]]) -> dict[str, dict[str, int]]:
    """Calls and µs of each command between two parsed ``INFO commandstats``; commands with no
    call in between left out."""
    out: dict[str, dict[str, int]] = {}
    for name, stat in after.items():
        old = before.get(name, {})
        calls = int(stat.get("calls", 0) - old.get("calls", 0))
        usec = int(stat.get("usec", 0) - old.get("usec", 0))
        if calls < 0 or usec < 0:
            raise ValueError(f"{name}: counters went back ({old} -> {dict(stat)}): "
                             "CONFIG RESETSTAT between the snapshots?")
        if calls:
            out[name] = {"calls": calls, "usec": usec}
    return out


def cpu_diff(before: Snapshot, after: Snapshot) -> dict[str, float]:
    """CPU seconds of each role between two snapshots, ``total`` their sum, and ``redis_info``
    Redis's own count (``INFO cpu``: the main thread and its others)."""
    roles = {role: round(after.process_cpu_s[role] - before.process_cpu_s.get(role, 0.0), 4)
             for role in after.process_cpu_s}
    roles["total"] = round(sum(roles.values()), 4)
    roles["redis_info"] = round(after.redis_cpu_s - before.redis_cpu_s, 4)
    return roles


def merge_commands(rounds: Iterable[Mapping[str, Mapping[str, int]]]) -> dict[str, dict[str, int]]:
    """The command differences of several rounds added up."""
    out: dict[str, dict[str, int]] = {}
    for diff in rounds:
        for name, stat in diff.items():
            mine = out.setdefault(name, {"calls": 0, "usec": 0})
            mine["calls"] += stat["calls"]
            mine["usec"] += stat["usec"]
    return out


def per_job(bursts: list[dict[str, Any]]) -> dict[str, Any]:
    """The figures per job over every round's burst (each: ``jobs``, ``cpu_s`` from
    :func:`cpu_diff`, ``commands`` from :func:`commandstats_diff`)."""
    jobs = sum(b["jobs"] for b in bursts)
    if not jobs:
        return {"jobs": 0}
    cpu: dict[str, float] = {}
    for burst in bursts:
        for role, seconds in burst["cpu_s"].items():
            cpu[role] = cpu.get(role, 0.0) + seconds
    commands = merge_commands(b["commands"] for b in bursts)
    calls = sum(stat["calls"] for stat in commands.values())
    usec = sum(stat["usec"] for stat in commands.values())
    top = sorted(commands.items(), key=lambda item: (-item[1]["calls"], item[0]))[:TOP_COMMANDS]
    return {
        "jobs": jobs,
        "cpu_us": {role: round(seconds * 1e6 / jobs, 1) for role, seconds in cpu.items()},
        "redis_calls": round(calls / jobs, 2),
        "redis_usec": round(usec / jobs, 2),
        "script_calls": round(sum(commands.get(name, {}).get("calls", 0)
                                  for name in SCRIPT_COMMANDS) / jobs, 3),
        # a script's usec holds its commands' time, which they also count as their own: the
        # sum above counts that time twice; INFO cpu (redis_cpu_us) does not
        "script_usec": round(sum(commands.get(name, {}).get("usec", 0)
                                 for name in SCRIPT_COMMANDS) / jobs, 2),
        "redis_cpu_us": round(cpu.get("redis_info", 0.0) * 1e6 / jobs, 1),
        "top_commands": {name: {"calls": round(stat["calls"] / jobs, 3),
                                "usec": round(stat["usec"] / jobs, 3)} for name, stat in top},
    }


def ratio(mine: float | None, theirs: float | None) -> float | None:
    """``mine / theirs`` to 2 decimals (3 significant below 0.1); None when either is missing
    or ``theirs`` is 0."""
    if mine is None or not theirs:
        return None
    value = mine / theirs
    return round(value, 2) if value >= 0.1 else float(f"{value:.3g}")
