"""A console session over the board's serial port, with pexpect.

The virtual lab's serial port is a loopback (what is sent comes back); on a real board you
would expect a boot banner and a login prompt instead. Everything the console receives is
written to the test's log (``--jumpstarter-log-dir``) and shown when the test fails.
"""

import pytest


@pytest.mark.jumpstarter_requires("serial")
def test_console_echo(client):
    with client.serial.pexpect(timeout=10, encoding="utf-8") as console:
        console.sendline("hello board")
        console.expect("hello board")


@pytest.mark.jumpstarter_requires("power", "serial")
def test_power_on_then_talk(client):
    client.power.on()
    with client.serial.pexpect(timeout=10, encoding="utf-8") as console:
        console.sendline("uname")
        console.expect("uname")
