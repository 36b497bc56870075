"""Exporter configuration: tree building, Jumpstarter's document form, short names, errors."""

from __future__ import annotations

import importlib
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

from jumpstarter_drivers.composite import Composite, Proxy
from jumpstarter_drivers.core import config
from jumpstarter_drivers.core.config import DriverRegistry, hookimpl, load, loads
from jumpstarter_drivers.core.driver import Driver, export
from jumpstarter_drivers.core.errors import ConfigurationError
from jumpstarter_drivers.power import MockPower, SyncMockPower


@dataclass(kw_only=True)
class Lamp(Driver):
    """A test driver with a required field and a validated one."""

    watts: int
    colour: str = "white"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.colour not in ("white", "red"):
            raise ConfigurationError(f"Lamp: config field 'colour' must be white or red, got {self.colour!r}")

    @export
    def brightness(self) -> int:
        return self.watts * 10


def lamp_registry() -> DriverRegistry:
    registry = DriverRegistry(entry_points=False)
    registry.register("Lamp", Lamp)
    return registry


def test_short_names_children_and_descriptions() -> None:
    loaded = loads(
        textwrap.dedent(
            """
            export:
              board:
                description: the board on the desk
                children:
                  power:
                    type: SyncMockPower
                    description: bench supply
                    methods_description: {on: switch the bench supply on}
                  lamp: {type: Lamp, config: {watts: 40}}
            """
        ),
        registry=lamp_registry(),
    )
    board = loaded.root.children["board"]
    assert type(loaded.root) is Composite and type(board) is Composite
    assert board.description == "the board on the desk"
    power = board.children["power"]
    assert type(power) is SyncMockPower and power.description == "bench supply"
    assert power.describe_methods()["on"] == "switch the bench supply on"
    assert board.children["lamp"].brightness() == 400
    assert loaded.labels == {}


def test_jumpstarter_exporter_config_document(tmp_path: Path) -> None:
    path = tmp_path / "exporter.yaml"
    path.write_text(
        textwrap.dedent(
            """
            apiVersion: jumpstarter.dev/v1alpha1
            kind: ExporterConfig
            metadata:
              namespace: lab
              name: desk-1
              labels: {board: rpi4, site: desk}
            endpoint: grpc.example.com:443
            token: not-used-here
            export:
              power:
                type: jumpstarter_driver_power.driver.MockPower
              storage:
                type: jumpstarter_drivers.power.driver.SyncMockPower
            """
        )
    )
    loaded = load(path)
    assert type(loaded.root.children["power"]) is MockPower
    assert type(loaded.root.children["storage"]) is SyncMockPower
    assert loaded.labels == {"board": "rpi4", "site": "desk"}
    with loaded.session() as session:
        assert session.labels == {"board": "rpi4", "site": "desk"}


