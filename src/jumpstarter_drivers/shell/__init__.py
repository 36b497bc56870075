"""A Linux shell on a board's serial console: log in, run commands, move files."""

from .client import ShellClient
from .common import CommandResult, ShellCommandFailed
from .driver import Shell

__all__ = ["CommandResult", "Shell", "ShellClient", "ShellCommandFailed"]
