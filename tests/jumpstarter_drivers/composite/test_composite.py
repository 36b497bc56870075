"""Composite trees served for real: children by name, and a node shared through a ref proxy."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import pytest

from jumpstarter_drivers.composite import Composite, CompositeClient, Proxy, resolve_refs
from jumpstarter_drivers.core import config, serve
from jumpstarter_drivers.core.driver import Driver
from jumpstarter_drivers.core.errors import ConfigurationError
from jumpstarter_drivers.power import MockPower, PowerClient, PowerReading

LAB = """
export:
  board:
    description: the board on the desk
    children:
      power: {type: MockPower}
  flasher:
    children:
      power: {ref: board.power}
"""


@dataclass(kw_only=True)
class Counting(Driver):
    closed: int = 0

    def close(self) -> None:
        self.closed += 1
        super().close()


def test_proxy_forwards_calls_to_the_shared_node(caplog: pytest.LogCaptureFixture) -> None:
    root = config.loads(LAB).root
    board_power = root.children["board"].children["power"]
    with serve(root) as client:
        assert isinstance(client, CompositeClient)
        assert client.board.description == "the board on the desk"
        shared = client.flasher.power
        assert isinstance(shared, PowerClient)
        assert shared.uuid != client.board.power.uuid, "the proxy is a node of its own"
        with caplog.at_level(logging.INFO, logger="driver"):
            shared.on()
        on_board = [r for r in caplog.records if getattr(r, "driver_uuid", None) == board_power.uuid]
        assert [r.getMessage() for r in on_board] == ["power on"]
        assert list(shared.read()) == [PowerReading(0.0, 0.0), PowerReading(5.0, 2.0)]


def test_composite_client_paths() -> None:
    with serve(config.loads(LAB).root) as client:
        assert client["board.power"] is client.board.power
        assert "flasher.power" in client and "flasher.serial" not in client
        assert list(client) == ["board", "flasher"]
        with pytest.raises(KeyError, match="'board.serial': board has no child 'serial'; children: power"):
            client["board.serial"]


def test_report_names_composite_and_proxy_clients() -> None:
    root = config.loads(LAB).root
    with config.ExporterConfig(root=root).session() as session:
        reports = {r.labels.get("jumpstarter.dev/name", "root"): r for r in session.report().reports}
    assert reports["root"].labels["jumpstarter.dev/client"] == "jumpstarter_driver_composite.client.CompositeClient"
    assert reports["power"].labels["jumpstarter.dev/client"] == "jumpstarter_driver_power.client.PowerClient"
    assert len([r for r in session.report().reports if r.labels.get("jumpstarter.dev/name") == "power"]) == 2


def test_proxy_mirrors_children_and_leaves_the_target_to_its_owner() -> None:
    target = Counting(children={"power": MockPower()})
    root = Composite(children={"board": target, "alias": Proxy(ref="board")})
    resolve_refs(root)
    alias = root.children["alias"]
    assert alias.children["power"].target is target.children["power"]
    root.close()
    assert target.closed == 1


def test_refs_may_chain_and_cycles_are_refused() -> None:
    power = MockPower()
    root = Composite(children={"a": Proxy(ref="b"), "b": Proxy(ref="c"), "c": power})
    resolve_refs(root)
    assert root.children["a"].target is power
    with pytest.raises(ConfigurationError, match="points at itself"):
        resolve_refs(Composite(children={"a": Proxy(ref="a")}))
    with pytest.raises(ConfigurationError, match="refs 'a', 'b' point at each other in a cycle"):
        resolve_refs(Composite(children={"b": Proxy(ref="a"), "a": Proxy(ref="b")}))


def test_a_ref_through_a_ref_resolves_whatever_the_order() -> None:
    power = MockPower()
    root = Composite(
        children={"c": Proxy(ref="b.power"), "board": Composite(children={"power": power}), "b": Proxy(ref="board")}
    )
    resolve_refs(root)
    assert root.children["c"].target is power
    with pytest.raises(ConfigurationError, match="ref 'b.serial': b has no child 'serial'; children: power"):
        resolve_refs(Composite(children={"c": Proxy(ref="b.serial"), "board": Composite(children={"power": MockPower()}), "b": Proxy(ref="board")}))


def test_unbound_proxy_says_how_to_bind_it() -> None:
    with pytest.raises(ConfigurationError, match="ref 'board.power' is not resolved; .*resolve_refs"):
        Proxy(ref="board.power").client()
    with pytest.raises(ConfigurationError, match="is not a dotted path"):
        Proxy(ref="board..power")


def test_proxy_report_names_the_node_it_stands_for() -> None:
    root = config.loads(LAB).root
    with config.ExporterConfig(root=root).session() as session:
        reports = session.report().reports
    refs = {r.labels.get("jumpstarter-toolkit/ref") for r in reports if r.labels.get("jumpstarter.dev/name") == "power"}
    assert refs == {None, "board.power"}
