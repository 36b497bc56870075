"""Talking to U-Boot (and to the flashing shell after it) over a serial byte stream.

:class:`Expecter` waits for patterns on an anyio byte stream with a deadline, ending at once
when a fail-fast pattern (a panic, a crash handler) shows up; every error carries the step it
happened in and the tail of the console. :class:`UBootConsole` and :class:`ShellConsole` run
commands and check their exit status by appending ``echo rcN:$?:`` to the command line: the
echoed command line never matches ``rcN:<digits>:``, only the command's own status does.
"""

from __future__ import annotations

import inspect
import itertools
import logging
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio

from .common import DEFAULT_FAIL_PATTERNS, ConsoleError, ConsoleTimeout, PanicDetected, StepFailed

logger = logging.getLogger(__name__)

TAIL = 3000
#: Bytes typed in one write by :meth:`ShellConsole.run_with_input` (flow control paces the rest).
INPUT_CHUNK = 4096
#: Seconds a wait that met a fail pattern still reads, for the rest of the line that says why.
PANIC_GRACE = 1.0
#: What a board prints once U-Boot has handed over to an operating system.
BOOTED_PAST = r"Starting kernel \.\.\.|Booting Linux on physical CPU"
#: Terminal escape sequences and control characters other than tab, CR and LF.
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


@dataclass
class Expecter:
    """Pattern waits over a byte stream, with fail-fast patterns and a console tail for errors."""

    stream: Any
    fail_patterns: Sequence[str] = DEFAULT_FAIL_PATTERNS
    step: str = "console"
    buffer: str = ""
    tail: str = ""
    log: Callable[[str], None] | None = None
    #: While a list, everything received is appended to it (a command's whole output; ``tail`` is cut).
    capture: list[str] | None = None
    _fail: re.Pattern | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.fail_patterns:
            self._fail = re.compile("|".join(f"(?:{p})" for p in self.fail_patterns))

    def console_tail(self) -> str:
        return self.tail[-TAIL:]

    async def send(self, data: str | bytes) -> None:
        await self.stream.send(data.encode() if isinstance(data, str) else data)

    async def _receive(self) -> str:
        try:
            data = await self.stream.receive()
        except anyio.EndOfStream:
            raise ConsoleError(self.step, "the serial console closed", self.console_tail()) from None
        text = _ANSI.sub("", data.decode(errors="replace"))
        self.tail = (self.tail + text)[-4 * TAIL :]
        if self.capture is not None:
            self.capture.append(text)
        if self.log is not None:
            self.log(text)
        return text

    async def _rest_of_line(self, start: int) -> None:
        """Read on until the line a fail pattern starts at ends, for at most :data:`PANIC_GRACE` (the
        reason of a panic follows its first words), so the console tail shows why."""
        with anyio.move_on_after(PANIC_GRACE):
            while "\n" not in self.buffer[start:]:
                self.buffer += await self._receive()

    async def expect(self, patterns: Sequence[str | re.Pattern], timeout: float) -> tuple[int, re.Match]:
        """Wait until one of ``patterns`` appears in the unread console output.

        Returns the index of the pattern and its match; the output up to the end of the match
        is consumed. Raises :class:`PanicDetected` as soon as a fail-fast pattern appears and
        :class:`ConsoleTimeout` after ``timeout`` seconds.
        """
        compiled = [re.compile(p) if isinstance(p, str) else p for p in patterns]
        scanned_fail = 0
        with anyio.move_on_after(timeout) as scope:
            while True:
                if self._fail is not None:
                    found = self._fail.search(self.buffer, max(0, scanned_fail - 200))
                    if found:
                        await self._rest_of_line(found.start())
                        raise PanicDetected(self.step, f"the board failed: {found.group(0)!r}", self.console_tail())
                    scanned_fail = len(self.buffer)
                best: tuple[int, int, re.Match] | None = None
                for index, pattern in enumerate(compiled):
                    match = pattern.search(self.buffer)
                    if match and (best is None or match.start() < best[1]):
                        best = (index, match.start(), match)
                if best is not None:
                    self.buffer = self.buffer[best[2].end() :]
                    return best[0], best[2]
                self.buffer += await self._receive()
        assert scope.cancelled_caught
        wanted = " or ".join(repr(p.pattern) for p in compiled)
        raise ConsoleTimeout(self.step, f"no {wanted} within {timeout:.1f} s", self.console_tail())


