"""Power drivers: the interface every power switch implements, and mock supplies for tests."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import AsyncGenerator, Generator
from dataclasses import dataclass

from ..core.driver import Driver, export
from .common import PowerReading


@dataclass(kw_only=True)
class PowerInterface(Driver):
    """Switches a board's power and, where the device can, measures it."""

    @classmethod
    def client(cls) -> str:
        return "jumpstarter_drivers.power.client.PowerClient"

    @abstractmethod
    @export
    def on(self) -> None:
        """Power on."""

    @abstractmethod
    @export
    def off(self) -> None:
        """Power off."""

    @abstractmethod
    @export
    def read(self) -> Generator[PowerReading, None, None]:
        """Stream power readings (voltage and current)."""


@dataclass(kw_only=True)
class VirtualPowerInterface(PowerInterface):
    """Power of a virtual machine: switching off may also destroy it."""

    @classmethod
    def client(cls) -> str:
        return "jumpstarter_drivers.power.client.VirtualPowerClient"

    @abstractmethod
    @export
    def off(self, destroy: bool = False) -> None:
        """Power off; with ``destroy`` also discard the machine's state."""


@dataclass(kw_only=True)
class MockPower(PowerInterface):
    """A pretend power supply with async methods: logs its switching, reads (0, 0) then (5 V, 2 A)."""

    @export
    async def on(self) -> None:
        """Power on."""
        self.logger.info("power on")

    @export
    async def off(self) -> None:
        """Power off."""
        self.logger.info("power off")

    @export
    async def read(self) -> AsyncGenerator[PowerReading, None]:
        """Stream two readings: (0.0 V, 0.0 A) then (5.0 V, 2.0 A)."""
        yield PowerReading(voltage=0.0, current=0.0)
        yield PowerReading(voltage=5.0, current=2.0)


@dataclass(kw_only=True)
class SyncMockPower(PowerInterface):
    """:class:`MockPower` with synchronous methods (they run in worker threads)."""

    @export
    def on(self) -> None:
        """Power on."""
        self.logger.info("power on")

    @export
    def off(self) -> None:
        """Power off."""
        self.logger.info("power off")

    @export
    def read(self) -> Generator[PowerReading, None, None]:
        """Stream two readings: (0.0 V, 0.0 A) then (5.0 V, 2.0 A)."""
        yield PowerReading(voltage=0.0, current=0.0)
        yield PowerReading(voltage=5.0, current=2.0)
