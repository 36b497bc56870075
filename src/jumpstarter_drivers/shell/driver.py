"""The shell driver: a Linux shell on a board's serial console, logged in and run command by command.

Each call opens the console, reaches the prompt (logging in when the board shows its login
prompt), does its work and closes the console again, so a test may use the console in between.
Commands end with ``echo rcN:$?:`` (:mod:`jumpstarter_drivers.uboot.console`): the status is the
command's own, the output is what came between the echoed line and the marker, without the kernel
messages a board prints on the same console. Files travel base64-encoded, in lines of 76
characters typed into ``base64 -d`` with the terminal's echo off (``put``) or printed by ``base64``
(``get``), and are checked with ``sha256sum`` on the board.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import re
import shlex
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import ClassVar

import anyio

from ..core.driver import Driver, export
from ..uboot.common import DEFAULT_FAIL_PATTERNS, StepFailed
from ..uboot.console import Expecter, ShellConsole
from ..uboot.driver import connect_live
from .common import MAX_TRANSFER, CommandResult


@dataclass(kw_only=True)
class Shell(Driver):
    """A Linux shell on the console of child ``serial``.

    ``prompt`` ends the shell's prompt (``# `` for root), ``login_prompt`` is what the board's
    getty prints, ``username``/``password`` log in (``password: null`` for none), ``login_timeout``
    bounds the wait for the first answer of the board. ``fail_patterns`` (a panic) end any wait at once.
    """

    required_children: ClassVar[dict[str, type | tuple[type, ...]]] = {"serial": Driver}

    prompt: str = "# "
    login_prompt: str = "login:"
    username: str = "root"
    password: str | None = None
    login_timeout: float = 30.0
    fail_patterns: list[str] = field(default_factory=lambda: list(DEFAULT_FAIL_PATTERNS))

    @classmethod
    def client(cls) -> str:
        return "jumpstarter_drivers.shell.client.ShellClient"

    def shell_console(self, expecter: Expecter) -> ShellConsole:
        """A :class:`ShellConsole` with this driver's prompt on an open console."""
        return ShellConsole(expecter, self.prompt)

    async def log_in(self, shell: ShellConsole, timeout: float | None = None) -> None:
        """Reach the prompt on an open console, logging in as configured (first answer within
        ``timeout``, ``login_timeout`` by default)."""
        await shell.ensure_logged_in(self.login_prompt, self.username, self.password, timeout or self.login_timeout)

    @contextlib.asynccontextmanager
    async def session(self, timeout: float | None = None) -> AsyncIterator[ShellConsole]:
        """The console, opened and logged in, for the duration of the block."""
        async with connect_live(self.children["serial"]) as stream:  # an old prompt in the history is no prompt
            shell = self.shell_console(Expecter(stream, tuple(self.fail_patterns)))
            await self.log_in(shell, timeout)
            yield shell

    @export
    async def login(self) -> None:
        """Reach the shell prompt, logging in if the board asks."""
        async with self.session():
            self.logger.info("logged in as %s", self.username)

    @export
    async def run(self, command: str, timeout: float = 30.0) -> CommandResult:
        """Run ``command``; its exit status and output (a non-zero status is no error here)."""
        if "\n" in command or "\r" in command:
            raise ValueError("run one command line at a time (no newlines); join commands with ';' or '&&'")
        async with self.session() as shell:
            shell.step(command)
            status, output = await shell.run(command, timeout, check=False)
        return CommandResult(status, output)

    @export
    async def put(self, path: str, data: str, timeout: float = 300.0) -> None:
        """Write base64 ``data`` to the board's file ``path``, chunk by chunk, checked by SHA-256."""
        raw = _decode(data)
        encoded = base64.encodebytes(raw).decode()  # lines of 76 characters
        with anyio.fail_after(timeout):
            async with self.session() as shell:
                shell.step(f"put {path}")
                status = await shell.run_with_input(f"base64 -d > {shlex.quote(path)}", encoded, timeout)
                if status != 0:
                    raise StepFailed(shell.expecter.step, f"base64 -d into {path} failed with status {status}",
                                     shell.expecter.console_tail())
                await self._check(shell, path, hashlib.sha256(raw).hexdigest())
        self.logger.info("put %d bytes into %s", len(raw), path)

    @export
    async def get(self, path: str, timeout: float = 300.0) -> str:
        """The board's file ``path``, base64-encoded, checked by SHA-256."""
        quoted = shlex.quote(path)
        with anyio.fail_after(timeout):
            async with self.session() as shell:
                shell.step(f"get {path}")
                _, listed = await shell.run(f"wc -c {quoted}", 30)
                size = int(listed.split()[0])
                if size > MAX_TRANSFER:
                    raise ValueError(f"{path} holds {size} bytes; get moves at most {MAX_TRANSFER} over a console")
                _, output = await shell.run(f"base64 {quoted}", timeout)
                raw = base64.b64decode("".join(output.split()))
                await self._check(shell, path, hashlib.sha256(raw).hexdigest())
        self.logger.info("got %d bytes from %s", len(raw), path)
        return base64.b64encode(raw).decode()

    async def _check(self, shell: ShellConsole, path: str, sha256: str) -> None:
        _, output = await shell.run(f"sha256sum {shlex.quote(path)}", 60)
        match = re.search(r"\b([0-9a-f]{64})\b", output)
        if not match or match.group(1) != sha256:
            raise StepFailed(shell.expecter.step, f"{path} on the board does not match what was sent (sha256 "
                             f"{match.group(1) if match else 'missing'}, expected {sha256})", shell.expecter.console_tail(),
                             transient=True)


def _decode(data: str) -> bytes:
    try:
        raw = base64.b64decode(data, validate=True)
    except ValueError:
        raise ValueError("put takes the file's contents base64-encoded (the client does this)") from None
    if len(raw) > MAX_TRANSFER:
        raise ValueError(f"{len(raw)} bytes is more than put moves over a console ({MAX_TRANSFER}); use the network")
    return raw
