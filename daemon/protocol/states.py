"""The job states, as the protocol names them: the one definition (the core imports it).

Rules of this module: values only, no I/O, no other schedd import; the messages
(:mod:`schedd.protocol.messages`, :mod:`schedd.protocol.query`) validate states against it.
"""

from __future__ import annotations

from typing import Final, Literal, TypeAlias, get_args

__all__ = ["JOB_STATES", "TERMINAL_STATES", "JobState", "TerminalState"]

JobState: TypeAlias = Literal[
    "delayed", "queued", "assigned", "running", "done", "failed", "canceled", "timed_out"
]
TerminalState: TypeAlias = Literal["done", "failed", "canceled", "timed_out"]

#: Every job state, in the order of the job's life (the one definition: the core imports it).
JOB_STATES: Final[tuple[str, ...]] = get_args(JobState)
TERMINAL_STATES: Final[frozenset[str]] = frozenset(get_args(TerminalState))
