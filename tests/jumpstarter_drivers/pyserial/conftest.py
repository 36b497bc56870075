"""Fixtures for the serial console tests: a real pseudo-terminal playing the board, and a fake shell on it."""

from __future__ import annotations

import os
import re
import select
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

TIMEOUT = 5.0


class Board:
    """The board's end of a pseudo-terminal: the test reads and writes the master side.

    The driver opens the slave by path; the fixture keeps its own slave descriptor open so the
    terminal outlives the driver's closes (and :meth:`driver_fds` does not count it).
    """

    def __init__(self) -> None:
        self.master, self.slave = os.openpty()
        self.path = os.ttyname(self.slave)
        self._buffer = b""

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self.master, view) :]

    def read_some(self, timeout: float = TIMEOUT) -> bytes:
        if self._buffer:
            data, self._buffer = self._buffer, b""
            return data
        ready, _, _ = select.select([self.master], [], [], timeout)
        if not ready:
            raise TimeoutError(f"the board received nothing within {timeout} s")
        return os.read(self.master, 1 << 16)

    def read_exactly(self, size: int, timeout: float = TIMEOUT) -> bytes:
        deadline = time.monotonic() + timeout
        chunks, have = [], 0
        while have < size:
            data = self.read_some(max(0.0, deadline - time.monotonic()))
            chunks.append(data)
            have += len(data)
        joined = b"".join(chunks)
        self._buffer = joined[size:]
        return joined[:size]

    def read_until(self, marker: bytes, timeout: float = TIMEOUT) -> bytes:
        deadline = time.monotonic() + timeout
        data = b""
        while marker not in data:
            data += self.read_some(max(0.0, deadline - time.monotonic()))
        end = data.index(marker) + len(marker)
        self._buffer = data[end:]
        return data[:end]

    def driver_fds(self) -> list[int]:
        """Descriptors of this process open on the terminal, other than the fixture's own."""
        fds = []
        for entry in Path("/proc/self/fd").iterdir():
            try:
                target = os.readlink(entry)
            except OSError:  # the descriptor closed while we looked
                continue
            if target == self.path and int(entry.name) != self.slave:
                fds.append(int(entry.name))
        return fds

    def hang_up(self) -> None:
        """Close the master side: the driver's end reads EIO, as when a board's USB serial goes away."""
        master, self.master = self.master, -1
        os.close(master)

    def close(self) -> None:
        if self.master != -1:
            self.hang_up()
        os.close(self.slave)


class FakeShell(threading.Thread):
    """A tiny shell on the board's terminal: echoes input, answers a few commands.

    An empty line prints the prompt, Ctrl-C drops the line; ``echo ...``, ``uname -a``, ``cat BYTES`` (prints that
    many bytes of a pattern), ``poweroff`` (prints and stops; the test hangs the line up); anything else is not found.
    """

    PROMPT = b"fakeboard:~# "

    def __init__(self, board: Board) -> None:
        super().__init__(name="fake-shell", daemon=True)
        self.board = board
        self.stopping = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._serve()
        except Exception as exc:  # noqa: BLE001 - re-raised by the fixture, so a broken shell fails the test
            self.error = exc

    def _serve(self) -> None:
        line = b""
        while not self.stopping.is_set():
            ready, _, _ = select.select([self.board.master], [], [], 0.05)
            if not ready:
                continue
            data = os.read(self.board.master, 4096)
            for byte in data:
                if byte == 3:  # Ctrl-C drops the line
                    self.board.write(b"^C\r\n" + self.PROMPT)
                    line = b""
                elif byte in b"\r\n":
                    self.board.write(b"\r\n")
                    if not self._run(line.decode()):
                        return
                    line = b""
                else:
                    self.board.write(bytes([byte]))
                    line += bytes([byte])

    def _run(self, command: str) -> bool:
        out = b""
        if command.startswith("echo "):
            out = command[5:].encode() + b"\r\n"
        elif command == "uname -a":
            out = b"Linux fakeboard 6.6.0 #1 SMP armv7l GNU/Linux\r\n"
        elif match := re.fullmatch(r"cat (\d+)", command):
            pattern = bytes(range(32, 127))
            size = int(match[1])
            out = (pattern * (size // len(pattern) + 1))[:size] + b"\r\n"
        elif command == "poweroff":
            self.board.write(b"reboot: Power down\r\n")
            return False
        elif command:
            out = f"-sh: {command.split()[0]}: not found\r\n".encode()
        self.board.write(out + self.PROMPT)
        return True


@pytest.fixture
def board() -> Iterator[Board]:
    """A pseudo-terminal; the driver opens ``board.path``, the test plays the board on the master."""
    pty = Board()
    try:
        yield pty
    finally:
        pty.close()


@pytest.fixture
def shell(board: Board) -> Iterator[FakeShell]:
    """A :class:`FakeShell` running on ``board``."""
    fake = FakeShell(board)
    fake.start()
    try:
        yield fake
    finally:
        fake.stopping.set()
        fake.join(TIMEOUT)
        assert not fake.is_alive(), "the fake shell did not stop"
        if fake.error is not None:
            raise fake.error


@pytest.fixture
def wait_until() -> Callable[[Callable[[], object], str], None]:
    """Poll a condition until it holds, failing with ``what`` after 10 s."""

    def wait(condition: Callable[[], object], what: str, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                pytest.fail(f"timed out after {timeout} s waiting until {what}")
            time.sleep(0.01)

    return wait
