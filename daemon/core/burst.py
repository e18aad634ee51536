"""A node's burst of job messages as one ``job_result_many`` call: its items and outcomes.

Rules of this module:
  * An item is one ``accept``, one ``result``, or an ``accept`` with its ``result`` (the same
    attempt): exactly what ``job_accept`` or ``job_result`` (with or without its accept) does
    for it alone, in the order of the burst.
  * Outcomes come back one per message, in order; a refused message's outcome is the exception
    its own call would have raised (``errors.error_from_reply`` of the script's error text), so
    the session answers it as it answers a refused single call.
  * Results with attachments are not items: they take the single ``job_result`` call.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import attrs
import orjson

from schedd.errors import SchedError, error_from_reply
from schedd.store.base import Arg

#: Most messages one ``job_result_many`` call takes (a burst's run is cut there)
MAX_BURST = 256


@attrs.frozen
class BurstItem:
    """One item of a node's burst: an ``accept`` (``accept`` and no ``result``), a ``result``
    (``result``), or both (an ``accept`` followed by the same attempt's ``result``)."""

    job_id: str
    attempt: int
    accept: bool = False
    result: bool = True
    ok: bool = True
    output_json: str = "null"
    error: dict[str, Any] | None = None
    retryable: bool = False

    @property
    def messages(self) -> int:
        """How many outcomes the item has: one per message it stands for."""
        return int(self.accept) + int(self.result)


@attrs.frozen
class Recorded:
    """A message the store took: the job's state after it, and whether it was a repeat."""

    state: str
    duplicate: bool


Outcome = Recorded | SchedError


def burst_args(node_id: str, items: Sequence[BurstItem], draw: Callable[[], float]) -> list[Arg]:
    """``job_result_many``'s ARGV after the caller: the node, then eight per item."""
    args: list[Arg] = [node_id]
    for item in items:
        if not item.result:
            args += [item.job_id, item.attempt, "a", "", "", "", "", ""]
            continue
        retry = item.retryable and not item.ok
        args += [item.job_id, item.attempt, "ar" if item.accept else "r", "1" if item.ok else "0",
                 item.output_json,
                 orjson.dumps(item.error) if item.error is not None else "null",
                 "1" if retry else "", repr(draw()) if retry else ""]
    return args


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def outcomes(reply: Sequence[Sequence[bytes | str]]) -> list[Outcome]:
    """The script's outcomes, one per message: :class:`Recorded` or the refusal's exception."""
    decoded: list[Outcome] = []
    for first, second in reply:
        if _text(first) == "!":
            decoded.append(error_from_reply(_text(second)))
        else:
            decoded.append(Recorded(_text(first), _text(second) == "duplicate"))
    return decoded
