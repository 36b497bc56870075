"""The shell client on the virtual board's Linux: log in, run commands with their status, move files."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from jumpstarter_drivers.composite.driver import Composite, Proxy, resolve_refs
from jumpstarter_drivers.core.access import serve
from jumpstarter_drivers.core.errors import DriverError
from jumpstarter_drivers.shell import Shell, ShellCommandFailed
from jumpstarter_drivers.uboot import UBoot
from jumpstarter_drivers.virtualboard import VirtualBoard
from jumpstarter_testing import eventually


def served(password: str = "password") -> Iterator:
    """A virtual board booted into Linux (at its login prompt), with a Shell on its console."""
    board = VirtualBoard(autoboot_delay=1, disk_size=1 << 20)
    refs = {"serial": Proxy(ref="board.serial"), "power": Proxy(ref="board.power")}
    root = Composite(children={
        "board": board,
        "uboot": UBoot(boot_timeout=10.0, power_off_time=0.0, children=dict(refs)),
        "shell": Shell(password=password, login_timeout=10.0, children={"serial": Proxy(ref="board.serial")}),
    })
    resolve_refs(root)
    try:
        with serve(root) as client:
            client.uboot.reboot_to_console()
            with client.board.serial.pexpect(timeout=10) as console:
                console.sendline("mmc read 40400000 0 8; booti 40400000")
                console.expect("login: ")
            yield board, client
    finally:
        root.close()


@pytest.fixture
def linux() -> Iterator:
    yield from served()


def test_login_run_with_status_and_output(linux) -> None:
    _, client = linux
    shell = client.shell
    shell.login()
    result = shell.run("echo hello board")
    assert (result.status, result.output, result.ok) == (0, "hello board\n", True)
    assert shell.run("false").status == 1
    missing = shell.run("nosuchcommand --flag")
    assert missing.status == 127 and "nosuchcommand: not found" in missing.output
    assert shell.run_check("uname -a").startswith("Linux virtualboard ")
    with pytest.raises(ShellCommandFailed) as failed:
        shell.run_check("cat /etc/nothing")
    assert failed.value.status == 1
    assert "can't open '/etc/nothing'" in str(failed.value) and "status 1" in str(failed.value)


def test_kernel_messages_on_the_console_stay_out_of_the_output(linux) -> None:
    _, client = linux
    client.board.set_faults(kernel_message="virtio_net virtio1 eth0: link becomes ready")
    assert client.shell.run_check("echo clean") == "clean\n"


def test_put_and_get_a_binary_file_in_chunks(linux) -> None:
    _, client = linux
    data = os.urandom(7000) + bytes(range(256))  # several console lines of base64
    client.shell.put(data, "/tmp/blob.bin")
    assert client.shell.get("/tmp/blob.bin") == data
    assert client.shell.run_check("wc -c /tmp/blob.bin").split()[0] == str(len(data))
    assert client.shell.get("/tmp/blob.bin") == data


def test_get_of_a_missing_file_names_it(linux) -> None:
    _, client = linux
    with pytest.raises(DriverError, match="can't open '/tmp/none'"):
        client.shell.get("/tmp/none")


def test_wrong_password_is_reported_at_once() -> None:
    for _, client in served(password="wrong"):
        with pytest.raises(DriverError, match="refused the login of 'root'"):
            client.shell.login()


def test_run_refuses_several_lines(linux) -> None:
    _, client = linux
    with pytest.raises(DriverError, match="one command line at a time"):
        client.shell.run("echo a\necho b")



def test_old_output_in_the_console_history_is_not_taken_for_a_prompt(linux) -> None:
    """The board's console keeps what it printed for a late client; the shell reads only what comes
    after it connects, so an old ``Password:`` on the console does not pass for a login under way."""
    board, client = linux
    client.shell.login()
    os.write(board._slave, b"echo Password:\r")  # typed with no client connected; the board answers
    held = board.children["serial"]
    eventually(lambda: _assert_in(b"Password:\n# ", bytes(held._idle._kept)), timeout=10)
    assert client.shell.run("echo still logged in").output == "still logged in\n"


def _assert_in(part: bytes, whole: bytes) -> None:
    assert part in whole, whole
