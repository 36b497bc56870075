"""Driver commands from the client side: `jumpstarter power on`, `serial pipe`, `report`, help and errors."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from jumpstarter_drivers.cli.families import PIPE_LINGER
from jumpstarter_drivers.cli.process import ServeProcess

from .conftest import PASSPHRASE

FIRST = "voltage=0.0 V  current=0.0 A  apparent_power=0.0 VA"
SECOND = "voltage=5.0 V  current=2.0 A  apparent_power=10.0 VA"


@pytest.fixture(scope="module")
def lab(lab_file: Path) -> Iterator[ServeProcess]:
    with ServeProcess(lab_file) as served:
        yield served


@pytest.fixture
def inside(lab: ServeProcess, jumpstarter):
    """Run ``jumpstarter ARGS...`` with JUMPSTARTER_HOST pointing at the lab."""

    def run(*args: str, **kwargs):
        env = {"JUMPSTARTER_HOST": lab.address, "JMP_DRIVERS_ALLOW": None} | kwargs.pop("env", {})
        return jumpstarter(*args, env=env, **kwargs)

    return run


def wait_for_log(lab: ServeProcess, text: str, count: int = 1, timeout: float = 10) -> str:
    """Wait until the exporter logged ``text`` ``count`` times in all."""
    deadline = time.monotonic() + timeout
    while (log := lab.log()).count(text) < count:
        if time.monotonic() > deadline:
            raise AssertionError(f"{text!r} not logged {count} times within {timeout} s:\n{log}")
        time.sleep(0.05)  # polling a file the exporter writes, with a deadline
    return log


def test_power_on_off_cycle(inside, lab: ServeProcess) -> None:
    on, off = "driver.MockPower: power on", "driver.MockPower: power off"  # not the board's SyncMockPower
    log = lab.log()
    ons, offs = log.count(on), log.count(off)  # the lab is shared with the module's other tests
    assert inside("power", "on").returncode == 0
    wait_for_log(lab, on, ons + 1)
    assert inside("power", "off").returncode == 0
    wait_for_log(lab, off, offs + 1)
    result = inside("power", "cycle", "--wait", "0")
    assert result.returncode == 0, result.stderr
    wait_for_log(lab, off, offs + 2)
    wait_for_log(lab, on, ons + 2)


def test_power_read(inside) -> None:
    result = inside("power", "read", "-n", "3")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [FIRST, SECOND]
    one = inside("power", "read", "--count", "1")
    assert one.stdout.splitlines() == [FIRST]
    every = inside("power", "read")
    assert every.stdout.splitlines() == [FIRST, SECOND]


def test_nested_nodes_by_child_names(inside, lab: ServeProcess) -> None:
    on = "driver.SyncMockPower: power on"
    before = lab.log().count(on)
    result = inside("board", "power", "read", "-n", "3")
    assert result.stdout.splitlines() == [FIRST, SECOND]
    assert inside("board", "power", "on").returncode == 0
    wait_for_log(lab, on, before + 1)


def test_host_option_instead_of_the_environment(jumpstarter, lab: ServeProcess) -> None:
    result = jumpstarter("--host", lab.address, "power", "read", "-n", "1", env={"JUMPSTARTER_HOST": None})
    assert result.stdout.splitlines() == [FIRST]


def test_serial_pipe(inside) -> None:
    result = inside("serial", "pipe", "--linger", "0.5", input="hello\nworld\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "hello\nworld\n"


def test_serial_console_needs_a_terminal(inside) -> None:
    result = inside("serial", "console", input="")
    assert result.returncode == 2
    assert "use `jumpstarter serial pipe`" in result.stderr


def test_report(inside) -> None:
    result = inside("report")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "root (jumpstarter_drivers.composite.client.CompositeClient)"
    assert "  power (jumpstarter_drivers.power.client.PowerClient): bench supply" in lines
    assert "      on() -> None: Power on." in lines
    assert "  serial (jumpstarter_drivers.pyserial.client.PySerialClient)" in lines
    assert "  board (jumpstarter_drivers.composite.client.CompositeClient): the board on the desk" in lines
    assert "    power (jumpstarter_drivers.power.client.PowerClient)" in lines
    assert lines.index("    power (jumpstarter_drivers.power.client.PowerClient)") > lines.index(
        "  board (jumpstarter_drivers.composite.client.CompositeClient): the board on the desk"
    )


@pytest.mark.parametrize(
    "args",
    [
        [], ["serve"], ["shell"], ["report"], ["tls-cert"], ["power"], ["power", "read"], ["power", "cycle"],
        ["serial"], ["serial", "pipe"], ["board"], ["board", "power", "on"],
    ],
)
def test_help_everywhere(inside, args: list[str]) -> None:
    result = inside(*args, "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Usage: jumpstarter")
    first_paragraph = result.stdout.split("\n\n")[1].strip()
    assert first_paragraph, "every command says what it does"


def test_top_level_help_lists_the_labs_commands(inside, jumpstarter) -> None:
    with_lab = inside("--help").stdout
    assert "Lab commands:" in with_lab
    assert "power" in with_lab.split("Lab commands:")[1]
    without_lab = jumpstarter("--help", env={"JUMPSTARTER_HOST": None}).stdout
    assert "Lab commands:" not in without_lab
    assert "serve" in without_lab


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["power", "read", "-n", "x"], "'x' is not a valid integer"),
        (["power", "read", "-n", "0"], "0 is not in the range x>=1"),
        (["power", "cycle", "--wait", "-1"], "-1.0 is not in the range x>=0"),
        (["power", "dance"], "No such command 'dance'"),
        (["toaster"], "No such command 'toaster'"),
        (["power", "on", "extra"], "Got unexpected extra argument (extra)"),
        (["serve"], "Missing argument 'EXPORTER.yaml'"),
        (["--nope"], "No such option '--nope'"),
    ],
)
def test_bad_arguments_are_usage_errors(inside, args: list[str], expected: str) -> None:
    result = inside(*args)
    assert result.returncode == 2
    assert "Usage: jumpstarter" in result.stderr
    assert expected in result.stderr
    assert "Traceback" not in result.stderr


def test_driver_command_without_a_lab(jumpstarter) -> None:
    result = jumpstarter("power", "on", env={"JUMPSTARTER_HOST": None})
    assert result.returncode == 2
    assert "no lab to talk to" in result.stderr


def test_unreachable_lab_is_one_line(jumpstarter, tmp_path: Path) -> None:
    result = jumpstarter("power", "on", env={"JUMPSTARTER_HOST": str(tmp_path / "gone.sock")})
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1
    assert "no exporter socket" in result.stderr


def test_clients_not_allowed_are_not_imported(inside) -> None:
    result = inside("power", "on", env={"JMP_DRIVERS_ALLOW": "somebody_else.*"})
    assert result.returncode == 2
    assert "No such command 'on'" in result.stderr
    help_text = inside("--help", env={"JMP_DRIVERS_ALLOW": "somebody_else.*"}).stdout
    assert "unavailable" in help_text


def test_driver_commands_over_tls_with_passphrase(
    jumpstarter, lab_file: Path, tls_files: tuple[Path, Path], passphrase_file: Path
) -> None:
    cert, key = tls_files
    options = ["--listen", "127.0.0.1:0", "--tls-cert", str(cert), "--tls-key", str(key),
               "--passphrase-file", str(passphrase_file)]
    clean = {"JUMPSTARTER_HOST": None, "JMP_GRPC_PASSPHRASE": None, "JMP_GRPC_CA": None}
    with ServeProcess(lab_file, *options) as lab:
        result = jumpstarter(
            "--host", lab.address, "--ca", str(cert), "--passphrase-file", str(passphrase_file),
            "power", "read", "-n", "3", env=clean,
        )
        assert result.stdout.splitlines() == [FIRST, SECOND], result.stderr
        by_env = jumpstarter(
            "power", "read", "-n", "1",
            env={"JUMPSTARTER_HOST": lab.address, "JMP_GRPC_CA": str(cert), "JMP_GRPC_PASSPHRASE": PASSPHRASE},
        )
        assert by_env.stdout.splitlines() == [FIRST], by_env.stderr
        refused = jumpstarter("--host", lab.address, "--ca", str(cert), "power", "on", env=clean)
        assert refused.returncode == 1
        assert len(refused.stderr.strip().splitlines()) == 1
        assert "missing passphrase" in refused.stderr


def test_serial_console_on_a_terminal(lab: ServeProcess) -> None:
    import pexpect

    console = pexpect.spawn(
        sys.executable, ["-m", "jumpstarter_drivers.cli", "serial", "console"],
        env={**os.environ, "JUMPSTARTER_HOST": lab.address}, timeout=20,
    )
    try:
        console.expect_exact("Ctrl-] leaves")
        console.send("typed in raw mode")  # no newline: raw mode sends keys as typed
        console.expect_exact("typed in raw mode")  # loop:// echoes it back
        console.send("\x1d")
        console.expect_exact("disconnected")
        console.expect(pexpect.EOF)
    finally:
        console.close(force=True)
    assert console.exitstatus == 0


def test_report_into_a_closed_pipe_ends_quietly(lab: ServeProcess) -> None:
    """`jumpstarter report | head -1`: the reader left; no 'Broken pipe' error, the status of SIGPIPE."""
    import signal
    import subprocess

    reader, writer = os.pipe()
    os.close(reader)  # the reader is gone before the first line is written
    try:
        result = subprocess.run(
            [sys.executable, "-m", "jumpstarter_drivers.cli", "report"],
            stdout=writer, stderr=subprocess.PIPE, text=True, timeout=60, check=False,
            env={**os.environ, "JUMPSTARTER_HOST": lab.address},
        )
    finally:
        os.close(writer)
    assert result.stderr == ""
    assert result.returncode == 128 + signal.SIGPIPE


def test_serial_pipe_ends_after_stdin_without_linger_option(inside) -> None:
    result = inside("serial", "pipe", input="hello\n", timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "hello\n", "what the console answered after stdin ended still comes out"


def test_serial_pipe_follow_keeps_running_after_stdin(lab: ServeProcess) -> None:
    import subprocess

    with subprocess.Popen(
        [sys.executable, "-m", "jumpstarter_drivers.cli", "serial", "pipe", "--follow"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env={**os.environ, "JUMPSTARTER_HOST": lab.address},
    ) as follow:
        try:
            with pytest.raises(subprocess.TimeoutExpired):
                follow.wait(PIPE_LINGER + 3)  # well past the default linger
        finally:
            follow.kill()
