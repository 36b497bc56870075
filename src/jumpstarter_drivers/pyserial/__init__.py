"""Serial consoles: the :class:`PySerial` driver and its client (byte stream, pexpect, console log)."""

from .client import ConsoleSpawn, PySerialClient
from .common import CONSOLE_LOGGER, ConsoleLog, flush_consoles
from .driver import PySerial, SerialStream

__all__ = ["CONSOLE_LOGGER", "ConsoleLog", "ConsoleSpawn", "PySerial", "PySerialClient", "SerialStream", "flush_consoles"]
