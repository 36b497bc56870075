"""Every exception a user of the toolkit can meet.

One hierarchy, rooted at :class:`JumpstarterError`. Each message says what failed and,
where there is one, what to do about it.

>>> issubclass(DriverInvalidArgument, ValueError) and issubclass(DriverInvalidArgument, DriverError)
True
"""

from __future__ import annotations


class JumpstarterError(Exception):
    """Base of every error raised by jumpstarter_drivers and jumpstarter_testing."""


class ConfigurationError(JumpstarterError):
    """A driver, exporter file or option is configured wrongly.

    Raised at construction time, naming the driver (or file), the field and what was expected.
    """


class ExporterUnreachable(JumpstarterError, ConnectionError):
    """The exporter cannot be reached, stopped answering, or went away mid-call."""


class DriverError(JumpstarterError):
    """A driver call failed on the exporter side; the message is the driver's."""


class DriverInvalidArgument(DriverError, ValueError):
    """The driver refused the arguments of a call (``ValueError`` on the driver side)."""


class DriverMethodNotImplemented(DriverError, NotImplementedError):
    """The driver has no such method, or does not implement it on this device."""


class ExporterNotReady(DriverError):
    """The exporter's status does not allow driver calls right now."""


class DriverTimeout(DriverError, TimeoutError):
    """The driver call timed out (``TimeoutError`` on the driver side)."""


class Unauthenticated(ExporterUnreachable):
    """The exporter refused the connection's credentials (passphrase or TLS)."""


class ClientNotAllowed(JumpstarterError):
    """The client class a driver names is not allowed by ``JMP_DRIVERS_ALLOW``."""


class TlsMismatch(ExporterUnreachable):
    """The two ends do not agree on TLS: the exporter's certificate is not trusted or names another
    host, or one end speaks TLS and the other plaintext."""