class _Commands:
    """Running commands with a checked exit status, shared by U-Boot and the shell."""

    prompt: str
    _ids = itertools.count(1)

    def __init__(self, expecter: Expecter, prompt: str) -> None:
        self.expecter = expecter
        self.prompt = prompt

    def step(self, name: str) -> None:
        """Name the step errors will report."""
        self.expecter.step = name

    async def run(self, command: str, timeout: float = 30.0, check: bool = True) -> tuple[int, str]:
        """Run ``command``; return ``(status, output)``. With ``check`` a non-zero status raises
        :class:`StepFailed` naming the command, with the console tail."""
        n = next(self._ids)
        self.expecter.buffer = ""
        self.expecter.capture = captured = []
        try:
            await self.expecter.send(f"{command}; echo rc{n}:$?:\r")
            _, match = await self.expecter.expect([re.compile(rf"rc{n}:(\d+):")], timeout)
        finally:
            self.expecter.capture = None
        received = "".join(captured)
        consumed = received[: len(received) - len(self.expecter.buffer)]
        status = int(match.group(1))
        output = _command_output(consumed, n)
        # Typing before the prompt is back loses characters on real boards (U-Boot polls for ^C).
        await self.expecter.expect([re.escape(self.prompt.rstrip())], 10)
        if check and status != 0:
            raise StepFailed(
                self.expecter.step, f"command {command!r} failed with status {status}", self.expecter.console_tail()
            )
        return status, output


#: A kernel message on the console (``[   12.345678] ...``), which may land in a command's output.
KERNEL_MESSAGE = re.compile(r"^\[\s*\d+\.\d+\] .*\n?", re.MULTILINE)


def _command_output(consumed: str, n: int) -> str:
    """What a command printed: after its echoed line, before its status marker, without kernel messages.

    >>> _command_output("ls; echo rc1:$?:\\r\\n[    3.28] eth0: link up\\r\\na b\\r\\nrc1:", 1)
    'a b\\n'
    """
    end = consumed.rfind(f"rc{n}:")
    start = consumed.rfind(f"rc{n}:$?:", 0, end)
    start = consumed.find("\n", start) + 1 if start >= 0 else 0
    return KERNEL_MESSAGE.sub("", consumed[start:end].replace("\r", ""))


