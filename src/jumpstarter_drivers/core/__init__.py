"""The runtime shared by every driver and client.

Names are imported on first use, so importing this package does not load gRPC.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Driver": "driver",
    "export": "driver",
    "exportstream": "driver",
    "MethodKind": "driver",
    "DriverClient": "client",
    "AllowList": "client",
    "ByteStream": "client",
    "Session": "session",
    "ExporterStatus": "status",
    "serve": "access",
    "env": "access",
    "connect": "access",
    "JUMPSTARTER_HOST": "access",
    "JMP_DRIVERS_ALLOW": "access",
    "JumpstarterError": "errors",
    "ConfigurationError": "errors",
    "ExporterUnreachable": "errors",
    "DriverError": "errors",
    "DriverInvalidArgument": "errors",
    "DriverMethodNotImplemented": "errors",
    "ExporterNotReady": "errors",
    "DriverTimeout": "errors",
    "Unauthenticated": "errors",
    "ClientNotAllowed": "errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
