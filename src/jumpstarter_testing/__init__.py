"""pytest plugin and helpers for testing hardware in the loop with jumpstarter_drivers.

The plugin (:mod:`jumpstarter_testing.plugin`) loads through the ``pytest11`` entry point and
provides the ``session``, ``client`` and ``flasher`` fixtures. Names here load on first use,
so importing this package stays cheap.
"""

from __future__ import annotations

from jumpstarter_drivers.core.lazy import lazy_exports

_EXPORTS = {
    "JumpstarterTest": "base",
    "eventually": "helpers",
    "Lab": "lab",
}

__all__ = ["JumpstarterTest", "Lab", "eventually"]


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
