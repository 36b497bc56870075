"""Types both sides of a power driver share."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PowerReading:
    """One measurement of a power supply.

    >>> PowerReading(voltage=5.0, current=2.0).apparent_power
    10.0
    """

    voltage: float
    current: float

    @property
    def apparent_power(self) -> float:
        """Volt-amperes: voltage times current."""
        return self.voltage * self.current

    def __str__(self) -> str:
        return f"voltage={self.voltage} V  current={self.current} A  apparent_power={self.apparent_power} VA"
