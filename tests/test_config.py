from __future__ import annotations

import os
import re
from pathlib import Path

import attrs
import pytest

from schedd.app import core_settings
from schedd.config import (
    Config,
    JobsSection,
    config_docs,
    converter,
    error_lines,
    load_config,
)
from schedd.errors import ConfigError

NO_ENV: dict[str, str] = {}


def write(tmp_path: Path, text: str, name: str = "sched.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def errors_of(path: Path | None, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config(path, env if env is not None else NO_ENV)
    return caught.value.errors


# --- defaults ---------------------------------------------------------------------------------


def test_defaults_without_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = load_config(None, NO_ENV)
    assert config.redis.url == "memory://"
    assert config.jobs == JobsSection()
    assert config.nodes.liveness_intervals == 3
    assert config.plugins == ("transport_ws", "transport_tcp")
    assert config.plugin_tables == {}
    assert config.limits.max_frame == 1048576
    assert config.env_overrides == {}


def test_empty_instance_is_generated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    instance = load_config(None, NO_ENV).schedd.instance
    assert re.fullmatch(rf"[A-Za-z0-9_.-]+-{os.getpid()}-[0-9a-f]{{4}}", instance)


def test_explicit_instance_is_kept(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, '[schedd]\ninstance = "east-1"\n'), NO_ENV)
    assert config.schedd.instance == "east-1"


def test_sched_toml_in_current_directory_is_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path, "[jobs]\nack_timeout = 2\n")
    monkeypatch.chdir(tmp_path)
    assert load_config(None, NO_ENV).jobs.ack_timeout == 2.0


def test_a_full_file_loads(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        [schedd]
        namespace = "prod.eu-1"
        log_level = "debug"
        log_format = "json"
        [redis]
        url = "redis://127.0.0.1:6379/0"
        [nodes]
        heartbeat_interval = 2
        [jobs]
        queue = false
        max_attempts = 5
        [plugins]
        enabled = ["transport_ws"]
        [plugins.transport_ws]
        listen = "0.0.0.0:9000"
        """,
    )
    config = load_config(path, NO_ENV)
    assert config.schedd.namespace == "prod.eu-1"
    assert config.nodes.heartbeat_interval == 2.0
    assert isinstance(config.nodes.heartbeat_interval, float)
    assert config.jobs.queue is False
    assert config.plugins == ("transport_ws",)
    assert config.plugin_tables == {"transport_ws": {"listen": "0.0.0.0:9000"}}


# --- errors -----------------------------------------------------------------------------------


def test_every_error_is_reported_at_once_with_its_path(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        [schedd]
        log_level = "verbose"
        namespace = "has{braces}"
        [redis]
        command_timeout = "5"
        [jobs]
        ack_timeout = -1
        max_attempts = 0
        queue = 1
        [auth]
        client_tokens = ["ok", 5]
        [limits]
        max_frame = 12
        """,
    )
    errors = errors_of(path)
    assert errors == [
        "$.schedd.namespace: expected 1 to 64 of A-Z a-z 0-9 _ . -, got 'has{braces}'",
        "$.schedd.log_level: expected one of 'debug', 'info', 'warning', 'error', got 'verbose'",
        "$.redis.command_timeout: expected a number, got '5'",
        "$.jobs.ack_timeout: expected a number > 0, got -1",
        "$.jobs.max_attempts: expected an integer >= 1, got 0",
        "$.jobs.queue: expected true or false, got 1",
        "$.auth.client_tokens[1]: expected a string, got 5",
        "$.limits.max_frame: expected an integer between 1024 and 4294967295, got 12",
    ]


def test_unknown_keys_are_rejected_with_a_suggestion(tmp_path: Path) -> None:
    path = write(tmp_path, "[jobs]\nack_timeuot = 1\n[reaper]\nfoo = 1\n[redsi]\nurl = 'x'\n")
    errors = errors_of(path)
    assert "$.jobs.ack_timeuot: unknown setting; did you mean 'ack_timeout'?" in errors
    assert "$.reaper.foo: unknown setting; expected one of: interval, batch" in errors
    assert "$.redsi: unknown setting; did you mean 'redis'?" in errors
    assert len(errors) == 3


