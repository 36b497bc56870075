"""The Lab works without pytest: a local lab from the virtual lab file, and remote connections."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
import yaml

from jumpstarter_drivers import ConfigurationError, ExporterUnreachable, Session
from jumpstarter_drivers.power import MockPower, PowerClient
from jumpstarter_testing import Lab, eventually
from jumpstarter_testing.lab import VIRTUAL_LAB


def test_local_virtual_lab() -> None:
    with Lab.start_local(VIRTUAL_LAB) as lab:
        assert Path(lab.address).exists()
        assert isinstance(lab.find("power"), PowerClient)
        assert lab.find("power.nothing") is None and lab.find("serial") is not None
        assert lab.status().name == "LEASE_READY"
        report = lab.report()
        assert report.uuid == str(lab.local.uuid)
        top_level = set(yaml.safe_load(Path(VIRTUAL_LAB).read_text())["export"])
        assert {"power", "serial", "board", "flasher"} <= top_level
        assert {"root", "board", "board.power", "board.serial", "flasher"} <= set(lab.node_names.values())
        assert not {"power", "serial", "flasher.power", "flasher.serial"} & set(lab.node_names.values())
        assert set(lab.flashers()) == {"flasher"} and lab.flasher() is lab.find("flasher")
        with lab.connect() as second:
            second.power.on()
        address = lab.address
    assert not Path(address).exists(), "closing a local lab stops its server"


def test_virtual_lab_is_one_board() -> None:
    """The top-level power switches the board, serial is its console; logs name nodes by where they live."""
    with Lab.start_local(VIRTUAL_LAB) as lab:
        client = lab.client
        assert next(client.board.power.read()).current == 0
        with client.serial.pexpect(timeout=10) as console:
            client.power.on()
            console.expect("U-Boot 2023.01")
            assert next(client.board.power.read()).current > 0
            client.power.off()
        assert next(client.board.power.read()).current == 0
        names = lab.node_names
        assert names[str(client.serial.uuid)] == names[str(client.board.serial.uuid)] == "board.serial"
        assert names[str(client.flasher.power.uuid)] == "board.power"
        assert names[str(client.flasher.uuid)] == "flasher"



def test_late_console_client_sees_the_boot() -> None:
    """What the board printed while nobody watched its console reaches the first client (issue 12 item 13);
    closing the lab still releases the console and stops its reader."""
    ttys, threads = _open_ttys(), set(threading.enumerate())
    with Lab.start_local(VIRTUAL_LAB) as lab:
        booted = threading.Event()
        board = lab.local.root_device.children["board"]
        board.board.on_command = lambda line, status: booted.set() if "no bootable device" in line else None
        lab.client.power.on()
        assert booted.wait(30), "the virtual board did not run its boot command within 30 s"
        with lab.client.serial.pexpect(timeout=10) as console:
            console.expect("U-Boot 2023.01")
            console.expect("no bootable device found")
        assert len(_open_ttys()) > len(ttys), "the board's pty is held while the lab runs"
    assert _open_ttys() == ttys, "the board's console was left open"
    assert not [t for t in set(threading.enumerate()) - threads if t.name.startswith("serial-idle")], (
        "the console reader still runs"
    )


def _open_ttys() -> list[str]:
    """The terminals (pty ends) this process holds open."""
    links = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            links.append(os.readlink(f"/proc/self/fd/{fd}"))
        except FileNotFoundError:  # the descriptor listdir itself used
            continue
    return sorted(link for link in links if link.startswith(("/dev/pts/", "/dev/ptmx")))

def test_bad_allow_list_starts_no_driver() -> None:
    fds = len(os.listdir("/proc/self/fd"))
    with pytest.raises(ConfigurationError, match="has an empty entry"):
        Lab.start_local(VIRTUAL_LAB, allow="jumpstarter_drivers.*,")
    assert len(os.listdir("/proc/self/fd")) == fds, "the virtual board's pty was opened and left open"


def test_remote_lab_and_unreachable(tmp_path: Path) -> None:
    with Session(root_device=MockPower()) as session, session.serve_unix() as path, Lab.connect_remote(str(path)) as lab:
            assert lab.local is None
            lab.client.on()
            assert "remote" in repr(lab)
    with pytest.raises(ExporterUnreachable, match="no exporter socket"):
        Lab.connect_remote(str(tmp_path / "none.sock"))


def test_eventually_retries_only_the_given_exceptions() -> None:
    calls = []

    def flaky() -> int:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionError("not yet")
        return len(calls)

    assert eventually(flaky, interval=0, exceptions=ConnectionError) == 3

    def never() -> None:
        raise AssertionError("still off")

    with pytest.raises(AssertionError, match="still off"):
        eventually(never, timeout=0.05, interval=0.01)
    calls.clear()
    with pytest.raises(ConnectionError, match="not yet"):
        eventually(flaky)  # ConnectionError is not retried by default
    assert len(calls) == 1
