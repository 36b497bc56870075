"""A board in pure Python (power, a U-Boot-like serial console on a pseudo-terminal, a disk file) and its flasher."""

from .driver import VirtualBoard, VirtualBoardPower, VirtualFlasher

__all__ = ["VirtualBoard", "VirtualBoardPower", "VirtualFlasher"]