def test_a_section_that_is_not_a_table(tmp_path: Path) -> None:
    assert errors_of(write(tmp_path, "jobs = 5\n")) == ["$.jobs: expected a table, got 5"]


def test_checks_across_settings(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "[nodes]\nheartbeat_interval = 2\nheartbeat_flush = 2\n[limits]\nidle_timeout = 1\n",
    )
    errors = errors_of(path)
    assert errors[0] == (
        "$.nodes.heartbeat_flush: must be less than nodes.heartbeat_interval (2), got 2"
    )
    assert errors[1].startswith("$.limits.idle_timeout: must be greater than")
    assert len(errors) == 2


@pytest.mark.parametrize("key", ["ack_timeout", "run_timeout", "queue_timeout", "max_run"])
def test_job_durations_are_bounded_as_a_submit_s_own(tmp_path: Path, key: str) -> None:
    # a default of 1e308 s overflowed when a submit left the field null (E_INTERNAL)
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, f"[jobs]\n{key} = 1e308\n"), env={})
    [error] = caught.value.errors
    assert error.startswith(f"$.jobs.{key}: expected a number between 0 and 2592000, got 1000")


def test_disconnect_grace_is_at_most_one_second(tmp_path: Path) -> None:
    errors = errors_of(write(tmp_path, "[nodes]\ndisconnect_grace = 1.5\n"))
    assert errors == ["$.nodes.disconnect_grace: expected a number between 0 and 1, got 1.5"]


@pytest.mark.parametrize("value, shown", [("0", "0"), ("11", "11"), ("1.5", "1.5")])
def test_liveness_refresh_is_a_beat_count_from_1_to_10(tmp_path: Path, value: str,
                                                        shown: str) -> None:
    errors = errors_of(write(tmp_path, f"[nodes]\nliveness_refresh = {value}\n"))
    expected = ("expected an integer, got 1.5" if value == "1.5"
                else f"expected an integer between 1 and 10, got {shown}")
    assert errors == [f"$.nodes.liveness_refresh: {expected}"]
    config = load_config(write(tmp_path, "[nodes]\nliveness_refresh = 1\n"))
    assert core_settings(config).liveness_refresh == 1


def test_toml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "[jobs]\nack_timeout = 5\nrun_timeout = = 3\n")
    (error,) = errors_of(path)
    assert error.startswith(f"{path}:3:")
    assert "Invalid value" in error


def test_missing_file_is_an_error(tmp_path: Path) -> None:
    (error,) = errors_of(tmp_path / "nope.toml")
    assert error.startswith(f"{tmp_path / 'nope.toml'}: cannot read")


# --- plugins table ----------------------------------------------------------------------------


