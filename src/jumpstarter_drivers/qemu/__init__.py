"""A QEMU arm64 board running Debian's U-Boot: power is the process, serial a pty, disk a raw file."""

from .driver import QemuBoard, QemuPower

__all__ = ["QemuBoard", "QemuPower"]
