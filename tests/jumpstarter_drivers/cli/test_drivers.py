"""How driver commands are generated: a client's own ``cli()``, registered builders, children."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from jumpstarter_drivers import Driver, export
from jumpstarter_drivers.cli.drivers import client_command, command_builder, report_lines
from jumpstarter_drivers.cli.main import main
from jumpstarter_drivers.core.client import DriverClient
from jumpstarter_drivers.core.session import Session
from jumpstarter_drivers.flashers.client import FlasherClient
from jumpstarter_drivers.flashers.common import FlashResult
from jumpstarter_drivers.power import MockPower

HERE = __name__


class LampClient(DriverClient):
    """A lamp."""

    def brightness(self) -> int:
        return self.call_as(int, "brightness")

    def cli(self) -> click.Command:
        group = click.Group(help="Lamp commands.")

        @group.command()
        def show() -> None:
            """Print the brightness."""
            click.echo(f"brightness {self.brightness()}")

        return group


class TickerClient(DriverClient):
    """Counts."""


class FastTickerClient(TickerClient):
    """Counts faster."""


@command_builder(f"{HERE}.TickerClient")
def ticker_commands(client: TickerClient) -> click.Group:
    group = click.Group(help="Ticker commands.")

    @group.command()
    @click.argument("n", type=int)
    def ticks(n: int) -> None:
        """Print N ticks."""
        for tick in client.streamingcall("ticks", n):
            click.echo(int(tick))

    @group.command()
    def power() -> None:
        """A command named like a child: the command wins."""
        click.echo("ticker's own power command")

    return group


class RecordingFlasherClient(FlasherClient):
    """A FlasherClient that skips the upload: the command's wiring is under test, not the flasher."""

    def flash(self, path_or_url: str, target: str | None = None, method: str | None = None) -> FlashResult:
        if not Path(path_or_url).is_file():
            raise FileNotFoundError(f"image {path_or_url} does not exist or is not a file")
        return self.call_as(FlashResult, "flash", Path(path_or_url).name, target, method)


class BrokenClient(DriverClient):
    def cli(self) -> str:
        return "not a command"


@dataclass(kw_only=True)
class Lamp(Driver):
    level: int = 3

    @classmethod
    def client(cls) -> str:
        return f"{HERE}.LampClient"

    @export
    def brightness(self) -> int:
        """How bright."""
        return self.level


@dataclass(kw_only=True)
class Ticker(Driver):
    @classmethod
    def client(cls) -> str:
        return f"{HERE}.TickerClient"

    @export
    def ticks(self, n: int) -> Iterator[int]:
        """Count to n."""
        yield from range(n)


@dataclass(kw_only=True)
class FastTicker(Ticker):
    @classmethod
    def client(cls) -> str:
        return f"{HERE}.FastTickerClient"


@dataclass(kw_only=True)
class BrokenTicker(Ticker):
    @classmethod
    def client(cls) -> str:
        return f"{HERE}.BrokenClient"


@dataclass(kw_only=True)
class FakeFlasher(Driver):
    @classmethod
    def client(cls) -> str:
        return f"{HERE}.RecordingFlasherClient"

    @export
    def flash(self, image: str, target: str | None, method: str | None) -> FlashResult:
        self.logger.info("writing %s", image)
        return FlashResult(image, target or "usd", method or "uboot", 1024, {"load": 1.5, "write": 0.25})


@dataclass(kw_only=True)
class Bench(Driver):
    """A bench."""


@pytest.fixture
def bench() -> Iterator[str]:
    root = Bench(
        description="the test bench",
        children={
            "lamp": Lamp(level=7),
            "ticker": Ticker(children={"power": MockPower()}),
            "fast": FastTicker(),
            "broken": BrokenTicker(),
            "flasher": FakeFlasher(),
        },
    )
    with Session(root_device=root) as session, session.serve_unix() as path:
        yield str(path)


def run(host: str, *args: str, allow: str = "UNSAFE") -> click.testing.Result:
    return CliRunner().invoke(main, ["--host", host, *args], env={"JMP_DRIVERS_ALLOW": allow})


def test_a_clients_own_cli_method(bench: str) -> None:
    result = run(bench, "lamp", "show")
    assert result.exit_code == 0, result.output
    assert result.output == "brightness 7\n"


def test_a_registered_builder_serves_subclasses_too(bench: str) -> None:
    assert run(bench, "ticker", "ticks", "3").output == "0\n1\n2\n"
    assert run(bench, "fast", "ticks", "2").output == "0\n1\n"


def test_children_become_subcommands_unless_the_node_has_that_name(bench: str) -> None:
    assert run(bench, "ticker", "power").output == "ticker's own power command\n"
    listing = run(bench, "ticker", "--help").output
    assert "ticks" in listing and "Ticker commands." in listing


def test_a_broken_cli_method_leaves_the_rest_usable(bench: str) -> None:
    result = run(bench, "broken", "--help")
    assert result.exit_code == 0
    assert "commands unavailable" in result.output
    assert "BrokenClient.cli() must return a click command, got 'not a command'" in " ".join(result.output.split())
    assert run(bench, "lamp", "show").output == "brightness 7\n"


def test_not_allowed_clients_get_an_empty_group_saying_why(bench: str) -> None:
    result = run(bench, "lamp", "--help", allow="jumpstarter_drivers.*")
    assert result.exit_code == 0
    assert "unavailable" in result.output and "JMP_DRIVERS_ALLOW" in result.output
    assert "show" not in result.output


def test_client_command_builds_the_whole_tree(bench: str) -> None:
    from jumpstarter_drivers.core.access import connect

    with connect(bench, allow="UNSAFE") as client:
        root = client_command(client, "jumpstarter")
        assert isinstance(root, click.Group)
        assert sorted(root.commands) == ["broken", "fast", "flasher", "lamp", "ticker"]
        assert root.help == "the test bench"
        lines = list(report_lines(client))
    assert lines[0] == f"root ({Bench.client()}): the test bench"
    assert f"  lamp ({HERE}.LampClient)" in lines
    assert "      brightness() -> int: How bright." in lines
    assert "    power (jumpstarter_drivers.power.client.PowerClient)" in lines


def test_flasher_flash_through_the_families_own_cli(bench: str, tmp_path: Path) -> None:
    image = tmp_path / "disk.img"
    image.write_bytes(b"\0" * 1024)
    result = run(bench, "flasher", "flash", str(image), "--method", "busybox")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[-1] == "flashed disk.img (1024 bytes) to usd with busybox: load 1.50 s, write 0.25 s"
    missing = run(bench, "flasher", "flash", str(tmp_path / "nope.img"))
    assert missing.exit_code == 1
    assert missing.output.strip() == f"Error: image {tmp_path / 'nope.img'} does not exist or is not a file"
    bad_method = run(bench, "flasher", "flash", str(image), "--method", "dd")
    assert bad_method.exit_code == 2


def test_module_is_importable_by_its_test_name() -> None:
    assert Path(__file__).stem == HERE.rpartition(".")[2]
