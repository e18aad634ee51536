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


def test_hold_is_off_by_default_and_reaches_the_core(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, ""), NO_ENV).tenants.hold == 0.0
    config = load_config(write(tmp_path, "[tenants]\nhold = 2.5\n"), NO_ENV)
    assert config.tenants.hold == 2.5
    assert core_settings(config).fair_hold == 2.5


@pytest.mark.parametrize(("value", "shown"),
                         [("-1", "-1"), ("3601", "3601"), ("1e12", "1000000000000"),
                          ("nan", "nan"), ("inf", "inf")])
def test_a_hostile_hold_is_refused(tmp_path: Path, value: str, shown: str) -> None:
    errors = errors_of(write(tmp_path, f"[tenants]\nhold = {value}\n"))
    assert len(errors) == 1
    assert "$.tenants.hold" in errors[0]
    assert f"between 0 and 3600, got {shown}" in errors[0]


def test_a_changed_hold_needs_a_restart(tmp_path: Path) -> None:
    from schedd.reload import reloaded

    before = load_config(write(tmp_path, "[tenants]\nhold = 2.0\n"), NO_ENV)
    after = load_config(write(tmp_path, "[tenants]\nhold = 5.0\n"), NO_ENV)
    applied, restart = reloaded(before, after, "i-1-abcd")
    assert "tenants" in restart and applied.tenants.hold == 2.0
    assert "tenants" not in reloaded(before, before, "i-1-abcd")[1]
