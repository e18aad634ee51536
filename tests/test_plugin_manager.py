from __future__ import annotations

import argparse
import hmac
import logging
import textwrap
import uuid
from pathlib import Path
from typing import Any

import attrs
import pytest

from schedd.config import AuthSection, Config, load_config
from schedd.core_hooks import token_principal
from schedd.errors import ConfigError, ProtocolError
from schedd.hookspecs import hookimpl
from schedd.plugin_manager import PluginManager
from schedd.testing import FakeDaemon


@attrs.frozen
class DemoSettings:
    port: int = attrs.field(default=8000, validator=attrs.validators.ge(1))
    host: str = "127.0.0.1"
    tags: tuple[str, ...] = ()


class DemoPlugin:
    """Declares settings, maps pools, listens to events, runs one service."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []

    @hookimpl
    def schedd_plugin_config(self) -> type:
        return DemoSettings

    @hookimpl
    def schedd_node_pools(self, capabilities: dict[str, Any]) -> list[str] | None:
        langs = capabilities.get("langs")
        return [f"lang:{lang}" for lang in langs] if langs else None

    @hookimpl
    def schedd_node_offline(self, node_id: str, reason: str) -> None:
        self.events.append(("offline", (node_id, reason)))

    @hookimpl
    def schedd_services(self, app: Any) -> list[Any]:
        return [serve_demo]


async def serve_demo(app: Any, *, task_status: Any = None) -> None:  # pragma: no cover
    pass


class PoolsPlugin:
    """No settings; answers every node with a fixed pool list."""

    def __init__(self, pools: list[str] | None) -> None:
        self.pools = pools

    @hookimpl
    def schedd_node_pools(self) -> list[str] | None:
        return self.pools

    @hookimpl
    def schedd_job_pools(self, requirements: dict[str, Any]) -> list[str] | None:
        return [requirements["pool"]] if "pool" in requirements else None


def config(*plugins: str, **tables: dict[str, Any]) -> Config:
    return Config(plugins=plugins, plugin_tables=dict(tables))


def config_errors(cfg: Config, extra: dict[str, object] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        PluginManager.load(cfg, extra)
    return caught.value.errors


# --- loading through entry points ------------------------------------------------------------


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A directory on sys.path where fake distributions can be installed."""
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def install(site: Path, entry_points: dict[str, str], modules: dict[str, str]) -> None:
    """Install a distribution the way pip would: modules plus a dist-info with entry points."""
    dist = f"fake_{uuid.uuid4().hex[:8]}"
    info = site / f"{dist}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    lines = ["[schedd.plugins]", *(f"{name} = {value}" for name, value in entry_points.items())]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
    for module, source in modules.items():
        (site / f"{module}.py").write_text(textwrap.dedent(source))


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


PLUGIN_SOURCE = """
    import attrs
    from schedd.hookspecs import hookimpl

    @attrs.frozen
    class Settings:
        greeting: str = "hello"

    @hookimpl
    def schedd_plugin_config():
        return Settings

    @hookimpl
    def schedd_job_pools(requirements):
        return ["from-entry-point"] if requirements.get("ep") else None
"""


def test_plugin_installed_as_a_package_is_loaded(site: Path) -> None:
    module = unique("acme_plugin")
    install(site, {"acme": module}, {module: PLUGIN_SOURCE})
    manager = PluginManager.load(config("acme", acme={"greeting": "hi"}))
    assert manager.names == ("acme",)
    assert attrs.asdict(manager.plugin_config("acme")) == {"greeting": "hi"}  # type: ignore[arg-type]
    assert manager.job_pools("j1", {"ep": True}, ["x"]) == ["from-entry-point"]
    assert manager.job_pools("j1", {}, ["x"]) == ["x"]


def test_plugins_not_enabled_are_not_imported(site: Path) -> None:
    module = unique("explodes")
    install(site, {"explodes": module}, {module: "raise RuntimeError('imported!')\n"})
    assert PluginManager.load(config()).names == ()


def test_entry_point_naming_a_class_is_instantiated(site: Path) -> None:
    module = unique("class_plugin")
    source = """
        from schedd.hookspecs import hookimpl

        class Plugin:
            @hookimpl
            def schedd_node_pools(self):
                return ["from-class"]
    """
    install(site, {"classy": f"{module}:Plugin"}, {module: source})
    manager = PluginManager.load(config("classy"))
    assert manager.node_pools("n1", {}, []) == ["from-class"]


