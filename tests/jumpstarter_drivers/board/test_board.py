"""PtyBoard: what every self-powered board gets, and what it releases."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from jumpstarter_drivers import ConfigurationError, serve
from jumpstarter_drivers.board import PtyBoard
from jumpstarter_drivers.power import MockPower


@dataclass(kw_only=True)
class EchoBoard(PtyBoard):
    """A board that is 'on' while a flag says so, and refuses when told to."""

    refuse: bool = False

    def check(self) -> None:
        if self.refuse:
            raise ConfigurationError("EchoBoard: refused")

    @property
    def powered(self) -> bool:
        return getattr(self, "_on", False)

    def power_on(self) -> None:
        self.flush_console()
        self._on = True

    def power_off(self) -> None:
        self._on = False


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def test_children_disk_and_power():
    board = EchoBoard(disk_size=4096)
    try:
        assert Path(board.disk).stat().st_size == 4096
        assert board.children["serial"].url == board.slave_path
        with serve(board) as client:
            client.power.on()
            assert [r.current for r in client.power.read()] == [1.0]
            client.power.off()
            assert [r.current for r in client.power.read()] == [0.0]
            assert client.call("disk_sha256") == __import__("hashlib").sha256(b"\0" * 4096).hexdigest()
    finally:
        board.close()


def test_refusals_leave_nothing_open():
    before = open_fds()
    with pytest.raises(ConfigurationError, match="EchoBoard: refused"):
        EchoBoard(refuse=True)
    with pytest.raises(ConfigurationError, match="give it no children"):
        EchoBoard(children={"power": MockPower()})
    with pytest.raises(ConfigurationError, match="positive multiple of 512"):
        EchoBoard(disk_size=1000)
    assert open_fds() == before


def test_close_releases_the_pty_and_the_temporary_disk():
    before = open_fds()
    board = EchoBoard()
    disk = Path(board.disk)
    assert open_fds() != before
    board.close()
    assert open_fds() == before
    assert not disk.exists()
