"""The QEMU board's client (power and serial are its children)."""

from __future__ import annotations

from ..core.client import DriverClient


class QemuBoardClient(DriverClient):
    """Client of a :class:`~jumpstarter_drivers.qemu.driver.QemuBoard`."""

    def disk_sha256(self, length: int = -1) -> str:
        """SHA-256 of the first ``length`` bytes of the board's disk file (all of it when negative)."""
        return self.call("disk_sha256", length)
