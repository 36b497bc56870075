"""The virtual board's client: its disk and fault injection (power and serial are children)."""

from __future__ import annotations

from ..core.client import DriverClient


class VirtualBoardClient(DriverClient):
    """Client of a :class:`~jumpstarter_drivers.virtualboard.driver.VirtualBoard`."""

    def disk_sha256(self, length: int = -1) -> str:
        """SHA-256 of the first ``length`` bytes of the board's disk (all of it when negative)."""
        return self.call("disk_sha256", length)

    def set_faults(self, panic_on: str | None = None, tftp_timeout_once: bool = False,
                   hang_boot_once: bool = False, kernel_message: str | None = None) -> None:
        """Make the board panic at a command, time out its next TFTP transfer once, hang once at boot,
        or print a kernel message in the middle of every Linux command."""
        self.call("set_faults", panic_on, tftp_timeout_once, hang_boot_once, kernel_message)
