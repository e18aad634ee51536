"""``[tenants] weights``: fair share weights per principal, and the hostile values refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from schedd.app import core_settings
from schedd.config import load_config
from tests.test_config import NO_ENV, errors_of, write


def test_weights_load_and_reach_the_core(tmp_path: Path) -> None:
    path = write(tmp_path, '[tenants.weights]\n"token:ab12cd34" = 3\nalice = 0.5\n')
    config = load_config(path, NO_ENV)
    assert dict(config.tenants.weights) == {"token:ab12cd34": 3.0, "alice": 0.5}
    assert core_settings(config).weights["token:ab12cd34"] == 3.0


def test_no_weights_by_default(tmp_path: Path) -> None:
    assert dict(load_config(write(tmp_path, ""), NO_ENV).tenants.weights) == {}


@pytest.mark.parametrize(
    ("value", "shown"),
    [("-1", "-1"), ("0", "0"), ("nan", "nan"), ("inf", "inf"), ("1e9", "1000000000"),
     ("0.0001", "0.0001")],
)
def test_hostile_weights_are_refused(tmp_path: Path, value: str, shown: str) -> None:
    errors = errors_of(write(tmp_path, f'[tenants.weights]\nalice = {value}\n'))
    assert len(errors) == 1
    assert "$.tenants.weights" in errors[0]
    assert f"'alice': a weight must be a number between 0.001 and 1000, got {shown}" in errors[0]


def test_a_bad_principal_name_is_refused(tmp_path: Path) -> None:
    errors = errors_of(write(tmp_path, '[tenants.weights]\n"token:XYZ" = 2\n'))
    assert "a token's principal is token: and 8 lower-case hex digits" in errors[0]


@pytest.mark.parametrize("value", ['"heavy"', "true"])
def test_a_weight_that_is_not_a_number_is_refused(tmp_path: Path, value: str) -> None:
    errors = errors_of(write(tmp_path, f"[tenants.weights]\nalice = {value}\n"))
    assert "$.tenants.weights['alice']" in errors[0]
