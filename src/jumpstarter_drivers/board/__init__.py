"""Boards the exporter runs itself (a simulator, a virtual machine): console, disk and power."""

from .driver import PtyBoard

__all__ = ["PtyBoard"]
