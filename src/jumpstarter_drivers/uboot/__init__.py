"""U-Boot on a board's serial console: reaching the prompt, commands, environment, network."""

from .client import UBootClient
from .common import ConsoleError, ConsoleTimeout, PanicDetected, StepFailed
from .driver import UBoot

__all__ = ["ConsoleError", "ConsoleTimeout", "PanicDetected", "StepFailed", "UBoot", "UBootClient"]
