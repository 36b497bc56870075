"""The driver reference: generated from the drivers' code, shown by `jumpstarter drivers` and `report`."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from jumpstarter_drivers import Driver, export
from jumpstarter_drivers.cli.process import ServeProcess
from jumpstarter_drivers.cli.reference import describe, describe_all, describe_class, markdown
from jumpstarter_drivers.core.config import BUILTIN_DRIVERS
from jumpstarter_drivers.core.driver import exportstream


@dataclass(kw_only=True)
class Lamp(Driver):
    """A lamp on the bench.

    ``watts`` is what the bulb draws. The ``colour`` is not checked.
    """

    #: Where the lamp stands.
    place: str
    watts: int = 40
    colour: str = "white"
    dimmable: bool = False
    """Whether ``dim`` works."""
    tags: list[str] = field(default_factory=lambda: ["desk"], metadata={"doc": "Free-form tags."})
    _private: int = 0

    @export
    def dim(self, percent: float = 50.0, *, smooth: bool = True) -> int:
        """Dim the lamp to ``percent``.

        Returns the resulting watts.
        """
        return int(self.watts * percent / 100)

    @exportstream
    async def light(self) -> AsyncIterator[bytes]:
        """The light as bytes."""
        yield b""


def test_fields_and_methods_come_from_the_code() -> None:
    doc = describe_class(Lamp, "Lamp")
    assert [f.name for f in doc.fields] == ["place", "watts", "colour", "dimmable", "tags"], "no private, no common"
    lines = {f.name: (f.line(), f.doc) for f in doc.fields}
    assert lines["place"] == ("place: str (required)", "Where the lamp stands.")
    assert lines["watts"] == ("watts: int = 40", "``watts`` is what the bulb draws.")
    assert lines["colour"] == ("colour: str = 'white'", "The ``colour`` is not checked.")
    assert lines["dimmable"] == ("dimmable: bool = False", "Whether ``dim`` works.")
    assert lines["tags"] == ("tags: list[str] = ['desk']", "Free-form tags.")
    methods = {m.name: m for m in doc.methods}
    assert methods["dim"].signature == "dim(percent: float = 50.0, *, smooth: bool = True) -> int"
    assert methods["dim"].summary == "Dim the lamp to ``percent``."
    assert methods["dim"].kind == "unary"
    assert methods["light"].kind == "bytestream"
    assert doc.client == "jumpstarter_drivers.core.client.DriverClient"


def test_every_bundled_driver_is_in_the_reference() -> None:
    docs = describe_all()
    assert [d.name for d in docs] == sorted(BUILTIN_DRIVERS)
    page = markdown(docs)
    for d in docs:
        assert f"\n## {d.name}\n" in page
        for f in d.fields:
            assert f"| `{f.name}` |" in page, (d.name, f.name)
        for m in d.methods:
            assert f"- `{m.signature}`" in page, (d.name, m.name)


def test_every_field_says_what_it_means() -> None:
    """Every bundled driver's every field has a meaning: a ``#:`` comment where it is declared (or its class docstring)."""
    silent = sorted((d.name, f.name) for d in describe_all() for f in d.fields if not f.doc)
    assert not silent, f"document these fields (a #: comment above each): {silent}"


def test_inherited_fields_keep_their_meaning() -> None:
    """VirtualFlasher redeclares uboot_targets (another default); the meaning stays BaseFlasher's."""
    base, virtual = describe("BaseFlasher"), describe("VirtualFlasher")
    assert virtual.field("uboot_targets").doc == base.field("uboot_targets").doc != ""


def test_drivers_lists_the_bundled_drivers(jumpstarter) -> None:
    result = jumpstarter("drivers")
    assert result.returncode == 0, result.stderr
    names = [line.split()[0] for line in result.stdout.splitlines()]
    assert names == sorted(BUILTIN_DRIVERS)
    assert "PySerial           A serial console: any pyserial URL, exported as the byte stream `connect`." in (
        result.stdout.splitlines()
    )


def test_drivers_name_shows_one(jumpstarter) -> None:
    result = jumpstarter("drivers", "PySerial")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "PySerial (jumpstarter_drivers.pyserial.driver.PySerial)"
    assert "  url: str (required)" in lines
    assert "  baudrate: int = 115200" in lines
    assert "  connect() -> AsyncIterator[SerialStream]  [bytestream]" in lines
    as_json = json.loads(jumpstarter("drivers", "UBoot", "--json").stdout)
    fields = {f["name"]: f for f in as_json["fields"]}
    assert fields["boot_timeout"]["type"] == "float" and fields["boot_timeout"]["default"] == "60.0"
    assert "run_command" in [m["name"] for m in as_json["methods"]]
    everything = json.loads(jumpstarter("drivers", "--json").stdout)
    assert [d["name"] for d in everything] == sorted(BUILTIN_DRIVERS)


def test_drivers_unknown_name(jumpstarter) -> None:
    result = jumpstarter("drivers", "NoSuchThing")
    assert result.returncode == 1
    assert result.stderr.startswith("Error: no driver named 'NoSuchThing'; give a Driver class's import path")
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.fixture(scope="module")
def lab(lab_file: Path) -> Iterator[ServeProcess]:
    with ServeProcess(lab_file) as served:
        yield served


def test_report_shows_signatures_and_json(jumpstarter, lab: ServeProcess) -> None:
    env = {"JUMPSTARTER_HOST": lab.address}
    lines = jumpstarter("report", env=env).stdout.splitlines()
    assert "      read() -> Iterator[PowerReading]: Stream two readings: (0.0 V, 0.0 A) then (5.0 V, 2.0 A)." in lines
    assert "      on() -> None: Power on." in lines
    tree = json.loads(jumpstarter("report", "--json", env=env).stdout)
    assert tree["name"] == "root"
    power = next(child for child in tree["children"] if child["name"] == "power")
    assert power["client"] == "jumpstarter_drivers.power.client.PowerClient"
    assert power["description"] == "bench supply"
    assert {"name": "on", "signature": "on() -> None", "description": "Power on."} in power["methods"]
    board = next(child for child in tree["children"] if child["name"] == "board")
    assert [child["name"] for child in board["children"]] == ["power"]