def test_unknown_plugin_lists_the_known_ones(site: Path) -> None:
    module = unique("acme_plugin")
    install(site, {"acme": module}, {module: PLUGIN_SOURCE})
    errors = config_errors(config("acmee", "nothing_like_it"), {"demo": DemoPlugin()})
    assert errors[0].startswith("$.plugins.enabled: unknown plugin 'acmee'; did you mean 'acme'?")
    assert "acme" in errors[1] and "demo" in errors[1]
    assert len(errors) == 2


def test_broken_plugin_names_the_plugin_and_the_exception(site: Path) -> None:
    broken, missing = unique("broken"), unique("missing")
    install(
        site,
        {"broken": broken, "missing": missing},
        {broken: "import json\nraise RuntimeError('no GPU here')\n"},
    )
    errors = config_errors(config("broken", "missing"))
    assert errors == [
        f"$.plugins.enabled: plugin 'broken' ({broken}) failed to load: RuntimeError: no GPU here",
        f"$.plugins.enabled: plugin 'missing' ({missing}) failed to load: "
        f"ModuleNotFoundError: No module named '{missing}'",
    ]


def test_two_packages_claiming_one_name(site: Path) -> None:
    first, second = unique("first"), unique("second")
    install(site, {"dup": first}, {first: ""})
    install(site, {"dup": second}, {second: ""})
    (error,) = config_errors(config("dup"))
    assert "provided by more than one package" in error


# --- registering objects directly ------------------------------------------------------------


def test_plugins_given_directly() -> None:
    demo = DemoPlugin()
    manager = PluginManager.load(config("demo", demo={"port": 9000, "tags": ["a"]}), {"demo": demo})
    assert manager.names == ("demo",)
    assert manager.plugin_config("demo", DemoSettings) == DemoSettings(port=9000, tags=("a",))
    assert manager.services(app=FakeDaemon()) == [serve_demo]
    manager.node_offline("n1", "disconnected")
    assert demo.events == [("offline", ("n1", "disconnected"))]


def test_settings_default_when_the_table_is_absent() -> None:
    manager = PluginManager.load(config("demo"), {"demo": DemoPlugin()})
    assert manager.plugin_config("demo") == DemoSettings()


def test_plugin_config_of_unknown_plugin() -> None:
    manager = PluginManager.load(config("pools"), {"pools": PoolsPlugin(None)})
    assert manager.plugin_config("pools") is None
    with pytest.raises(KeyError):
        manager.plugin_config("demo")
    with pytest.raises(TypeError):
        manager.plugin_config("pools", DemoSettings)


def test_managers_share_nothing() -> None:
    first = PluginManager.load(config("pools"), {"pools": PoolsPlugin(["a"])})
    second = PluginManager.load(config())
    assert first.node_pools("n", {}, ["declared"]) == ["a"]
    assert second.node_pools("n", {}, ["declared"]) == ["declared"]


# --- settings tables -------------------------------------------------------------------------


def test_bad_plugin_tables_list_every_error_with_its_path() -> None:
    cfg = config(
        "demo",
        "pools",
        demo={"port": 0, "host": 5, "tags": "x", "colour": "red"},
        pools={"anything": 1},
    )
    errors = config_errors(cfg, {"demo": DemoPlugin(), "pools": PoolsPlugin(None)})
    assert errors == [
        "$.plugins.demo.port: 'port' must be >= 1: 0",
        "$.plugins.demo.host: expected a string, got 5",
        "$.plugins.demo.tags: expected an array, got 'x'",
        "$.plugins.demo.colour: unknown setting; expected one of: port, host, tags",
        "$.plugins.pools: plugin 'pools' takes no settings, got: anything",
    ]


def test_plugin_table_errors_name_the_environment_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = load_config(None, {"SCHEDD_PLUGINS": "demo", "SCHEDD_PLUGINS__DEMO__PORT": "eighty"})
    (error,) = config_errors(cfg, {"demo": DemoPlugin()})
    assert error == (
        "$.plugins.demo.port: expected an integer, got 'eighty' (from SCHEDD_PLUGINS__DEMO__PORT)"
    )


def test_table_for_a_plugin_that_is_not_enabled() -> None:
    (error,) = config_errors(config("demo", ui={"x": 1}), {"demo": DemoPlugin()})
    assert error.startswith("$.plugins.ui: settings for plugin 'ui', which is not enabled")


# --- hook validation -------------------------------------------------------------------------


