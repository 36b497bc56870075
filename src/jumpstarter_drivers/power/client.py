"""Power clients: what a test calls to switch and read a board's power."""

from __future__ import annotations

import time
from collections.abc import Iterator

from ..core.client import DriverClient
from ..core.codec import restore
from .common import PowerReading


class PowerClient(DriverClient):
    """Client of a :class:`~jumpstarter_drivers.power.driver.PowerInterface` driver."""

    def on(self) -> None:
        """Power on."""
        self.call("on")

    def off(self) -> None:
        """Power off."""
        self.call("off")

    def cycle(self, wait: float = 2) -> None:
        """Power off, wait ``wait`` seconds, power on."""
        self.off()
        time.sleep(wait)
        self.on()

    def read(self) -> Iterator[PowerReading]:
        """Readings as they come from the device."""
        for item in self.streamingcall("read"):
            yield restore(item, PowerReading)


class VirtualPowerClient(PowerClient):
    """Client of a :class:`~jumpstarter_drivers.power.driver.VirtualPowerInterface` driver."""

    def off(self, destroy: bool = False) -> None:
        """Power off; with ``destroy`` also discard the machine's state."""
        self.call("off", destroy)
