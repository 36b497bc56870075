"""Drivers for hardware in the loop, and the runtime that serves them to tests.

The runtime's names (:class:`Driver`, :func:`export`, :class:`Session`, :func:`serve`, the
errors, ...) are re-exported here from :mod:`jumpstarter_drivers.core`, loaded on first use.
"""

from __future__ import annotations

from typing import Any

from . import core

__all__ = core.__all__


def __getattr__(name: str) -> Any:
    return getattr(core, name)


def __dir__() -> list[str]:
    return __all__
