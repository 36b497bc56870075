"""The U-Boot driver against the virtual board, over a real pty and a real session."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest

from jumpstarter_drivers.composite.driver import Composite, Proxy, resolve_refs
from jumpstarter_drivers.core.access import serve
from jumpstarter_drivers.core.errors import ConfigurationError, DriverError, DriverInvalidArgument
from jumpstarter_drivers.power import MockPower
from jumpstarter_drivers.uboot import UBoot
from jumpstarter_drivers.virtualboard import VirtualBoard


@contextlib.contextmanager
def served_lab(**uboot_config: object) -> Iterator:
    """A virtual board and a UBoot driver on its serial and power, served; yields (board, client)."""
    board = VirtualBoard(autoboot_delay=1)
    uboot = UBoot(children={"serial": Proxy(ref="board.serial"), "power": Proxy(ref="board.power")},
                  **({"boot_timeout": 10.0, "power_off_time": 0.0} | uboot_config))
    root = Composite(children={"board": board, "uboot": uboot})
    resolve_refs(root)
    try:
        with serve(root) as client:
            yield board, client
    finally:
        root.close()


@pytest.fixture
def lab() -> Iterator:
    with served_lab() as served:
        yield served


def test_boot_to_prompt_run_commands_and_environment(lab) -> None:
    _, client = lab
    client.uboot.reboot_to_console()
    assert client.uboot.run_command("echo hello").strip() == "hello"
    client.uboot.set_env("greeting", "hi there")
    assert client.uboot.get_env("greeting") == "hi there"
    assert client.uboot.get_env("nosuchvar") is None
    client.uboot.set_env("greeting", None)
    assert client.uboot.get_env("greeting") is None


def test_long_output_is_returned_whole(lab) -> None:
    _, client = lab
    client.uboot.reboot_to_console()
    lines = [f"line {i:04d} " + "x" * 60 for i in range(400)]  # far more than the console tail keeps
    output = client.uboot.run_command("; ".join(f"echo {line}" for line in lines))
    assert output.splitlines() == lines


def test_failed_command_names_it_with_console_tail(lab) -> None:
    _, client = lab
    client.uboot.reboot_to_console()
    with pytest.raises(DriverError, match=r"(?s)command 'frobnicate 1' failed with status 1.*console tail.*Unknown command 'frobnicate'"):
        client.uboot.run_command("frobnicate 1")
    assert "Unknown command" in client.uboot.run_command("frobnicate 2", check=False)


def test_dhcp_network(lab) -> None:
    board, client = lab
    client.uboot.reboot_to_console()
    client.uboot.setup_network(serverip="127.0.0.1", tftp_port=6969)
    assert client.uboot.get_env("ipaddr") == board.ipaddr
    assert client.uboot.get_env("tftpdstp") == "6969"
    assert client.uboot.get_env("autoload") == "no"


def test_static_network() -> None:
    with served_lab(network="static", ipaddr="10.9.8.7", netmask="255.255.0.0", serverip="10.9.0.1") as (_, client):
        client.uboot.reboot_to_console()
        client.uboot.setup_network()
        assert client.uboot.get_env("ipaddr") == "10.9.8.7"
        assert client.uboot.get_env("netmask") == "255.255.0.0"
        assert client.uboot.get_env("serverip") == "10.9.0.1"
        assert client.uboot.get_env("tftpdstp") is None, "port 69 is U-Boot's default, left unset"
        assert client.uboot.get_env("autoload") is None, "no DHCP ran"
        client.uboot.setup_network(serverip="10.9.0.2")
        assert client.uboot.get_env("serverip") == "10.9.0.2", "the call's serverip overrides the configured one"


def test_panic_ends_the_wait_at_once_with_the_tail(lab) -> None:
    _, client = lab
    client.uboot.reboot_to_console()
    client.board.set_faults(panic_on="md5sum")
    with pytest.raises(DriverError, match=r"(?s)step 'md5sum 40000000 10' failed: the board failed: 'Synchronous Abort handler'.*console tail"):
        client.uboot.run_command("md5sum 40000000 10", timeout=60)


def test_panic_while_booting_is_detected(lab) -> None:
    _, client = lab
    client.board.set_faults(panic_on="boot")
    with pytest.raises(DriverError, match=r"step 'interrupt autoboot' failed: the board failed"):
        client.uboot.reboot_to_console()


def test_no_prompt_is_a_bounded_timeout() -> None:
    board = VirtualBoard(autoboot_delay=1)
    uboot = UBoot(boot_timeout=0.5, power_off_time=0, prompt="NEVER> ", autoboot_pattern="NEVER",
                  children={"serial": Proxy(ref="board.serial"), "power": Proxy(ref="board.power")})
    root = Composite(children={"board": board, "uboot": uboot})
    resolve_refs(root)
    try:
        with serve(root) as client, pytest.raises(
            DriverError, match=r"(?s)step 'interrupt autoboot' failed: no 'NEVER'.*within 0.5 s.*U-Boot 2023"
        ):
            client.uboot.reboot_to_console()
    finally:
        root.close()


def test_needs_both_serial_and_power() -> None:
    with pytest.raises(ConfigurationError, match="missing required child 'serial'"):
        UBoot(children={"power": MockPower()})
    with pytest.raises(ConfigurationError, match="'ipaddr' is required"):
        UBoot(network="static")


def test_set_env_quotes_what_the_shell_would_split(lab) -> None:
    _, client = lab
    client.uboot.reboot_to_console()
    client.uboot.set_env("cmd", "echo a; echo $b")
    assert client.uboot.get_env("cmd") == "echo a; echo $b"
    with pytest.raises(DriverInvalidArgument, match="cannot quote"):
        client.uboot.set_env("bad", "it's; here")


def test_board_booting_past_uboot_fails_at_once_not_at_the_timeout() -> None:
    with served_lab(boot_timeout=20.0) as (_, client):
        client.uboot.reboot_to_console()
        client.uboot.run_command("setenv bootdelay 0; setenv bootcmd 'mmc read 40400000 0 8; booti 40400000'; saveenv")
        with pytest.raises(DriverError, match=r"(?s)booted past U-Boot without stopping.*Starting kernel \.\.\."):
            client.uboot.reboot_to_console()