def test_ref_builds_a_proxy_bound_to_the_named_node() -> None:
    loaded = loads("export:\n  flasher:\n    children:\n      power: {ref: board.power}\n  board:\n    children:\n      power: {type: MockPower}\n")
    proxy = loaded.root.children["flasher"].children["power"]
    assert isinstance(proxy, Proxy)
    assert proxy.target is loaded.root.children["board"].children["power"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("export: [1, 2]", "lab.yaml: export: expected a mapping of names to driver nodes, got list [1, 2]"),
        ("export:\n  power: {type: MockPower, config: {volts: 5}}", "lab.yaml: export.power.config.volts: MockPower: unknown config field 'volts'"),
        ("export:\n  board:\n    children:\n      lamp: {type: Lamp}", "lab.yaml: export.board.children.lamp.config.watts: Lamp: missing required config field(s): watts"),
        ("export:\n  lamp: {type: Lamp, config: {watts: bright}}", "lab.yaml: export.lamp.config.watts: Lamp: config field 'watts' expects int, got 'bright' (str)"),
        ("export:\n  lamp: {type: Lamp, config: {watts: 1, colour: blue}}", "lab.yaml: export.lamp.config.colour: Lamp: config field 'colour' must be white or red, got 'blue'"),
        ("export:\n  power: {type: NoSuchPower}", "lab.yaml: export.power.type: no driver named 'NoSuchPower'"),
        ("export:\n  power: {type: no_such_pkg.driver.Power}", "lab.yaml: export.power.type: driver 'no_such_pkg.driver.Power' (no_such_pkg.driver.Power) is not installed"),
        ("export:\n  power: {type: jumpstarter_drivers.power.driver.PowerReading}", "is <class 'jumpstarter_drivers.power.common.PowerReading'>, not a jumpstarter_drivers Driver class"),
        ("export:\n  power: {typo: MockPower}", "lab.yaml: export.power.typo: unknown key; a node has type, config"),
        ("export:\n  power: {config: {a: 1}}", "lab.yaml: export.power.config: config: needs a type:"),
        ("export:\n  power: {}", "lab.yaml: export.power: expected type: (a driver), children: (a composite) or ref: (another node)"),
        ("export:\n  power: {ref: board.power}", "lab.yaml: export.power.ref: ref 'board.power': the root has no child 'board'; children: power"),
        ("export:\n  a: {ref: b}\n  b: {ref: a}", "point at each other in a cycle"),
        ("export:\n  power: {ref: x, description: d}", "lab.yaml: export.power.description: a ref: node has nothing else"),
        ("export:\n  power: {type: MockPower, config: {children: {}}}", "lab.yaml: export.power.config.children: set children: on the node"),
        ("exports:\n  power: {type: MockPower}", "lab.yaml: exports: unknown top-level key"),
        ("kind: ClientConfig\nexport: {}", "lab.yaml: kind: expected ExporterConfig, got 'ClientConfig'"),
        ("labels: {a: 1}\nexport:\n  power: {type: MockPower}", "lab.yaml: labels: expected a mapping of strings to strings"),
        ("export:\n  power: {type: MockPower\n", "lab.yaml: line 3, column 1: not valid YAML"),
    ],
)
def test_errors_name_the_file_the_path_and_the_expectation(text: str, message: str) -> None:
    with pytest.raises(ConfigurationError) as excinfo:
        loads(text, source="lab.yaml", registry=lamp_registry())
    assert message in str(excinfo.value)


CLOSED: list[str] = []


@dataclass(kw_only=True)
class Held(Driver):
    """A driver holding something its close() must release."""

    name: str

    def close(self) -> None:
        CLOSED.append(self.name)
        super().close()


@pytest.mark.parametrize(
    ("text", "closed"),
    [
        ("export:\n  a: {type: Held, config: {name: a}}\n  b: {type: Lamp, config: {watts: x}}\n", ["a"]),
        ("export:\n  lamp:\n    type: Lamp\n    config: {watts: x}\n    children: {a: {type: Held, config: {name: a}}}\n", ["a"]),
        (
            (
                "export:\n  board:\n    children:\n      a: {type: Held, config: {name: a}}\n"
                "      b: {type: Held, config: {name: b}}\n      c: {type: NoSuchDriver}\n"
            ),
            ["a", "b"],
        ),
        ("export:\n  a: {type: Held, config: {name: a}}\n  b: {ref: nowhere}\n", ["a"]),
    ],
    ids=["sibling", "children of a failing driver", "nested siblings", "unresolved ref"],
)
def test_drivers_built_before_an_error_are_closed(text: str, closed: list[str]) -> None:
    registry = lamp_registry()
    registry.register("Held", Held)
    CLOSED.clear()
    with pytest.raises(ConfigurationError):
        loads(text, registry=registry)
    assert CLOSED == closed


def test_missing_file_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"cannot read exporter configuration .*nope.yaml: No such file"):
        load(tmp_path / "nope.yaml")


def test_binary_file_is_a_configuration_error(tmp_path: Path) -> None:
    path = tmp_path / "disk.img"
    path.write_bytes(b"export:\n\xff\xfe")
    with pytest.raises(ConfigurationError, match=r"disk.img: not a text file: byte 8 is not UTF-8"):
        load(path)


