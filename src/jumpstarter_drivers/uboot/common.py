"""Types the U-Boot driver, the flashers and their clients share: console errors and patterns."""

from __future__ import annotations

from ..core.errors import DriverError

#: Console output that means the board has failed; a wait ends at once when one appears.
DEFAULT_FAIL_PATTERNS: tuple[str, ...] = (
    r"Kernel panic - not syncing",
    r"Synchronous Abort handler",
    r"### ERROR ### Please RESET the board ###",
    r"Unhandled (?:exception|fault)",
    r"data abort",
)


class ConsoleError(DriverError):
    """A step on a board's console failed; the message names the step and shows the console tail.

    ``transient`` failures (a lost network packet, a short transfer) are worth a retry;
    the others (a missing file, a panic, a wrong command) are not.

    >>> print(ConsoleError("tftpboot kernel", "no prompt", "=> tftpboot ...\\nT T T"))
    step 'tftpboot kernel' failed: no prompt
    --- console tail ---
    => tftpboot ...
    T T T
    """

    transient_default = False

    def __init__(self, step: str, reason: str, tail: str = "", transient: bool | None = None) -> None:
        self.step, self.reason, self.tail = step, reason, tail
        self.transient = self.transient_default if transient is None else transient
        message = f"step {step!r} failed: {reason}"
        if tail:
            message += "\n--- console tail ---\n" + tail.replace("\r", "").rstrip()
        super().__init__(message)


class ConsoleTimeout(ConsoleError):
    """The console did not show what was awaited in time."""

    transient_default = True


class PanicDetected(ConsoleError):
    """A fail-fast pattern (panic, crash handler) appeared on the console."""


class StepFailed(ConsoleError):
    """A command ran and failed, or its result was wrong."""
