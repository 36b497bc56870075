"""The shell client: commands and files on a board's Linux, over its serial console.

>>> result = client.board.shell.run("uname -r")      # doctest: +SKIP
>>> client.board.shell.run_check("test -e /dev/vda")  # doctest: +SKIP
"""

from __future__ import annotations

import base64
import os
from pathlib import Path

from ..core.client import DriverClient
from .common import CommandResult, ShellCommandFailed


class ShellClient(DriverClient):
    """Client of a :class:`~jumpstarter_drivers.shell.driver.Shell`."""

    def login(self) -> None:
        """Reach the shell prompt, logging in if the board asks."""
        self.call("login")

    def run(self, command: str, timeout: float = 30.0) -> CommandResult:
        """Run ``command``; its exit status and output."""
        return self.call_as(CommandResult, "run", command, timeout)

    def run_check(self, command: str, timeout: float = 30.0) -> str:
        """Run ``command`` and return its output; a non-zero status raises :class:`ShellCommandFailed`."""
        result = self.run(command, timeout)
        if not result.ok:
            raise ShellCommandFailed(command, result.status, result.output)
        return result.output

    def put(self, source: bytes | str | os.PathLike, path: str, timeout: float = 300.0) -> None:
        """Write ``source`` (bytes, or a local file) to the board's file ``path``."""
        data = source if isinstance(source, bytes) else Path(source).read_bytes()
        self.call("put", path, base64.b64encode(data).decode(), timeout)

    def get(self, path: str, destination: str | os.PathLike | None = None, timeout: float = 300.0) -> bytes:
        """The board's file ``path`` (also written to ``destination`` when given)."""
        data = base64.b64decode(self.call("get", path, timeout))
        if destination is not None:
            Path(destination).write_bytes(data)
        return data
