"""A submit's ``stages``, checked and flattened into the stage records the store keeps.

Rules of this module:
  * a chain has at most :data:`MAX_STAGES` stages from its first to its last (a branch counts
    the stages before its fan-out); a fan-out has at most :data:`MAX_BRANCHES` branches; a
    pipeline has at most :data:`MAX_TOTAL_STAGES` stages in all. Each breach has its own error
    code, and nothing is stored for a refused submit;
  * every stage's pools are resolved here, at submit, by the same decision hook as a job's
    (``schedd_job_pools`` with the stage's own ``requirements``), so a stage that maps to no
    pool refuses the whole submit;
  * stage names are ``<k>`` on the first chain and ``<branch path>/<k>`` on a branch (``k``
    counts from 0 along the chain, through fan-outs); a branch path joins the branch names with
    ``.``. The stage's job is ``<pipeline id>//<stage name>``, so client job ids may not contain
    ``//``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

import schedd.protocol as p
from schedd.errors import ProtocolError

MAX_STAGES = 8
"""Most stages on one chain, from the first stage to the last of a branch."""
MAX_BRANCHES = 16
"""Most branches of one fan-out."""
MAX_TOTAL_STAGES = 64
"""Most stages of one pipeline, every branch counted."""
STAGE_SEP = "//"
"""Between a pipeline's id and a stage name in the stage's job id."""

E_TOO_MANY_STAGES = "E_TOO_MANY_STAGES"
E_TOO_MANY_BRANCHES = "E_TOO_MANY_BRANCHES"
E_BAD_STAGE = "E_BAD_STAGE"

_STAGE_KEYS = frozenset({"pools", "requirements", "services", "ack_timeout", "run_timeout",
                         "queue_timeout", "max_attempts", "with", "branches"})

PoolResolver = Callable[[str, dict[str, Any], list[str]], list[str]]
"""(stage job id, requirements, declared pools) -> candidate pool keys."""


def stage_job_id(pipeline_id: str, stage: str) -> str:
    return f"{pipeline_id}{STAGE_SEP}{stage}"


def _bad(where: str, why: str) -> ProtocolError:
    return ProtocolError(E_BAD_STAGE, f"{where}: {why}")


def _names(value: object, where: str, what: str) -> list[str]:
    if not isinstance(value, list) or len(value) > p.MAX_LIST or not all(
            isinstance(v, str) and v and len(v) <= p.MAX_ID_LEN and v.isprintable()
            for v in value):
        raise _bad(where, f"{what} must be an array of at most {p.MAX_LIST} names")
    return value


def _seconds_ms(stage: dict[str, Any], key: str, default: float, where: str) -> str:
    value = stage.get(key)
    if value is None:
        value = default
    if isinstance(value, bool) or not isinstance(value, int | float) or not (
            0 < value <= p.MAX_SECONDS):
        raise _bad(where, f"{key} must be a number of seconds in (0, {p.MAX_SECONDS}]")
    return str(max(1, round(value * 1000)))


class _Planner:
    def __init__(self, pipeline_id: str, resolve: PoolResolver, defaults: dict[str, float]) -> None:
        self.pipeline_id = pipeline_id
        self.resolve = resolve
        self.defaults = defaults
        self.records: dict[str, dict[str, Any]] = {}

    def chain(self, stages: object, branch: str, first: int, where: str) -> str:
        """Plan a chain starting at index ``first``; returns its first stage's name."""
        if not isinstance(stages, list) or not stages:
            raise _bad(where, "must be a non-empty array of stage objects")
        if first + len(stages) > MAX_STAGES:
            raise ProtocolError(E_TOO_MANY_STAGES, f"{where}: a chain has at most {MAX_STAGES} "
                                f"stages (this one would have {first + len(stages)})")
        names = [f"{branch}/{first + i}" if branch else str(first + i)
                 for i in range(len(stages))]
        for i, stage in enumerate(stages):
            self.stage(stage, names[i], branch, first + i, f"{where}[{i}]",
                       names[i + 1] if i + 1 < len(names) else None, last=i + 1 == len(stages))
        return names[0]

    def stage(self, stage: object, name: str, branch: str, index: int, where: str,
              following: str | None, *, last: bool) -> None:
        if not isinstance(stage, dict):
            raise _bad(where, "must be an object")
        unknown = sorted(set(stage) - _STAGE_KEYS)
        if unknown:
            raise _bad(where, f"unknown member(s) {', '.join(unknown)}")
        if len(self.records) >= MAX_TOTAL_STAGES:
            raise ProtocolError(E_TOO_MANY_STAGES, f"a pipeline has at most {MAX_TOTAL_STAGES} "
                                "stages in all")
        requirements = stage.get("requirements", {})
        if not isinstance(requirements, dict):
            raise _bad(where, "requirements must be an object")
        declared = _names(stage.get("pools", []), where, "pools")
        services = _names(stage.get("services", []), where, "services")
        with_ = _names(stage.get("with", []), where, "with")
        pools = self.resolve(stage_job_id(self.pipeline_id, name), dict(requirements),
                             list(declared))
        if not pools:
            raise _bad(where, "names no candidate pool: give pools, or requirements that an "
                       "enabled plugin maps to pools")
        attempts = stage.get("max_attempts", self.defaults["max_attempts"])
        if isinstance(attempts, bool) or not isinstance(attempts, int) or not (
                1 <= attempts <= p.MAX_INT):
            raise _bad(where, "max_attempts must be an integer of at least 1")
        d = self.defaults
        record: dict[str, Any] = {
            "pools": pools, "branch": branch, "index": index, "next": [],
            "ack_ms": _seconds_ms(stage, "ack_timeout", d["ack_timeout"], where),
            "run_ms": _seconds_ms(stage, "run_timeout", d["run_timeout"], where),
            "queue_ms": _seconds_ms(stage, "queue_timeout", d["queue_timeout"], where),
            "max_attempts": str(attempts),
        }
        if services:
            record["services"] = services
        if with_:
            record["with"] = with_
        self.records[name] = record
        branches = stage.get("branches")
        if branches is None:
            if following is not None:
                record["next"] = [following]
            return
        if not last:
            raise _bad(where, "a stage with branches must be the last of its chain")
        if not isinstance(branches, dict) or not branches:
            raise _bad(where, "branches must be a non-empty object of branch name -> stages")
        if len(branches) > MAX_BRANCHES:
            raise ProtocolError(E_TOO_MANY_BRANCHES, f"{where}: a fan-out has at most "
                                f"{MAX_BRANCHES} branches ({len(branches)} given)")
        for label, chain in branches.items():
            if not label or len(label) > p.MAX_ID_LEN or not label.isprintable() \
                    or "/" in label or "." in label:
                raise _bad(where, f"branch name {label!r} must be a printable name without "
                           "'/' or '.'")
            path = f"{branch}.{label}" if branch else label
            record["next"].append(self.chain(chain, path, index + 1,
                                             f"{where}.branches.{label}"))


def plan_stages(pipeline_id: str, stages: list[Any], resolve: PoolResolver,
                defaults: dict[str, float]) -> str:
    """The stage records of a pipeline as the JSON text the store keeps (stage name ->
    record). ``defaults``: ``ack_timeout``, ``run_timeout``, ``queue_timeout`` (seconds) and
    ``max_attempts`` for stages that give none. Raises :class:`ProtocolError` with
    ``E_TOO_MANY_STAGES``, ``E_TOO_MANY_BRANCHES`` or ``E_BAD_STAGE``."""
    planner = _Planner(pipeline_id, resolve, defaults)
    planner.chain(stages, "", 0, "stages")
    return orjson.dumps(planner.records).decode()
