"""The runtime shared by every driver and client.

Names are imported on first use, so importing this package does not load gRPC.
"""

from __future__ import annotations

from .lazy import lazy_exports

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
    "TlsMismatch": "errors",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
