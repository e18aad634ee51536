"""Logging set-up: one handler on the root logger, writing text or JSON lines to stderr.

Rules this module owns:

* **stderr only.** Under systemd, journald captures stderr; elsewhere the terminal or the
  supervisor does. schedd never opens log files.
* **One handler, replaced on every call.** :func:`setup_logging` removes the handler it installed
  before (and only that one: handlers that others installed, such as pytest's, stay), so calling it
  again on ``SIGHUP`` switches format or level without duplicating lines. :func:`set_level` changes
  only the level.
* **Two formats**, both with RFC 3339 UTC timestamps to the millisecond:

  - ``text``: ``2026-11-28T00:10:00.123Z INFO schedd.core.engine: node n1 registered`` followed by
    any ``extra=`` fields as `` key=value`` and the traceback on the next lines;
  - ``json``: one object per line with ``ts``, ``level``, ``logger``, ``msg`` (the formatted
    message), every ``extra=`` field, and ``exc`` (the traceback text) when there is one. An extra
    field whose name collides with one of these keys is written with a trailing ``_``.

Modules log lazily through their own logger (``log = logging.getLogger(__name__)``;
``log.info("node %s registered", node_id, extra={"node_id": node_id})``).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, Final, TextIO

__all__ = ["FORMATS", "LEVELS", "JsonFormatter", "TextFormatter", "set_level", "setup_logging"]

LEVELS: Final = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}
FORMATS: Final = ("text", "json")

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_RECORD_ATTRIBUTES: Final = frozenset(
    vars(logging.LogRecord("", logging.INFO, "", 0, "", (), None))
) | {"message", "asctime", "taskName"}
_JSON_KEYS: Final = frozenset({"ts", "level", "logger", "msg", "exc", "stack"})


def _timestamp(record: logging.LogRecord) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
    return f"{seconds}.{int(record.msecs):03d}Z"


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {
        key: value
        for key, value in vars(record).items()
        if key not in _RECORD_ATTRIBUTES and not key.startswith("_")
    }


class TextFormatter(logging.Formatter):
    """``<ts> <LEVEL> <logger>: <message>[ key=value ...]`` and the traceback below it."""

    def format(self, record: logging.LogRecord) -> str:
        line = f"{_timestamp(record)} {record.levelname} {record.name}: {record.getMessage()}"
        extras = _extras(record)
        if extras:
            line += "".join(f" {key}={_text_value(value)}" for key, value in extras.items())
        if record.exc_info and not record.exc_text:
            # Cached on the record, like the base class does, for other handlers to reuse.
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line += "\n" + record.exc_text
        if record.stack_info:
            line += "\n" + self.formatStack(record.stack_info)
        return line


def _text_value(value: object) -> str:
    text = value if isinstance(value, str) else repr(value)
    # Quote values that would otherwise be ambiguous in `key=value` form.
    if not text or any(char.isspace() or char in '"=' for char in text):
        return json.dumps(text, ensure_ascii=False)
    return text


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in _extras(record).items():
            entry[key + "_" if key in _JSON_KEYS else key] = value
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exc"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        # Values that JSON cannot hold (a Path, an exception) are written as their str().
        return json.dumps(entry, ensure_ascii=False, default=str)


class _StderrHandler(logging.StreamHandler[TextIO]):
    """Writes to whatever ``sys.stderr`` is at the time of each record (test capture swaps it)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, _value: TextIO) -> None:
        pass


def _level_number(level: str) -> int:
    try:
        return LEVELS[level.lower()]
    except KeyError:
        choices = ", ".join(LEVELS)
        raise ValueError(f"unknown log level {level!r} (expected one of {choices})") from None


def setup_logging(level: str = "info", fmt: str = "text") -> None:
    """Send every log record of ``level`` and above to stderr as ``fmt`` (``text`` or ``json``).

    Safe to call again: the handler installed by the previous call is replaced.

    :raises ValueError: for an unknown level or format.
    """
    number = _level_number(level)
    if fmt not in FORMATS:
        raise ValueError(f"unknown log format {fmt!r} (expected one of {', '.join(FORMATS)})")
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, _StderrHandler):
            root.removeHandler(handler)
            handler.close()
    handler = _StderrHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root.addHandler(handler)
    root.setLevel(number)
    logging.captureWarnings(True)


def set_level(level: str) -> None:
    """Change the level of the root logger (``debug``, ``info``, ``warning``, ``error``).

    :raises ValueError: for an unknown level.
    """
    logging.getLogger().setLevel(_level_number(level))
