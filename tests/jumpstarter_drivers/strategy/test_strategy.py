"""Boot strategies on the virtual board: off -> U-Boot -> Linux shell, idempotent, retried, failing fast."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from jumpstarter_drivers.composite.driver import Composite, Proxy, resolve_refs
from jumpstarter_drivers.core.access import serve
from jumpstarter_drivers.core.errors import ConfigurationError, DriverError, DriverInvalidArgument
from jumpstarter_drivers.shell import Shell
from jumpstarter_drivers.strategy import BootStrategy
from jumpstarter_drivers.uboot import UBoot
from jumpstarter_drivers.virtualboard import VirtualBoard, VirtualFlasher


def virtual_lab(boot_timeout: float = 10.0, retries: int = 2) -> Composite:
    """The virtual board with a flasher, a shell and a boot strategy over them."""
    board = VirtualBoard(autoboot_delay=1, disk_size=1 << 20)
    flasher = VirtualFlasher(children={
        "serial": Proxy(ref="board.serial"), "power": Proxy(ref="board.power"),
        "uboot": UBoot(boot_timeout=boot_timeout, power_off_time=0.0),
    })
    shell = Shell(password="password", login_timeout=10.0, children={"serial": Proxy(ref="board.serial")})
    strategy = BootStrategy(retries=retries, children={"flasher": Proxy(ref="flasher"), "shell": Proxy(ref="shell")})
    root = Composite(children={"board": board, "flasher": flasher, "shell": shell, "strategy": strategy})
    resolve_refs(root)
    return root


@pytest.fixture
def lab() -> Iterator:
    root = virtual_lab()
    try:
        with serve(root) as client:
            yield client
    finally:
        root.close()


def test_off_to_shell_then_idempotent(lab) -> None:
    result = lab.strategy.transition("shell")
    assert (result.state, result.previous, result.attempts) == ("shell", "unknown", 1)
    assert result.path == ["uboot", "shell"] and all(result.steps[name] > 0 for name in result.path)
    assert lab.shell.run_check("uname -r") == "6.1.0-virtual\n"
    again = lab.strategy.transition("shell")
    assert (again.state, again.previous, again.steps) == ("shell", "shell", {})
    assert again.summary() == "already shell"
    assert lab.strategy.get_state() == "shell"


def test_back_to_uboot_and_off(lab) -> None:
    lab.strategy.transition("shell")
    result = lab.strategy.transition("uboot")
    assert result.path == ["uboot"]
    assert lab.flasher.uboot.run_command("echo at the prompt").strip() == "at the prompt"
    assert lab.strategy.transition("uboot").steps == {}
    lab.strategy.transition("off")
    assert lab.strategy.get_state() == "off"


def test_a_board_changed_behind_its_back_is_walked_again(lab) -> None:
    lab.strategy.transition("shell")
    lab.board.power.off()
    result = lab.strategy.transition("shell")
    assert result.path == ["uboot", "shell"]
    assert lab.shell.run_check("echo back") == "back\n"


def test_a_panic_fails_at_once_with_the_console_tail(lab, caplog) -> None:
    caplog.set_level(logging.INFO)
    lab.board.set_faults(panic_on="linux")
    with pytest.raises(DriverError, match=r"(?s)Kernel panic - not syncing.*--- console tail ---.*Run /init"):
        lab.strategy.transition("shell")
    assert "trying again" not in caplog.text
    assert lab.strategy.get_state() == "off"


def test_a_hung_boot_is_retried_by_power_cycling() -> None:
    root = virtual_lab(boot_timeout=3.0, retries=1)
    try:
        with serve(root) as client:
            client.board.set_faults(hang_boot_once=True)
            result = client.strategy.transition("uboot")
            assert (result.state, result.attempts) == ("uboot", 2)
    finally:
        root.close()


def test_retries_are_bounded() -> None:
    root = virtual_lab(boot_timeout=2.0, retries=0)
    try:
        with serve(root) as client:
            client.board.set_faults(hang_boot_once=True)
            with pytest.raises(DriverError, match="interrupt autoboot"):
                client.strategy.transition("uboot")
    finally:
        root.close()


def test_unknown_state_lists_the_states(lab) -> None:
    with pytest.raises(DriverInvalidArgument, match="unknown state 'linux'; the states are: off, uboot, shell"):
        lab.strategy.transition("linux")


def test_negative_retries_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="'retries' must be >= 0"):
        BootStrategy(retries=-1, children={"flasher": Composite(), "shell": Composite()})
