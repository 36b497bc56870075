"""Power drivers: the interface every power switch implements, and mock supplies for tests."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import AsyncGenerator, Generator
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..core.driver import Driver, export
from ..core.errors import ConfigurationError
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


@dataclass(kw_only=True)
class BoardPower(PowerInterface):
    """The power switch of a board driver that powers itself (a simulator, a virtual machine).

    The board creates it as its ``power`` child and sets :attr:`board`; ``on``/``off`` call the
    board's ``power_on()``/``power_off()``, and readings follow its ``powered`` property.
    """

    #: Amperes a reading shows while the board is powered (at 5 V).
    current_when_on: ClassVar[float] = 1.0

    board: Any = field(default=None, init=False, repr=False)

    def _board(self) -> Any:
        if self.board is None:
            raise ConfigurationError(f"{type(self).__name__} belongs to a board driver, which creates it")
        return self.board

    @export
    def on(self) -> None:
        """Power on: the board starts."""
        self.logger.info("power on")
        self._board().power_on()

    @export
    def off(self) -> None:
        """Power off: the board stops at once."""
        self.logger.info("power off")
        self._board().power_off()

    @export
    def read(self) -> Generator[PowerReading, None, None]:
        """One reading: 5 V, drawing current while powered."""
        yield PowerReading(voltage=5.0, current=self.current_when_on if self._board().powered else 0.0)