def test_unknown_hooks_and_wrong_parameters_are_rejected() -> None:
    class Typo:
        @hookimpl
        def schedd_node_pool(self, node_id: str) -> None:
            pass

    class WrongParameter:
        @hookimpl
        def schedd_node_offline(self, node_id: str, why: str) -> None:
            pass

    errors = config_errors(config("typo", "wrong"), {"typo": Typo(), "wrong": WrongParameter()})
    assert len(errors) == 2
    assert errors[0].startswith("$.plugins.enabled: plugin 'wrong' cannot be registered:")
    assert "why" in errors[0]
    assert errors[1] == (
        "$.plugins.enabled: plugin 'typo' implements unknown hook 'schedd_node_pool'; "
        "did you mean 'schedd_node_pools'?"
    )


# --- decision hooks --------------------------------------------------------------------------


def test_first_result_wins_and_none_falls_through_to_the_core() -> None:
    manager = PluginManager.load(
        config("demo", "pools"), {"demo": DemoPlugin(), "pools": PoolsPlugin(["fixed"])}
    )
    # demo is listed first, so it is asked first; it answers for nodes with langs.
    assert manager.node_pools("n1", {"langs": ["en"]}, ["declared"]) == ["lang:en"]
    # demo defers (None): pools answers.
    assert manager.node_pools("n1", {}, ["declared"]) == ["fixed"]
    # An empty list is an answer, not a deferral.
    empty = PluginManager.load(config("pools"), {"pools": PoolsPlugin([])})
    assert empty.node_pools("n1", {}, ["declared"]) == []
    # Everyone defers: the core's default passes the declared pools through.
    deferring = PluginManager.load(config("pools"), {"pools": PoolsPlugin(None)})
    assert deferring.node_pools("n1", {}, ["declared"]) == ["declared"]
    assert deferring.job_pools(None, {"pool": "p"}, ["declared"]) == ["p"]
    assert deferring.job_pools(None, {}, ["declared"]) == ["declared"]


def test_order_of_enabled_plugins_decides() -> None:
    plugins: dict[str, object] = {"first": PoolsPlugin(["a"]), "second": PoolsPlugin(["b"])}
    forward = PluginManager.load(config("first", "second"), plugins)
    backward = PluginManager.load(config("second", "first"), plugins)
    assert forward.node_pools("n", {}, []) == ["a"]
    assert backward.node_pools("n", {}, []) == ["b"]


def test_a_bad_decision_is_refused() -> None:
    class Wrong:
        @hookimpl
        def schedd_node_pools(self) -> str:
            return "zh>en"

    manager = PluginManager.load(config("wrong"), {"wrong": Wrong()})
    with pytest.raises(TypeError, match="expected a list of pool keys"):
        manager.node_pools("n1", {}, [])


# --- authentication --------------------------------------------------------------------------


def auth_manager(
    node_tokens: tuple[str, ...] = (), client_tokens: tuple[str, ...] = ()
) -> PluginManager:
    auth = AuthSection(node_tokens=node_tokens, client_tokens=client_tokens)
    return PluginManager.load(Config(auth=auth, plugins=()))


def test_tokens_right_wrong_and_missing() -> None:
    manager = auth_manager(node_tokens=("n-secret", "n-other"), client_tokens=("c-secret",))
    assert manager.authenticate("node", "n-secret", "1.2.3.4:5") == token_principal("n-secret")
    assert manager.authenticate("node", "n-other", "1.2.3.4:5") == token_principal("n-other")
    assert manager.authenticate("node", "c-secret", "1.2.3.4:5") is None  # other role's token
    assert manager.authenticate("node", "n-secre", "1.2.3.4:5") is None
    assert manager.authenticate("node", None, "1.2.3.4:5") is None
    assert manager.authenticate("client", "c-secret", "1.2.3.4:5") == token_principal("c-secret")
    assert manager.authenticate("admin", "n-secret", "1.2.3.4:5") is None
    assert token_principal("n-secret").startswith("token:")
    assert len(token_principal("n-secret")) == len("token:") + 8


def test_no_tokens_for_a_role_admits_anyone_as_anonymous() -> None:
    manager = auth_manager(node_tokens=("n-secret",))
    assert manager.authenticate("client", None, "1.2.3.4:5") == "anonymous"
    assert manager.authenticate("client", "whatever", "1.2.3.4:5") == "anonymous"
    assert manager.authenticate("node", None, "1.2.3.4:5") is None