class UBootConsole(_Commands):
    """U-Boot's command line: reaching the prompt, commands, environment, network, loads."""

    def __init__(
        self,
        expecter: Expecter,
        prompt: str = "=> ",
        autoboot_pattern: str = r"Hit any key to stop autoboot|Press .* to stop|autoboot in",
        interrupt: str = " ",
    ) -> None:
        super().__init__(expecter, prompt)
        self.autoboot_pattern = autoboot_pattern
        self.interrupt = interrupt

    async def interrupt_autoboot(self, timeout: float) -> None:
        """After power-on: stop the autoboot countdown and wait for the prompt (``timeout`` in all).

        A board that boots past U-Boot (``Starting kernel ...``) fails at once, not at the timeout.
        """
        self.step("interrupt autoboot")
        with anyio.fail_after(timeout + 5):
            deadline = anyio.current_time() + timeout
            prompt = re.escape(self.prompt)
            index, _ = await self.expecter.expect([self.autoboot_pattern, prompt, BOOTED_PAST], timeout)
            if index == 0:
                await self.expecter.send(self.interrupt)
                remaining = max(1.0, deadline - anyio.current_time())
                index, _ = await self.expecter.expect([prompt, BOOTED_PAST], remaining)
                index = 2 if index == 1 else 1
            if index == 2:
                raise StepFailed(
                    self.expecter.step,
                    "the board booted past U-Boot without stopping at its prompt (the autoboot countdown was not "
                    "interrupted: is bootdelay 0, or does this U-Boot want another key than "
                    f"{self.interrupt!r}?)",
                    self.expecter.console_tail(),
                    transient=True,
                )
        await self.sync()

    async def sync(self, timeout: float = 10.0) -> None:
        """Make sure the command line answers (and discard what came before)."""
        await self.run("true", timeout)

    async def get_env(self, name: str, timeout: float = 10.0) -> str | None:
        """The value of an environment variable, or ``None`` when it is not defined."""
        status, output = await self.run(f"printenv {name}", timeout, check=False)
        match = re.search(rf"^{re.escape(name)}=(.*)$", output, re.MULTILINE)
        return match.group(1).strip() if status == 0 and match else None

    async def set_env(self, name: str, value: str | None, timeout: float = 10.0) -> None:
        """Set (or with ``None``, delete) an environment variable."""
        if value is None:
            await self.run(f"setenv {name}", timeout)
        elif not re.search(r"[\s;$'\"\\]", value):
            await self.run(f"setenv {name} {value}", timeout)
        elif "'" not in value:
            await self.run(f"setenv {name} '{value}'", timeout)
        else:
            raise ValueError(f"cannot set {name}: U-Boot's shell cannot quote {value!r} (it has a ' and spaces or ;$)")

    async def setup_network(
        self,
        mode: str = "dhcp",
        ipaddr: str | None = None,
        serverip: str | None = None,
        netmask: str | None = None,
        gatewayip: str | None = None,
        tftp_port: int = 69,
        timeout: float = 60.0,
    ) -> None:
        """DHCP (``autoload`` off, so it loads nothing) or static addresses; then our TFTP server."""
        self.step("network setup")
        if mode == "dhcp":
            await self.set_env("autoload", "no")
            await self.run("dhcp", timeout)
        elif mode == "static":
            if not ipaddr:
                raise ValueError("static network set-up needs ipaddr")
            await self.set_env("ipaddr", ipaddr)
        else:
            raise ValueError(f"network mode {mode!r} is not 'dhcp' or 'static'")
        for name, value in (("netmask", netmask), ("gatewayip", gatewayip), ("serverip", serverip)):
            if value:
                await self.set_env(name, value)
        await self.set_env("tftpdstp", str(tftp_port) if tftp_port != 69 else None)

    async def tftpboot(self, address: int, filename: str, size: int, timeout: float = 120.0) -> None:
        """Load ``filename`` to ``address`` over TFTP; fail unless exactly ``size`` bytes arrived.

        A timed-out transfer raises a transient :class:`StepFailed` (worth a retry); a missing
        file or unset address does not.
        """
        self.step(f"tftpboot {filename}")
        status, output = await self.run(f"tftpboot {address:#x} {filename}", timeout, check=False)
        if status != 0:
            transient = bool(re.search(r"Retry count exceeded|T T T|timed out|ARP Retry", output))
            reason = next((line.strip() for line in output.splitlines() if "error" in line.lower()), "")
            raise StepFailed(
                self.expecter.step,
                f"tftpboot of {filename} failed (status {status}{'; ' + reason if reason else ''})",
                self.expecter.console_tail(),
                transient=transient,
            )
        match = re.search(r"Bytes transferred = (\d+)", output)
        if not match or int(match.group(1)) != size:
            got = match.group(1) if match else "an unknown number of"
            raise StepFailed(
                self.expecter.step,
                f"tftpboot of {filename} loaded {got} bytes, expected {size}",
                self.expecter.console_tail(),
                transient=True,
            )

    async def crc32(self, address: int, size: int, timeout: float = 60.0) -> int:
        """U-Boot's CRC-32 of ``size`` bytes at ``address``."""
        _, output = await self.run(f"crc32 {address:x} {size:x}", timeout)
        match = re.search(r"==>\s*([0-9a-fA-F]{8})", output)
        if not match:
            raise StepFailed(self.expecter.step, "crc32 printed no checksum", self.expecter.console_tail())
        return int(match.group(1), 16)

    async def block(self, interface: str, op: str, device: int, address: int, block: int, count: int,
                    timeout: float = 120.0) -> None:
        """``<interface> read|write`` of ``count`` 512-byte blocks at ``block``, checked."""
        _, output = await self.run(f"{interface} {op} {address:x} {block:x} {count:x}", timeout)
        done = "written" if op == "write" else "read"
        match = re.search(rf"(\d+) blocks {done}: OK", output)
        if not match or int(match.group(1)) != count:
            raise StepFailed(
                self.expecter.step,
                f"{interface} {op} of {count} blocks at block {block} did not complete",
                self.expecter.console_tail(),
            )


