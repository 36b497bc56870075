"""A console session over the board's serial port, with pexpect.

The virtual lab's board prints a U-Boot banner and counts down to autoboot when powered on; a
key stops the countdown at U-Boot's ``=>`` prompt. Everything the console receives is written
to the test's log (``--jumpstarter-log-dir``) and shown when the test fails.
"""

import pytest


@pytest.mark.jumpstarter_requires("power", "serial")
def test_uboot_prompt(client):
    """Open the console first, then power on: nothing the board prints is missed."""
    with client.serial.pexpect(timeout=10, encoding="utf-8") as console:
        client.power.cycle(wait=0.1)
        console.expect("Hit any key to stop autoboot")
        console.sendline("")
        console.expect_exact("=> ")
        console.sendline("echo hello board")
        console.expect("\nhello board")
        console.expect_exact("=> ")


@pytest.mark.jumpstarter_requires("power", "serial")
def test_power_cycle_restarts_the_board(client):
    client.power.off()
    with client.serial.pexpect(timeout=10, encoding="utf-8") as console:
        client.power.on()
        console.expect("U-Boot 2023.01")
        client.power.cycle(wait=0.1)
        console.expect("U-Boot 2023.01")
