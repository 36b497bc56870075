"""pytest plugin and helpers for testing hardware in the loop with jumpstarter_drivers.

The plugin (:mod:`jumpstarter_testing.plugin`) loads through the ``pytest11`` entry point and
provides the ``session``, ``client`` and ``flasher`` fixtures. Names here load on first use,
so importing this package stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "JumpstarterTest": "base",
    "eventually": "helpers",
    "Lab": "lab",
}

__all__ = ["JumpstarterTest", "Lab", "eventually"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
