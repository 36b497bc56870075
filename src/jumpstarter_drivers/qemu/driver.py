"""A QEMU board: ``qemu-system-aarch64`` running Debian's U-Boot, its serial on a pseudo-terminal.

Power on starts the QEMU process, power off kills it. QEMU's serial port is its stdio, connected
to the master end of a pty the board keeps for its whole life, so the ``serial`` child (a
:class:`~jumpstarter_drivers.pyserial.driver.PySerial` on the slave end) stays open across power
cycles exactly as a USB serial adapter does. The disk is a raw file on ``virtio-blk-device``.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ..board.driver import PtyBoard
from ..core.errors import ConfigurationError, DriverError
from ..core.processes import stop_process
from ..power.driver import BoardPower

DEFAULT_BIOS = "/usr/lib/u-boot/qemu_arm64/u-boot.bin"
#: How long power-off waits for QEMU to exit after SIGTERM, then after SIGKILL.
STOP_TIMEOUT = 5.0


@dataclass(kw_only=True)
class QemuPower(BoardPower):
    """The QEMU board's power: on starts the process, off ends it."""

    current_when_on = 1.0


@dataclass(kw_only=True)
class QemuBoard(PtyBoard):
    """An arm64 ``virt`` machine booting ``bios`` (U-Boot), with a raw ``disk`` file.

    ``network`` is ``user`` (QEMU's own NAT, which answers TFTP on 10.0.2.2 itself), ``tap``
    (the tap device ``tap``; give it an address and run the TFTP server there) or ``none``.
    The disk file is created (sparse, ``disk_size`` bytes) when missing.
    """

    power_class = QemuPower

    #: The QEMU executable: a name looked up on ``PATH`` or a path (Debian package qemu-system-arm).
    qemu: str = "qemu-system-aarch64"
    bios: str = DEFAULT_BIOS
    #: QEMU's machine type (``-M``).
    machine: str = "virt"
    #: QEMU's CPU model (``-cpu``); it must run the ``bios`` given.
    cpu: str = "cortex-a57"
    #: The guest's RAM in MiB (``-m``).
    memory_mb: int = 1024
    network: Literal["user", "tap", "none"] = "user"
    tap: str = "tap0"
    #: Further QEMU arguments, one list item each, appended to the command line as they are.
    extra_args: list[str] = field(default_factory=list)

    _process: subprocess.Popen | None = field(default=None, init=False, repr=False)

    def check(self) -> None:
        if shutil.which(self.qemu) is None:
            raise ConfigurationError(f"QemuBoard: {self.qemu!r} is not installed (Debian package qemu-system-arm)")
        if not Path(self.bios).is_file():
            raise ConfigurationError(f"QemuBoard: config field 'bios': {self.bios} does not exist (Debian package u-boot-qemu)")

    @classmethod
    def client(cls) -> str:
        return "jumpstarter_drivers.qemu.client.QemuBoardClient"

    def command(self) -> list[str]:
        """The QEMU command line."""
        args = [
            self.qemu, "-M", self.machine, "-cpu", self.cpu, "-m", str(self.memory_mb), "-nodefaults",
            "-display", "none", "-monitor", "none", "-bios", self.bios,
            "-chardev", "stdio,id=console,signal=off", "-serial", "chardev:console",
            "-drive", f"if=none,file={self.disk},format=raw,id=disk0", "-device", "virtio-blk-device,drive=disk0",
        ]
        if self.network == "user":
            args += ["-netdev", "user,id=net0", "-device", "virtio-net-device,netdev=net0"]
        elif self.network == "tap":
            args += ["-netdev", f"tap,id=net0,ifname={self.tap},script=no,downscript=no",
                     "-device", "virtio-net-device,netdev=net0"]
        return args + self.extra_args

    @property
    def powered(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def power_on(self) -> None:
        """Start QEMU (a no-op while it runs)."""
        if self.powered:
            return
        self.flush_console()
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 - QEMU writes it while running; closed at power off
        try:
            self._process = subprocess.Popen(
                self.command(), stdin=self.master, stdout=self.master, stderr=self._log, start_new_session=True
            )
        except BaseException:
            self._log.close()
            raise
        self.logger.info("QEMU started (pid %d)", self._process.pid)

    def power_off(self) -> None:
        """Stop QEMU: SIGTERM, then SIGKILL if it lingers."""
        process, self._process = self._process, None
        if process is None:
            return
        try:
            stop_process(process, STOP_TIMEOUT, "QEMU")
            self._log.seek(0)
            errors = self._log.read().decode(errors="replace").strip()
        finally:
            self._log.close()
        stopped_by_us = (0, -signal.SIGTERM, -signal.SIGKILL)
        if process.returncode not in stopped_by_us and "terminating on signal" not in errors:
            raise DriverError(f"QEMU exited with status {process.returncode}: {errors[-2000:] or 'nothing on its stderr'}")
        self.logger.info("QEMU stopped")
