"""What the shell driver and its client share: a command's result and the error for a failed one."""

from __future__ import annotations

from dataclasses import dataclass

from ..core.errors import DriverError

#: The largest file :meth:`ShellClient.put` / :meth:`ShellClient.get` move over a console in one call.
MAX_TRANSFER = 2 << 20


@dataclass(frozen=True)
class CommandResult:
    """A command's exit status and what it printed (``\\r`` removed, kernel messages dropped).

    >>> CommandResult(0, "hello\\n").ok
    True
    """

    status: int
    output: str

    @property
    def ok(self) -> bool:
        return self.status == 0


class ShellCommandFailed(DriverError):
    """A command exited with a non-zero status; carries the command, the status and the output.

    >>> print(ShellCommandFailed("ls /nope", 1, "ls: /nope: No such file or directory\\n"))
    command 'ls /nope' failed with status 1; its output:
    ls: /nope: No such file or directory
    """

    def __init__(self, command: str, status: int, output: str) -> None:
        self.command, self.status, self.output = command, status, output
        shown = output.rstrip() or "(nothing)"
        super().__init__(f"command {command!r} failed with status {status}; its output:\n{shown}")
