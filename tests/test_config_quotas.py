"""``[quotas]``: limits per principal with a default, pool rates; hostile values refused."""

from __future__ import annotations

from pathlib import Path

from schedd.app import core_settings
from schedd.config import config_docs, load_config
from schedd.core import Limits
from tests.test_config import NO_ENV, errors_of, write


def test_quotas_default_to_no_limit() -> None:
    settings = core_settings(load_config(None, NO_ENV))
    assert settings.quotas == Limits() and settings.principal_quotas == {}
    assert settings.pool_rates == {}
    assert settings.quotas.script_args() == ["", "", "", "", ""]


def test_a_principal_overrides_the_default_limit_by_limit(tmp_path: Path) -> None:
    path = write(tmp_path, '[quotas]\nmax_queued = 10\nsubmit_rate = 2.5\n'
                 '[quotas.principals."token:ab12cd34"]\nmax_queued = 100\nmax_in_flight = 4\n'
                 '[quotas.pool_rates]\ntts = 50\n')
    settings = core_settings(load_config(path, NO_ENV))
    own = settings.limits_of("token:ab12cd34")
    assert (own.max_queued, own.max_in_flight, own.submit_rate) == (100, 4, 2.5)
    assert settings.limits_of("other") == Limits(max_queued=10, submit_rate=2.5)
    assert settings.limits_of("other").script_args() == ["", "10", "", "2.5", "3"]
    assert settings.pool_rates == {"tts": 50.0}


def test_zero_and_negative_limits_are_refused(tmp_path: Path) -> None:
    path = write(tmp_path, '[quotas]\nmax_in_flight = 0\nmax_queued = -1\nsubmit_rate = 0\n'
                 'submit_burst = 0\nmax_payload_bytes = 1.5\n'
                 '[quotas.principals.bob]\nmax_queued = 0\n'
                 '[quotas.pool_rates]\ntts = 0\n"" = 5\n')
    lines = errors_of(path)
    text = "\n".join(lines)
    for expected in (
        "$.quotas.max_in_flight: expected an integer >= 1, got 0 (leave the setting out for no "
        "limit)",
        "$.quotas.max_queued: expected an integer >= 1, got -1",
        "$.quotas.submit_rate: expected a number > 0, got 0",
        "$.quotas.submit_burst: expected an integer >= 1, got 0",
        "$.quotas.max_payload_bytes: expected an integer, got 1.5",
        "$.quotas.principals['bob'].max_queued: expected an integer >= 1, got 0",
        "'tts': expected a rate > 0",
        "'': a pool key is 1 to 200 printable characters",
    ):
        assert expected in text, (expected, lines)


def test_enormous_and_nan_rates_are_refused(tmp_path: Path) -> None:
    path = write(tmp_path, '[quotas]\nsubmit_rate = nan\n[quotas.pool_rates]\ntts = inf\n')
    text = "\n".join(errors_of(path))
    assert "$.quotas.submit_rate: expected a number > 0, got nan" in text
    assert "'tts': expected a rate > 0 and <= 1e+06" in text


def test_bad_principal_names_are_refused(tmp_path: Path) -> None:
    path = write(tmp_path, '[quotas.principals."token:AB"]\nmax_queued = 1\n')
    assert any("a token's principal is token: and 8 lower-case hex" in line
               for line in errors_of(path))


def test_reference_config_shows_the_quotas_commented() -> None:
    docs = config_docs()
    assert "[quotas]" in docs and "# max_in_flight = (unset: no limit)" in docs
    assert "principals = {}" in docs and "pool_rates = {}" in docs
