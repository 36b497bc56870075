"""The base of boards the exporter runs itself: a pty console, a disk file and a power switch.

The board keeps a pseudo-terminal for its whole life. Its ``serial`` child is a
:class:`~jumpstarter_drivers.pyserial.driver.PySerial` on the slave end, which stays open across
power cycles as a USB serial adapter does, and keeps the last :data:`CONSOLE_HISTORY` bytes the
board printed while no client was connected for the next one. Its ``power`` child is a
:class:`~jumpstarter_drivers.power.driver.BoardPower` that calls the board's own
``power_on()``/``power_off()``. The disk is a file, temporary when none is given.
"""

from __future__ import annotations

import os
import tempfile
import tty
from abc import abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from ..core.driver import Driver, export
from ..core.errors import ConfigurationError
from ..flashers.common import sha256_file
from ..power.driver import BoardPower
from ..pyserial.driver import PySerial


#: Bytes of console output a board keeps while no client is connected, so a late client sees the boot
#: (U-Boot and the shell driver read only what comes after they connect).
CONSOLE_HISTORY = 64 << 10


@dataclass(kw_only=True)
class PtyBoard(Driver):
    """A board with its console on a pty, a ``disk`` file of ``disk_size`` bytes, and its own power.

    Subclasses name their ``power_class``, implement :meth:`power_on`, :meth:`power_off` and
    :attr:`powered`, and may check their configuration in :meth:`check` (it runs before the pty
    and the disk exist, so a refused configuration leaves nothing open).
    """

    power_class: ClassVar[type[BoardPower]] = BoardPower

    disk: str | None = None
    disk_size: int = 256 << 20

    def __post_init__(self) -> None:
        super().__post_init__()
        name = type(self).__name__
        if self.children:
            raise ConfigurationError(
                f"{name}: makes its own children 'serial' and 'power'; give it no children "
                f"(got {', '.join(self.children)})"
            )
        if self.disk_size <= 0 or self.disk_size % 512:
            raise ConfigurationError(
                f"{name}: config field 'disk_size' must be a positive multiple of 512, got {self.disk_size}"
            )
        self.check()
        self._own_dir = None
        if self.disk is None:
            self._own_dir = tempfile.TemporaryDirectory(prefix=f"{name.lower()}-")
            self.disk = str(Path(self._own_dir.name) / "disk.img")
        disk = Path(self.disk)
        disk.parent.mkdir(parents=True, exist_ok=True)
        with disk.open("ab") as f:
            if f.tell() < self.disk_size:
                f.truncate(self.disk_size)  # sparse
        self.master, self._slave = os.openpty()
        tty.setraw(self._slave)  # master and slave share one termios: raw both ways
        os.set_blocking(self.master, False)
        self.slave_path = os.ttyname(self._slave)
        self.children["serial"] = PySerial(url=self.slave_path, buffer_size=CONSOLE_HISTORY)
        power = self.power_class()
        power.board = self
        self.children["power"] = power

    def check(self) -> None:
        """Refuse a configuration the board cannot run with (``ConfigurationError``)."""

    @property
    @abstractmethod
    def powered(self) -> bool:
        """Whether the board runs."""

    @abstractmethod
    def power_on(self) -> None:
        """Start the board (a no-op when it runs)."""

    @abstractmethod
    def power_off(self) -> None:
        """Stop the board (a no-op when it is off)."""

    def flush_console(self) -> None:
        """Drop what was typed while the board was off: a powered-off UART loses it."""
        try:
            while os.read(self.master, 65536):
                continue
        except OSError:  # BlockingIOError once drained, EIO while the slave end is not open
            return

    @export
    def disk_sha256(self, length: int = -1) -> str:
        """SHA-256 of the first ``length`` bytes of the disk file (all of it when negative)."""
        return sha256_file(self.disk, int(length))

    def close_fds(self) -> tuple[int, ...]:
        """The descriptors :meth:`close` closes; subclasses add their own."""
        return (self.master, self._slave)

    def close(self) -> None:
        """Power off, close the children, the pty and any other descriptors, remove a temporary disk."""
        try:
            self.power_off()
        finally:
            super().close()
            for fd in self.close_fds():
                try:
                    os.close(fd)
                except OSError:
                    continue
            if self._own_dir is not None:
                self._own_dir.cleanup()
