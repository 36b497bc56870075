"""`jumpstarter flasher uboot console`: the board is stopped at U-Boot and this terminal attached to it."""

from __future__ import annotations

import os
import subprocess
import sys

import pexpect

from jumpstarter_drivers.cli.process import ServeProcess


def test_uboot_console_attaches_the_terminal_at_the_prompt(virtual_lab: ServeProcess) -> None:
    console = pexpect.spawn(
        sys.executable, ["-m", "jumpstarter_drivers.cli", "flasher", "uboot", "console"],
        env={**os.environ, "JUMPSTARTER_HOST": virtual_lab.address}, timeout=60,
    )
    try:
        console.expect_exact("Ctrl-] leaves")
        console.send("printenv bootcmd\r")  # raw mode: keys go to U-Boot as typed
        console.expect_exact("bootcmd=")
        console.expect_exact("=> ")
        console.send("\x1d")
        console.expect_exact("disconnected")
        console.expect(pexpect.EOF)
    finally:
        console.close(force=True)
    assert console.exitstatus == 0


def test_uboot_console_without_a_terminal_says_why_before_rebooting(virtual_lab: ServeProcess) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "jumpstarter_drivers.cli", "flasher", "uboot", "console"],
        env={**os.environ, "JUMPSTARTER_HOST": virtual_lab.address}, input="", capture_output=True, text=True,
        timeout=60, check=False,
    )
    assert result.returncode == 2
    assert "console needs a terminal on stdin" in result.stderr