class ShellConsole(_Commands):
    """A Linux shell on the console (the bundle's busybox), after logging in."""

    async def login(self, login_prompt: str, username: str, password: str | None, timeout: float) -> None:
        """Wait for the login prompt (``timeout``), log in and check the shell answers."""
        self.step("log in")
        await self.expecter.expect([re.escape(login_prompt)], timeout)
        await self._credentials(username, password)

    async def _credentials(self, username: str, password: str | None) -> None:
        await self.expecter.send(username + "\r")
        if password is not None:
            await self.expecter.expect([r"[Pp]assword:"], 30)
            await self.expecter.send(password + "\r")
        index, _ = await self.expecter.expect([re.escape(self.prompt.strip()), "Login incorrect"], 30)
        if index == 1:
            raise StepFailed(self.expecter.step, f"the board refused the login of {username!r} (Login incorrect)",
                             self.expecter.console_tail())
        await self.run("true", 10)

    async def run_with_input(self, command: str, data: str, timeout: float = 300.0) -> int:
        """Run ``command`` with ``data`` (whole lines of text) typed into its standard input with the
        terminal's echo off, ended by Ctrl-D; its exit status.

        The kernel's terminal line discipline takes the input, not the shell's line editing, which
        handles one character at a time and at most 1024 a line: far faster on a slow board.
        """
        n = next(self._ids)
        self.expecter.buffer = ""
        await self.expecter.send(f"stty -echo; echo RE''ADY{n}; {command}; echo rc{n}:$?:; stty echo\r")
        await self.expecter.expect([rf"READY{n}\r?\n"], 30)

        async def feed() -> None:
            for start in range(0, len(data), INPUT_CHUNK):
                await self.expecter.send(data[start : start + INPUT_CHUNK])
            await self.expecter.send(b"\x04")

        async with anyio.create_task_group() as tg:  # read while typing, so output never backs up
            tg.start_soon(feed)
            _, match = await self.expecter.expect([re.compile(rf"rc{n}:(\d+):")], timeout)
        await self.expecter.expect([re.escape(self.prompt.rstrip())], 10)
        return int(match.group(1))

    async def ensure_logged_in(self, login_prompt: str, username: str, password: str | None, timeout: float) -> None:
        """Reach the shell prompt: press Enter, then log in if the board asks (``timeout`` for the first
        answer). A command run next is kept apart from what came before by its own markers."""
        self.step("reach the shell")
        self.expecter.buffer = ""
        await self.expecter.send("\r")
        index, _ = await self.expecter.expect(
            [re.escape(login_prompt), r"[Pp]assword:", re.escape(self.prompt.strip())], timeout
        )
        if index == 1:  # half-way through an earlier login: start again
            await self.expecter.send("\r")
            await self.expecter.expect([re.escape(login_prompt)], timeout)
            index = 0
        if index == 0:
            self.step("log in")
            await self._credentials(username, password)


async def call_maybe_async(func: Callable[..., Any], *args: Any) -> Any:
    """Call a driver method that may be sync (run in a worker thread) or async."""
    if inspect.iscoroutinefunction(inspect.unwrap(func)):
        return await func(*args)
    result = await anyio.to_thread.run_sync(lambda: func(*args))
    if isinstance(result, Awaitable):
        return await result
    return result
