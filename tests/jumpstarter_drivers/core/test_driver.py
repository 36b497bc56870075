"""Driver configuration is checked at construction, and exports are discovered from the class."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from jumpstarter_drivers import ConfigurationError, Driver, MethodKind, export, exportstream
from jumpstarter_drivers.power import MockPower, PowerInterface, SyncMockPower


@dataclass(kw_only=True)
class Configured(Driver):
    host: str
    port: int = 80
    ratio: float = 1.0
    tags: list[str] | None = None
    mode: str | None = None


def test_unknown_field_names_driver_field_and_choices():
    with pytest.raises(ConfigurationError, match=r"Configured: unknown config field 'prot'; expected one of: .*port"):
        Configured(host="a", prot=1)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"host": 1}, "config field 'host' expects str, got 1 (int)"),
        ({"host": "a", "port": "80"}, "config field 'port' expects int, got '80' (str)"),
        ({"host": "a", "port": True}, "config field 'port' expects int, got True (bool)"),
        ({"host": "a", "tags": ["x", 2]}, "config field 'tags' expects list"),
        ({"host": "a", "children": {"p": "power"}}, "config field 'children' expects dict"),
    ],
)
def test_mistyped_fields_are_refused(kwargs, message):
    with pytest.raises(ConfigurationError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        Configured(**kwargs)


def test_missing_required_field_and_positional_arguments():
    with pytest.raises(ConfigurationError, match="Configured: missing required config field"):
        Configured()
    with pytest.raises(ConfigurationError, match="configured by keyword only"):
        Configured("host")


def test_ints_are_accepted_for_floats_and_values_kept():
    driver = Configured(host="h", ratio=2, tags=["a"])
    assert (driver.host, driver.port, driver.ratio, driver.tags) == ("h", 80, 2, ["a"])


def test_required_children_are_enforced():
    @dataclass(kw_only=True)
    class NeedsPower(Driver):
        required_children = {"power": PowerInterface}

    with pytest.raises(ConfigurationError, match="NeedsPower: missing required child 'power' \\(expected PowerInterface\\)"):
        NeedsPower()
    with pytest.raises(ConfigurationError, match="child 'power' must be PowerInterface, got Configured"):
        NeedsPower(children={"power": Configured(host="x")})
    assert NeedsPower(children={"power": MockPower()}).children["power"]


def test_export_kinds_and_inheritance():
    methods = MockPower.exported_methods()
    assert {name: m.kind for name, m in methods.items()} == {
        "on": MethodKind.UNARY,
        "off": MethodKind.UNARY,
        "read": MethodKind.STREAMING,
    }
    assert methods["on"].is_async and not SyncMockPower.exported_methods()["on"].is_async

    @dataclass(kw_only=True)
    class Override(MockPower):
        async def on(self) -> None:  # no decorator: still exported, as the interface says
            self.logger.info("custom on")

        @exportstream
        async def console(self):
            yield None

    assert Override.exported_methods()["on"].kind is MethodKind.UNARY
    assert Override.exported_methods()["console"].kind is MethodKind.BYTESTREAM


def test_method_descriptions_come_from_docstrings_unless_configured():
    assert MockPower().describe_methods()["on"] == "Power on."
    assert MockPower(methods_description={"on": "Switch the lab PSU on"}).describe_methods()["on"] == "Switch the lab PSU on"


def test_close_and_reset_reach_the_whole_tree():
    calls = []

    @dataclass(kw_only=True)
    class Node(Driver):
        @export
        def noop(self) -> None:
            pass

        def close(self) -> None:
            calls.append(("close", self.description))
            super().close()

        def reset(self) -> None:
            calls.append(("reset", self.description))
            super().reset()

    tree = Node(description="a", children={"b": Node(description="b", children={"c": Node(description="c")})})
    tree.reset()
    tree.close()
    assert calls == [("reset", "a"), ("reset", "b"), ("reset", "c"), ("close", "a"), ("close", "b"), ("close", "c")]
    assert [name for _, _, name in tree.walk()] == [None, "b", "c"]


def test_abstract_interface_cannot_be_instantiated():
    with pytest.raises(TypeError, match="abstract"):
        PowerInterface()