def test_token_comparison_is_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    compare_digest = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return compare_digest(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    manager = auth_manager(node_tokens=("one", "two", "three"))
    assert manager.authenticate("node", "one", "peer") == token_principal("one")
    # Every configured token is compared (no early exit), always as equal-length digests.
    assert len(calls) == 3
    assert all(len(a) == len(b) == 32 for a, b in calls)


def test_a_plugin_answers_before_the_token_check() -> None:
    class Rack:
        @hookimpl
        def schedd_authenticate(self, role: str, peer: str) -> str | None:
            if peer.startswith("10.20."):
                return "rack"
            if peer.startswith("6.6.6."):
                raise ProtocolError("E_AUTH", "banned network")
            if peer.startswith("9.9.9."):
                raise RuntimeError("allow-list service down")
            return None

    manager = PluginManager.load(
        Config(auth=AuthSection(node_tokens=("t",)), plugins=("rack",)), {"rack": Rack()}
    )
    assert manager.authenticate("node", None, "10.20.0.1:4000") == "rack"
    assert manager.authenticate("node", "t", "10.30.0.1:4000") == token_principal("t")
    assert manager.authenticate("node", "bad", "10.30.0.1:4000") is None
    with pytest.raises(ProtocolError):
        manager.authenticate("node", "t", "6.6.6.6:1")
    assert manager.authenticate("node", "t", "9.9.9.9:1") is None  # fails closed


# --- events, CLI, wrappers -------------------------------------------------------------------


def test_an_event_hook_that_raises_is_logged_not_propagated(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Broken:
        @hookimpl
        def schedd_job_state_changed(self, job_id: str) -> None:
            raise RuntimeError("boom")

    manager = PluginManager.load(config("broken"), {"broken": Broken()})
    with caplog.at_level(logging.ERROR):
        manager.job_state_changed("j1", "done", 1, "n1")
    assert "schedd_job_state_changed raised" in caplog.text
    manager.node_registered("n1", 1, ["p"], "i1")


def test_cli_commands_are_added() -> None:
    class Cli:
        @hookimpl
        def schedd_add_cli_commands(self, subparsers: Any) -> None:
            subparsers.add_parser("demo-report")

    parser = argparse.ArgumentParser()
    subparsers = parser.add_subparsers(dest="command")
    PluginManager.load(config("cli"), {"cli": Cli()}).add_cli_commands(subparsers)
    assert parser.parse_args(["demo-report"]).command == "demo-report"


def test_wrapper_hookimpls_see_every_call() -> None:
    seen: list[object] = []

    class Audit:
        @hookimpl(wrapper=True)
        def schedd_node_pools(self, node_id: str) -> Any:
            result = yield
            seen.append((node_id, result))
            return result

    manager = PluginManager.load(config("audit"), {"audit": Audit()})
    assert manager.node_pools("n1", {}, ["p"]) == ["p"]
    assert seen == [("n1", ["p"])]


# --- schedd_configure: each plugin receives its own settings ------------------------------------


class Configured:
    """Records the settings schedd_configure hands it."""

    def __init__(self, settings_class: type | None = None, fail: bool = False) -> None:
        self.settings_class, self.fail = settings_class, fail
        self.received: list[object] = []

    @hookimpl
    def schedd_plugin_config(self) -> type | None:
        return self.settings_class

    @hookimpl
    def schedd_configure(self, settings: object) -> None:
        if self.fail:
            raise ValueError("cannot use these settings")
        self.received.append(settings)


def test_each_plugin_is_configured_once_with_its_own_settings() -> None:
    demo, bare = Configured(DemoSettings), Configured()
    manager = PluginManager.load(config("demo", "bare", demo={"port": 9000}),
                                 {"demo": demo, "bare": bare})
    assert demo.received == [DemoSettings(port=9000)]
    assert bare.received == [None]
    assert manager.plugin_config("demo") is demo.received[0]


def test_no_plugin_is_configured_when_any_settings_are_invalid() -> None:
    demo, other = Configured(DemoSettings), Configured(DemoSettings)
    errors = config_errors(config("demo", "other", demo={"port": 9000}, other={"port": "x"}),
                           {"demo": demo, "other": other})
    assert errors and all("$.plugins.other" in line for line in errors)
    assert demo.received == other.received == []


def test_a_failing_schedd_configure_is_a_config_error() -> None:
    errors = config_errors(config("demo"), {"demo": Configured(fail=True)})
    assert errors == ["$.plugins.demo: schedd_configure failed: "
                      "ValueError('cannot use these settings')"]