def test_plugin_table_errors(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        [plugins]
        enabled = ["transport_ws", "transport_ws", "Bad-Name"]
        """,
    )
    (error,) = errors_of(path)
    assert error.startswith("$.plugins.enabled: invalid plugin name 'Bad-Name'")

    path = write(
        tmp_path,
        """
        plugins.transport_ws = 5
        [plugins.ui]
        port = 1
        """,
    )
    assert errors_of(path) == [
        "$.plugins.transport_ws: expected a table of settings for plugin 'transport_ws', got 5",
        "$.plugins.ui: settings for plugin 'ui', which is not enabled "
        "(add it to plugins.enabled; enabled: transport_ws, transport_tcp)",
    ]


def test_plugins_enabled_as_a_string_is_an_error(tmp_path: Path) -> None:
    errors = errors_of(write(tmp_path, '[plugins]\nenabled = "transport_ws"\n'))
    assert errors == ["$.plugins.enabled: expected an array, got 'transport_ws'"]


# --- environment ------------------------------------------------------------------------------


def test_env_overrides_nested_values(tmp_path: Path) -> None:
    path = write(tmp_path, '[redis]\nurl = "memory://"\n[jobs]\nack_timeout = 9\n')
    env = {
        "SCHEDD_REDIS__URL": "redis://10.0.0.5:6379/0",
        "SCHEDD_JOBS__ACK_TIMEOUT": "2",
        "SCHEDD_JOBS__QUEUE": "false",
        "SCHEDD_SCHEDD__NAMESPACE": "123",  # a string setting keeps the text
        "HOME": "/root",  # not ours
        "SCHEDD_CONFIG": "/etc/schedd/sched.toml",  # read by the CLI, not a setting
    }
    config = load_config(path, env)
    assert config.redis.url == "redis://10.0.0.5:6379/0"
    assert config.jobs.ack_timeout == 2.0
    assert config.jobs.queue is False
    assert config.schedd.namespace == "123"
    assert config.env_overrides["$.jobs.ack_timeout"] == "SCHEDD_JOBS__ACK_TIMEOUT"


def test_env_overrides_lists(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = load_config(
        None,
        {
            "SCHEDD_PLUGINS": "transport_ws,ui",
            "SCHEDD_AUTH__NODE_TOKENS": '["a", "b"]',
            "SCHEDD_AUTH__CLIENT_TOKENS": "c1, c2",
        },
    )
    assert config.plugins == ("transport_ws", "ui")
    assert config.auth.node_tokens == ("a", "b")
    assert config.auth.client_tokens == ("c1", "c2")
    assert load_config(None, {"SCHEDD_PLUGINS": ""}).plugins == ()


def test_env_overrides_plugin_tables(tmp_path: Path) -> None:
    path = write(tmp_path, '[plugins.transport_ws]\nlisten = "127.0.0.1:1"\nping = 5\n')
    env = {
        "SCHEDD_PLUGINS__TRANSPORT_WS__LISTEN": "0.0.0.0:9000",
        "SCHEDD_PLUGINS__TRANSPORT_WS__TLS__ENABLED": "true",
    }
    config = load_config(path, env)
    assert config.plugin_tables["transport_ws"] == {
        "listen": "0.0.0.0:9000",
        "ping": 5,
        "tls": {"enabled": True},
    }


def test_env_override_for_unknown_key_names_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    errors = errors_of(
        None,
        {
            "SCHEDD_JOBS__ACK_TIMEOUTT": "1",
            "SCHEDD_REDIS_URL": "redis://x",
            "SCHEDD_NOPE__X": "1",
        },
    )
    assert errors == [
        "SCHEDD_JOBS__ACK_TIMEOUTT: not a setting (no setting 'ack_timeoutt' in [jobs]; "
        "did you mean SCHEDD_JOBS__ACK_TIMEOUT?)",
        "SCHEDD_NOPE__X: not a setting (no section [nope]; did you mean SCHEDD_NODES__…?)",
        "SCHEDD_REDIS_URL: not a setting (no section [redis_url]; did you mean SCHEDD_REDIS__URL?)",
    ]


def test_bad_env_value_names_the_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    errors = errors_of(None, {"SCHEDD_JOBS__ACK_TIMEOUT": "soon", "SCHEDD_PLUGINS__UI__X": "1"})
    assert errors == [
        "$.jobs.ack_timeout: expected a number, got 'soon' (from SCHEDD_JOBS__ACK_TIMEOUT)",
        "$.plugins.ui: settings for plugin 'ui', which is not enabled (add it to "
        "plugins.enabled; enabled: transport_ws, transport_tcp) (from SCHEDD_PLUGINS__UI__X)",
    ]


def test_env_and_file_errors_are_reported_together(tmp_path: Path) -> None:
    path = write(tmp_path, "[jobs]\nmax_attempts = -3\n")
    errors = errors_of(path, {"SCHEDD_DRAIN__TIMEOUT": "-1", "SCHEDD_DRAIN__TIMOUT": "1"})
    assert len(errors) == 3


# --- token files ------------------------------------------------------------------------------


def test_token_files_are_read_relative_to_the_config(tmp_path: Path) -> None:
    (tmp_path / "node.tokens").write_text("# fleet A\nalpha\n\n  beta  \n# old: gamma\n")
    path = write(tmp_path, '[auth]\nnode_tokens = ["inline"]\nnode_token_file = "node.tokens"\n')
    config = load_config(path, NO_ENV)
    assert config.auth.node_tokens == ("inline", "alpha", "beta")
    assert config.auth.tokens_for("node") == ("inline", "alpha", "beta")
    assert config.auth.tokens_for("client") == ()


def test_missing_or_empty_token_file_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "empty.tokens").write_text("# nothing yet\n")
    path = write(
        tmp_path,
        '[auth]\nnode_token_file = "missing.tokens"\nclient_token_file = "empty.tokens"\n',
    )
    errors = errors_of(path)
    assert errors == [
        f"$.auth.node_token_file: cannot read {tmp_path / 'missing.tokens'}: "
        "No such file or directory",
        f"$.auth.client_token_file: {tmp_path / 'empty.tokens'} holds no tokens",
    ]


def test_node_id_patterns_map_node_principals_to_globs(tmp_path: Path) -> None:
    (tmp_path / "node.tokens").write_text("alpha\n")
    path = write(tmp_path, '[auth]\nnode_token_file = "node.tokens"\n'
                 '[auth.node_id_patterns]\n"token:8ed3f6ad" = ["gpu-*", "spare-?"]\n'
                 'anonymous = []\n')
    assert load_config(path, NO_ENV).auth.node_id_patterns == {
        "token:8ed3f6ad": ("gpu-*", "spare-?"), "anonymous": ()}
    env = {"SCHEDD_AUTH__NODE_ID_PATTERNS": '{ "ops" = ["n-*"] }'}
    assert load_config(None, env).auth.node_id_patterns == {"ops": ("n-*",)}
    assert load_config(None, NO_ENV).auth.node_id_patterns == {}


def test_node_id_pattern_errors(tmp_path: Path) -> None:
    path = write(tmp_path, '[auth]\nnode_tokens = ["alpha"]\n[auth.node_id_patterns]\n'
                 '"token:8ed3f6ad" = "gpu-*"\nops = [1]\n')
    assert errors_of(path) == [
        "$.auth.node_id_patterns['token:8ed3f6ad']: expected an array, got 'gpu-*'",
        "$.auth.node_id_patterns['ops'][0]: expected a string, got 1",
    ]
    path = write(tmp_path, '[auth]\nnode_tokens = ["alpha"]\n[auth.node_id_patterns]\n'
                 '"token:8ED3" = ["a"]\n"" = ["b"]\nops = [""]\n')
    assert errors_of(path) == [
        "$.auth.node_id_patterns: 'token:8ED3': a token's principal is token: and 8 lower-case "
        "hex digits, as welcome.principal and the log show it; '': a principal must be a "
        "non-empty printable name; 'ops' item 0: a pattern must be 1 to 200 printable "
        "characters, got ''"
    ]
    # a typo in a token's principal would leave the meant token unrestricted: an error
    path = write(tmp_path, '[auth]\nnode_tokens = ["alpha"]\n[auth.node_id_patterns]\n'
                 '"token:12345678" = ["a"]\n')
    env = {"SCHEDD_AUTH__NODE_ID_PATTERNS": '{ "token:12345678" = ["a"] }'}
    message = ("$.auth.node_id_patterns: token:12345678 is the principal of no node token "
               "(token:<first 8 hex digits of sha256(token)>)")
    assert errors_of(path) == [message]
    assert errors_of(None, env) == [message + " (from SCHEDD_AUTH__NODE_ID_PATTERNS)"]


# --- converter and docs -----------------------------------------------------------------------


def test_converter_structures_config_directly() -> None:
    config = converter.structure({"jobs": {"ack_timeout": 3}}, Config)
    assert config.jobs.ack_timeout == 3.0


def test_error_lines_use_the_given_root() -> None:
    @attrs.frozen
    class Settings:
        port: int = 1

    with pytest.raises(Exception) as caught:
        converter.structure({"port": "x", "extra": 1}, Settings)
    assert error_lines(caught.value, "$.plugins.demo") == [
        "$.plugins.demo.port: expected an integer, got 'x'",
        "$.plugins.demo.extra: unknown setting; expected one of: port",
    ]


def test_config_docs_is_a_valid_toml_of_the_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = config_docs()
    assert "SCHEDD_<SECTION>__<KEY>" in docs
    path = write(tmp_path, docs)
    monkeypatch.chdir(tmp_path)
    from_docs = load_config(path, NO_ENV)
    defaults = load_config(None, {"SCHEDD_SCHEDD__INSTANCE": from_docs.schedd.instance})
    assert attrs.evolve(defaults, env_overrides={}) == from_docs


def test_secrets_stay_out_of_repr() -> None:
    config = converter.structure(
        {"redis": {"url": "redis://user:hunter2@db:6379/0"}, "auth": {"node_tokens": ["s3cret"]}},
        Config,
    )
    text = repr(config)
    assert "hunter2" not in text and "s3cret" not in text
    assert "redis://user:***@db:6379/0" in text and "<1 tokens>" in text
    assert config.redis.url == "redis://user:hunter2@db:6379/0"


def test_connection_caps_and_the_handshake_throttle_are_validated(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "[limits]\nmax_connections = 0\nmax_connections_per_address = -1\n"
        "max_pending_handshakes = 1.5\nmax_pending_handshakes_per_address = 0\n"
        "max_failed_handshakes = 0\nfailed_handshake_window = 0\n"
        "failed_handshake_backoff = -2\n",
    )
    assert errors_of(path) == [
        "$.limits.max_connections: expected an integer >= 1, got 0",
        "$.limits.max_connections_per_address: expected an integer >= 1, got -1",
        "$.limits.max_pending_handshakes: expected an integer, got 1.5",
        "$.limits.max_pending_handshakes_per_address: expected an integer >= 1, got 0",
        "$.limits.max_failed_handshakes: expected an integer >= 1, got 0",
        "$.limits.failed_handshake_window: expected a number > 0, got 0",
        "$.limits.failed_handshake_backoff: expected a number > 0, got -2",
    ]
    limits = load_config(write(tmp_path, "")).limits
    # a 10,000-node fleet fits, and a simulated one from one address with its clients
    assert limits.max_connections >= 20000
    assert limits.max_connections_per_address > 10000


# --- admin tokens ------------------------------------------------------------------------------


def test_admin_tokens_and_their_file(tmp_path: Path) -> None:
    (tmp_path / "admin.tokens").write_text("# operators\nfile-admin-token-0123456789\n")
    path = write(tmp_path, '[auth]\nclient_tokens = ["client-token"]\n'
                 'admin_tokens = ["inline-admin-token-012345"]\n'
                 'admin_token_file = "admin.tokens"\n')
    config = load_config(path, NO_ENV)
    assert config.auth.admin_tokens == ("inline-admin-token-012345", "file-admin-token-0123456789")
    assert "admin-token" not in repr(config)


def test_admin_tokens_too_short_or_shared_are_refused(tmp_path: Path) -> None:
    path = write(tmp_path, '[auth]\nadmin_tokens = ["short"]\n')
    assert errors_of(path) == [
        "$.auth.admin_tokens: item 0: an admin token needs at least 16 characters, got 5"]
    path = write(tmp_path, '[auth]\nclient_tokens = ["shared-token-0123456789"]\n'
                 'admin_tokens = ["shared-token-0123456789"]\n')
    assert errors_of(path) == [
        "$.auth.admin_tokens: item 0: an admin token must not also be a node or client token"]
    (tmp_path / "node.tokens").write_text("node-token-0123456789\n")
    (tmp_path / "admin.tokens").write_text("tiny\nnode-token-0123456789\n")
    path = write(tmp_path, '[auth]\nnode_token_file = "node.tokens"\n'
                 'admin_token_file = "admin.tokens"\n')
    assert errors_of(path) == [
        "$.auth.admin_token_file: item 0: an admin token needs at least 16 characters, got 4",
        "$.auth.admin_token_file: item 1: an admin token must not also be a node or client "
        "token",
    ]