def test_import_path_of_a_driver_class(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "bench_drivers.py").write_text(
        "from dataclasses import dataclass\n"
        "from jumpstarter_drivers import Driver, export\n"
        "@dataclass(kw_only=True)\n"
        "class Fan(Driver):\n"
        "    rpm: int = 1000\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    loaded = loads("export:\n  fan: {type: 'bench_drivers:Fan', config: {rpm: 5}}\n  fan2: {type: bench_drivers.Fan}\n")
    assert loaded.root.children["fan"].rpm == 5 and loaded.root.children["fan2"].rpm == 1000
    with pytest.raises(ConfigurationError, match="module bench_drivers has no class 'Fun'"):
        loads("export:\n  fan: {type: bench_drivers.Fun}\n")
    (tmp_path / "bench_broken.py").write_text("raise RuntimeError('needs libfoo')\n")
    with pytest.raises(ConfigurationError, match=r"module bench_broken fails to import: RuntimeError\('needs libfoo'\)"):
        loads("export:\n  fan: {type: bench_broken.Fan}\n")


def test_pluggy_plugin_registers_a_short_name() -> None:
    class AcmePlugin:
        @hookimpl
        def jumpstarter_register_drivers(self, registry: DriverRegistry) -> None:
            registry.register("AcmeLamp", Lamp)

    registry = DriverRegistry(entry_points=False)
    with pytest.raises(ConfigurationError, match="no driver named 'AcmeLamp'"):
        registry.resolve("AcmeLamp")
    registry.plugins.register(AcmePlugin())
    loaded = loads("export:\n  lamp: {type: AcmeLamp, config: {watts: 2}}\n", registry=registry)
    assert loaded.root.children["lamp"].brightness() == 20


def make_distribution(site: Path, name: str, entry_points: str, modules: dict[str, str]) -> None:
    """A minimal installed distribution: a dist-info with entry points, and its modules."""
    info = site / f"{name}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[{config.ENTRY_POINT_GROUP}]\n{entry_points}\n")
    for module, source in modules.items():
        (site / f"{module}.py").write_text(source)
    importlib.invalidate_caches()


DRIVER_MODULE = (
    "from dataclasses import dataclass\n"
    "from jumpstarter_drivers import Driver, export\n"
    "@dataclass(kw_only=True)\n"
    "class {name}(Driver):\n"
    "    @export\n"
    "    def hello(self) -> str:\n"
    "        return '{name}'\n"
)


