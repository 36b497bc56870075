"""The virtual board: a U-Boot-like console on a real pseudo-terminal, power, and a disk file.

Its ``serial`` child is a :class:`~jumpstarter_drivers.pyserial.driver.PySerial` on the
pty's slave end, and its ``power`` child starts and stops the board's simulator thread, so a
flasher drives it exactly as it drives a board on a USB serial adapter and a power strip.
"""

from __future__ import annotations

import os
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ..board.driver import PtyBoard
from ..core.driver import export
from ..core.errors import DriverError
from ..flashers.driver import BaseFlasher
from ..flashers.testing import make_reference_bundle
from ..power.driver import BoardPower
from ..uboot.driver import UBoot
from .simulator import BlockDevice, Faults, PoweredOff, Uart, VirtualUBoot

#: How long power-off waits for the board's thread to notice.
STOP_TIMEOUT = 10.0


@dataclass(kw_only=True)
class VirtualBoardPower(BoardPower):
    """The virtual board's power switch: on starts its simulator, off stops it."""

    current_when_on = 0.4


@dataclass(kw_only=True)
class VirtualBoard(PtyBoard):
    """A board in pure Python that behaves like U-Boot on its serial console.

    ``disk`` is the backing file of its block device (a temporary file when not given),
    ``block_interface`` the U-Boot command that reaches it (``mmc`` or ``virtio``). DHCP hands
    out ``ipaddr`` and ``serverip``; Linux accepts ``username``/``password``.
    """

    power_class = VirtualBoardPower

    block_interface: Literal["mmc", "virtio"] = "mmc"
    #: Seconds of the autoboot countdown (U-Boot's ``bootdelay`` in the default environment; a saved
    #: ``bootdelay`` wins). 0 boots at once without a chance to stop it; a negative value stops at the prompt.
    autoboot_delay: int = 2
    ipaddr: str = "127.0.0.1"
    serverip: str = "127.0.0.1"
    username: str = "root"
    password: str = "password"

    _thread: threading.Thread | None = field(default=None, init=False, repr=False)
    _stop: threading.Event = field(default_factory=threading.Event, init=False, repr=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        self.board = VirtualUBoot(
            disk=BlockDevice(Path(self.disk), self.disk_size),
            block_interface=self.block_interface,
            autoboot_delay=self.autoboot_delay,
            ipaddr=self.ipaddr,
            dhcp_serverip=self.serverip,
            username=self.username,
            password=self.password,
        )

    @classmethod
    def client(cls) -> str:
        return "jumpstarter_drivers.virtualboard.client.VirtualBoardClient"

    @property
    def faults(self) -> Faults:
        """Failures the board will show (for tests)."""
        return self.board.faults

    @property
    def powered(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def power_on(self) -> None:
        """Start the board (a no-op when it runs)."""
        if self.powered:
            return
        self.flush_console()
        self._stop = threading.Event()
        uart = Uart(self.master, self._stop, self._wake_r)
        self._thread = threading.Thread(target=self._run, args=(uart,), name="virtualboard", daemon=True)
        self._thread.start()

    def _run(self, uart: Uart) -> None:
        try:
            self.board.run(uart)
        except PoweredOff:
            self.logger.debug("virtual board powered off")
        except Exception:
            self.logger.exception("virtual board crashed")

    def power_off(self) -> None:
        """Stop the board; waits for its thread (``DriverError`` if it does not stop within ``STOP_TIMEOUT``)."""
        thread = self._thread
        if thread is None:
            return
        self._stop.set()
        os.write(self._wake_w, b"x")
        thread.join(STOP_TIMEOUT)
        if thread.is_alive():  # still counts as powered: a second board must not start on the same pty
            raise DriverError(
                f"the virtual board did not stop within {STOP_TIMEOUT} s of power off (stuck in a network "
                "transfer?); switch it off again"
            )
        try:
            while os.read(self._wake_r, 64):
                continue
        except BlockingIOError:
            self.logger.debug("wake-up pipe drained")
        self._thread = None

    @export
    def set_faults(self, panic_on: str | None = None, tftp_timeout_once: bool = False,
                   hang_boot_once: bool = False, kernel_message: str | None = None) -> None:
        """Make the board panic at a command (``tftpboot``, ``booti``, ``boot``, ``linux``, ...), time
        out its next TFTP transfer once, hang once after the banner at the next power-on, or have
        Linux print ``kernel_message`` in the middle of every command."""
        self.board.faults.panic_on = panic_on
        self.board.faults.tftp_timeout_once = tftp_timeout_once
        self.board.faults.hang_boot_once = hang_boot_once
        self.board.faults.kernel_message = kernel_message

    def close_fds(self) -> tuple[int, ...]:
        return (*super().close_fds(), self._wake_r, self._wake_w)




@dataclass(kw_only=True)
class VirtualFlasher(BaseFlasher):
    """The flasher of the virtual board: the reference test bundle unless another is given, and
    target ``usd`` written with ``mmc 0``. Its children ``serial`` and ``power`` are the board's."""

    flasher_bundle: str = ""
    uboot_targets: dict[str, str] = field(default_factory=lambda: {"usd": "mmc 0"})

    def __post_init__(self) -> None:
        if not self.flasher_bundle:
            bundle = tempfile.TemporaryDirectory(prefix="virtual-bundle-")
            self._temp_dirs.append(bundle)
            self.flasher_bundle = str(make_reference_bundle(bundle.name))
        self.children.setdefault("uboot", UBoot(power_off_time=0.1))
        super().__post_init__()
