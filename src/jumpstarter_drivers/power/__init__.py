"""Power switching: the interface, mock supplies and the client."""

from .client import PowerClient, VirtualPowerClient
from .common import PowerReading
from .driver import MockPower, PowerInterface, SyncMockPower, VirtualPowerInterface

__all__ = [
    "MockPower",
    "PowerClient",
    "PowerInterface",
    "PowerReading",
    "SyncMockPower",
    "VirtualPowerClient",
    "VirtualPowerInterface",
]
