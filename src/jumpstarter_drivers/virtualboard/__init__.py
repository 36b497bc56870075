"""A board in pure Python: power, a U-Boot-like serial console on a pseudo-terminal, a disk file."""

from .driver import VirtualBoard, VirtualBoardPower

__all__ = ["VirtualBoard", "VirtualBoardPower"]
