"""Child processes as Linux's /proc shows them, for tests that check what a run left behind."""

from __future__ import annotations

from pathlib import Path


def children(pid: int) -> list[int]:
    """Every child of the process, whichever of its threads started it (trio starts processes
    from a worker thread)."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            found += [int(child) for child in (task / "children").read_text().split()]
        except FileNotFoundError:  # a thread that ended meanwhile
            continue
    return found


def cmdline(pid: int) -> bytes:
    """The process's command line (NUL-separated), b"" once it has gone."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return b""


def running(pid: int) -> bool:
    """The process exists and is not a zombie (an orphan nobody reaped has stopped running)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"