def test_third_party_driver_through_entry_point(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_distribution(
        tmp_path,
        "acme_drivers",
        "AcmePower = acme_power:AcmePower\nacme = acme_plugin",
        {
            "acme_power": DRIVER_MODULE.format(name="AcmePower"),
            "acme_relay": DRIVER_MODULE.format(name="AcmeRelay"),
            "acme_plugin": (
                "from jumpstarter_drivers.core.config import hookimpl\n"
                "@hookimpl\n"
                "def jumpstarter_register_drivers(registry):\n"
                "    registry.register('AcmeRelay', 'acme_relay.AcmeRelay')\n"
            ),
        },
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    registry = DriverRegistry()
    loaded = loads("export:\n  power: {type: AcmePower}\n", registry=registry)
    assert loaded.root.children["power"].hello() == "AcmePower"
    import sys

    assert "acme_plugin" not in sys.modules, "entry points other than the one named load only on a miss"
    loaded = loads("export:\n  relay: {type: AcmeRelay}\n", registry=registry)
    assert loaded.root.children["relay"].hello() == "AcmeRelay"


def test_broken_entry_point_names_itself(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_distribution(tmp_path, "broken_drivers", "Broken = broken_mod:Broken", {"broken_mod": "raise ImportError('no libfoo')\n"})
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigurationError, match=r"entry point 'Broken' = 'broken_mod:Broken' .* fails to load: ImportError\('no libfoo'\)"):
        loads("export:\n  x: {type: Broken}\n", registry=DriverRegistry())


def test_missing_family_breaks_only_files_that_name_it() -> None:
    registry = DriverRegistry(entry_points=False)
    registry.register("Ghost", "jumpstarter_drivers.ghost.driver.Ghost")
    with pytest.raises(ConfigurationError, match="driver 'Ghost' .* is not installed"):
        loads("export:\n  g: {type: Ghost}\n", registry=registry)
    assert type(loads("export:\n  p: {type: MockPower}\n", registry=registry).root.children["p"]) is MockPower


@pytest.mark.parametrize("name", sorted(config.BUILTIN_DRIVERS))
def test_builtin_short_names_resolve(name: str) -> None:
    """Every bundled family is in the tree: a short name that names nothing is a stale entry."""
    assert config.DriverRegistry(entry_points=False).resolve(name).__name__ == name


def test_jumpstarter_paths_map_to_registered_short_names() -> None:
    assert set(config.JUMPSTARTER_DRIVERS.values()) <= set(config.BUILTIN_DRIVERS)


def alias_bomb(levels: int = 7) -> str:
    """A "billion laughs" value in flow style: each level lists the previous one nine times (9**levels leaves)."""
    items = ["&a0 [lol]"] + [f"&a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, levels + 1)]
    return f"[{', '.join(items)}]"


@pytest.mark.parametrize("where", ["config", "labels", "description", "type"])
def test_an_alias_bomb_is_refused_at_once(where: str) -> None:
    bomb = alias_bomb()
    assert len(bomb) < 1000
    documents = {
        "config": f"export:\n  lamp: {{type: Lamp, config: {{watts: {bomb}}}}}\n",
        "labels": f"labels: {{a: {bomb}}}\nexport:\n  lamp: {{type: Lamp, config: {{watts: 1}}}}\n",
        "description": f"export:\n  lamp: {{type: Lamp, description: {bomb}, config: {{watts: 1}}}}\n",
        "type": f"export:\n  lamp: {{type: {bomb}}}\n",
    }
    with pytest.raises(ConfigurationError, match=r"^lab\.yaml: aliases expand to more than 100000 values") as excinfo:
        loads(documents[where], source="lab.yaml", registry=lamp_registry())
    assert len(str(excinfo.value)) < 200


def test_a_self_referencing_alias_is_refused() -> None:
    with pytest.raises(ConfigurationError, match=r"lab\.yaml: line 2.*alias \*loop refers to itself"):
        loads("export:\n  lamp: &loop {type: Lamp, children: {again: *loop}}\n", source="lab.yaml",
              registry=lamp_registry())


def test_a_few_aliases_are_fine() -> None:
    loaded = loads("export:\n  a: &power {type: MockPower}\n  b: *power\n", registry=lamp_registry())
    assert sorted(loaded.root.children) == ["a", "b"]


def test_deep_nesting_is_a_configuration_error() -> None:
    node = "{type: MockPower}"
    for _ in range(3000):
        node = f"{{children: {{c: {node}}}}}"
    with pytest.raises(ConfigurationError, match=r"lab\.yaml: line 2, column \d+: nested deeper than 100 levels"):
        loads(f"export:\n  top: {node}\n", source="lab.yaml")


@pytest.mark.parametrize(("text", "key", "line"), [
    ("export:\n  a: {type: MockPower}\nexport:\n  b: {type: MockPower}\n", "export", 3),
    ("export:\n  a: {type: MockPower}\n  a: {type: SyncMockPower}\n", "a", 3),
    ("export:\n  a: {type: Lamp, config: {watts: 1, watts: 2}}\n", "watts", 2),
    ("export:\n  a: {type: Lamp, config: {watts: 1}, labels: {1: a, 0x1: b}}\n", "0x1", 2),
    ("export:\n  a: {type: Lamp, config: {watts: 1}, labels: {~: a, null: b}}\n", "null", 2),
])
def test_a_duplicate_key_is_an_error_naming_it(text: str, key: str, line: int) -> None:
    with pytest.raises(ConfigurationError, match=rf"lab\.yaml: line {line}, column \d+: duplicate key '{key}'"):
        loads(text, source="lab.yaml", registry=lamp_registry())


@pytest.mark.parametrize("text", [
    "export:\n  board:\n    children:\n      power: {type: MockPower}\n      again: {ref: board}\n",
    "export:\n  a:\n    children:\n      b:\n        children:\n          up: {ref: a}\n",
    "export:\n  x: {ref: board.again}\n  board:\n    children:\n      again: {ref: x}\n",
])
def test_a_ref_to_a_node_holding_it_is_a_configuration_error(text: str) -> None:
    with pytest.raises(ConfigurationError, match=r"lab\.yaml: export\..*\.ref: .*(contains this ref|cycle)"):
        loads(text, source="lab.yaml")
