from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from schedd.logs import set_level, setup_logging

TS = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"


@pytest.fixture(autouse=True)
def restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(False)


def our_handlers() -> list[logging.Handler]:
    return [h for h in logging.getLogger().handlers if type(h).__name__ == "_StderrHandler"]


def test_text_line(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("info", "text")
    logging.getLogger("schedd.core.engine").info("node %s registered", "n1")
    err = capsys.readouterr().err
    assert re.fullmatch(rf"{TS} INFO schedd.core.engine: node n1 registered\n", err), err


def test_text_extras_and_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("debug", "text")
    log = logging.getLogger("schedd.test")
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        log.exception("failed", extra={"node_id": "n1", "reason": "two words"})
    err = capsys.readouterr().err
    first, *rest = err.splitlines()
    assert re.fullmatch(rf'{TS} ERROR schedd.test: failed node_id=n1 reason="two words"', first)
    assert rest[0] == "Traceback (most recent call last):"
    assert rest[-1] == "RuntimeError: boom"


def test_json_lines(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("info", "json")
    log = logging.getLogger("schedd.core.engine")
    log.info("node %s registered", "n1", extra={"node_id": "n1", "epoch": 3, "path": Path("/x")})
    log.warning("multi\nline")
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2
    first = json.loads(lines[0])
    assert re.fullmatch(TS, first.pop("ts"))
    assert first == {
        "level": "INFO",
        "logger": "schedd.core.engine",
        "msg": "node n1 registered",
        "node_id": "n1",
        "epoch": 3,
        "path": "/x",
    }
    assert json.loads(lines[1])["msg"] == "multi\nline"


def test_json_exception_and_colliding_extra(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("info", "json")
    try:
        1 / 0  # noqa: B018
    except ZeroDivisionError:
        logging.getLogger("x").error("oops", exc_info=True, extra={"level": "mine"})
    entry = json.loads(capsys.readouterr().err)
    assert entry["level"] == "ERROR"
    assert entry["level_"] == "mine"
    assert entry["exc"].startswith("Traceback")
    assert entry["exc"].endswith("ZeroDivisionError: division by zero")


def test_json_without_exception_has_no_exc(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("info", "json")
    logging.getLogger("x").info("plain")
    assert "exc" not in json.loads(capsys.readouterr().err)


def test_level_filters(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("warning", "text")
    log = logging.getLogger("schedd.x")
    log.info("hidden")
    log.warning("shown")
    err = capsys.readouterr().err
    assert "hidden" not in err
    assert "shown" in err


def test_idempotent_and_switches_format(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("info", "text")
    setup_logging("info", "text")
    setup_logging("debug", "json")
    assert len(our_handlers()) == 1
    logging.getLogger("schedd.x").debug("once")
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1
    assert json.loads(lines[0])["msg"] == "once"


def test_other_handlers_are_kept() -> None:
    root = logging.getLogger()
    mine = logging.NullHandler()
    root.addHandler(mine)
    setup_logging("info", "text")
    setup_logging("info", "json")
    assert mine in root.handlers
    root.removeHandler(mine)


def test_set_level(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("info", "text")
    log = logging.getLogger("schedd.x")
    log.debug("before")
    set_level("DEBUG")
    log.debug("after")
    set_level("error")
    log.warning("muted")
    err = capsys.readouterr().err
    assert "before" not in err
    assert "after" in err
    assert "muted" not in err


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="unknown log level 'loud'"):
        setup_logging("loud", "text")
    with pytest.raises(ValueError, match="unknown log format 'xml'"):
        setup_logging("info", "xml")
    with pytest.raises(ValueError, match="unknown log level"):
        set_level("verbose")


def test_warnings_are_logged(capsys: pytest.CaptureFixture[str]) -> None:
    import warnings

    setup_logging("info", "json")
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("careful", UserWarning, stacklevel=1)
    entry = json.loads(capsys.readouterr().err)
    assert entry["logger"] == "py.warnings"
    assert "careful" in entry["msg"]
