"""EnerGenie EG-PMS2-LAN network power strip: driver, client and a simulator of its web UI."""

from .client import EnerGenieClient
from .common import StripUnreachable
from .driver import EnerGenie

__all__ = ["EnerGenie", "EnerGenieClient", "StripUnreachable"]
