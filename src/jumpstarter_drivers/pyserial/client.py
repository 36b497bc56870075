"""The serial console client: a raw byte stream, a pexpect console, and the console log."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterable, Iterator
from typing import Any

import pexpect
from pexpect.spawnbase import SpawnBase

from ..core.client import ByteStream, DriverClient
from .common import ConsoleLog

#: How many characters of what was received a failed expect shows.
TAIL = 600


class ConsoleSpawn(SpawnBase):
    """A pexpect console over a :class:`~jumpstarter_drivers.core.client.ByteStream`.

    Everything pexpect offers on top of reading and writing works: ``expect``,
    ``expect_exact``, ``before``/``after``/``match``, timeouts (:class:`pexpect.TIMEOUT`), the
    end of the console (:class:`pexpect.EOF`), ``logfile``/``logfile_read``, bytes mode (the
    default) or text mode with ``encoding``. ``send`` does not pause before writing
    (``delaybeforesend`` is ``None``; set it for boards that drop fast input).
    """

    def __init__(
        self,
        stream: ByteStream,
        *,
        timeout: float | None = 30,
        maxread: int = 65536,
        searchwindowsize: int | None = None,
        logfile: Any = None,
        encoding: str | None = None,
        codec_errors: str = "strict",
        capture: ConsoleLog | None = None,
    ) -> None:
        super().__init__(
            timeout=timeout,
            maxread=maxread,
            searchwindowsize=searchwindowsize,
            logfile=logfile,
            encoding=encoding,
            codec_errors=codec_errors,
        )
        self.stream = stream
        self.capture = capture
        self.name = f"<console {stream.where}>"
        self.closed = False
        self.delaybeforesend = None
        self.delayafterread = None
        self._pending = b""

    def expect_list(self, pattern_list: Any, timeout: float | None = -1, searchwindowsize: int | None = -1,
                    async_: bool = False, **kw: Any) -> Any:
        """pexpect's ``expect_list``; a timeout or the end of the console names the patterns, the
        seconds waited and the tail of what was received (``expect`` goes through here too)."""
        with self._explained(pattern_list):
            return super().expect_list(pattern_list, timeout, searchwindowsize, async_, **kw)

    def expect_exact(self, pattern_list: Any, timeout: float | None = -1, searchwindowsize: int | None = -1,
                     async_: bool = False, **kw: Any) -> Any:
        """pexpect's ``expect_exact``, with the same errors as :meth:`expect_list`."""
        with self._explained(pattern_list):
            return super().expect_exact(pattern_list, timeout, searchwindowsize, async_, **kw)

    @contextlib.contextmanager
    def _explained(self, patterns: Any) -> Iterator[None]:
        started = time.monotonic()
        try:
            yield
        except pexpect.TIMEOUT:
            waited = time.monotonic() - started
            raise pexpect.TIMEOUT(
                f"{self.name}: no {describe_patterns(patterns)} within {waited:.1f} s{self._received()}"
            ) from None
        except pexpect.EOF:
            raise pexpect.EOF(f"{self.name}: the console ended before {describe_patterns(patterns)}{self._received()}") from None

    def _received(self) -> str:
        """The tail of what was received and not matched, decoded, for error messages."""
        seen = self.before if isinstance(self.before, (str, bytes)) else b""
        text = seen.decode("utf-8", "replace") if isinstance(seen, bytes) else seen
        text = text.replace("\r\n", "\n")[-TAIL:]
        return f"; received (last {TAIL} characters):\n{text}" if text else "; nothing was received"

    def read_nonblocking(self, size: int = 1, timeout: float | None = -1) -> Any:
        """Up to ``size`` bytes (characters in text mode), waiting at most ``timeout`` seconds.

        ``-1`` means ``self.timeout``, ``None`` waits for ever. Raises :class:`pexpect.TIMEOUT`
        or, once the console has ended, :class:`pexpect.EOF`.
        """
        if self.closed:
            raise ValueError(f"{self.name} is closed")
        if timeout == -1:
            timeout = self.timeout
        if not self._pending:
            try:
                data = self.stream.receive(timeout)
            except TimeoutError:
                raise pexpect.TIMEOUT(f"{self.name}: nothing more received within {timeout:.1f} s") from None
            if not data:
                self.flag_eof = True
                raise pexpect.EOF(f"{self.name}: the console ended")
            if self.capture is not None:
                self.capture.feed(data)
            self._pending = data
        data, self._pending = self._pending[:size], self._pending[size:]
        text = self._decoder.decode(data, final=False)
        self._log(text, "read")
        return text

    def send(self, s: str | bytes) -> int:
        """Send ``s``; text is encoded (UTF-8 in bytes mode), bytes go as they are in either mode.

        Returns the number of bytes sent.
        """
        if self.closed:
            raise ValueError(f"{self.name} is closed")
        if self.capture is not None:
            self.capture.flush()  # the prompt being answered is a line of its own
        if isinstance(s, (bytes, bytearray)):
            data = bytes(s)
            self._log(data if self.encoding is None else data.decode(self.encoding, "replace"), "send")
        else:
            s = self._coerce_send_string(s)
            self._log(s, "send")
            data = self._encoder.encode(s, final=False)
        self.stream.send(data)
        return len(data)

    def sendline(self, s: str | bytes = "") -> int:
        """Send ``s`` and a line separator (``\\n``)."""
        if isinstance(s, (bytes, bytearray)):
            return self.send(bytes(s) + os.linesep.encode())
        return self.send(self._coerce_send_string(s) + self.linesep)

    def sendcontrol(self, char: str) -> int:
        """Send a control character: ``sendcontrol("c")`` sends Ctrl-C.

        >>> ConsoleSpawn.control_byte("c"), ConsoleSpawn.control_byte("?")
        (b'\\x03', b'\\x7f')
        """
        return self.send(self.control_byte(char))

    @staticmethod
    def control_byte(char: str) -> bytes:
        """The byte Ctrl-``char`` produces on a terminal."""
        if char == "?":
            return b"\x7f"
        code = ord(char.upper()) if len(char) == 1 else -1
        if not 0x40 <= code <= 0x5F:
            raise ValueError(f"no control character for {char!r}; use a letter or one of @[\\]^_?")
        return bytes([code - 0x40])

    def sendeof(self) -> int:
        """Send Ctrl-D, what a terminal sends for end of input (the console stays open)."""
        return self.send(b"\x04")

    def write(self, s: str | bytes) -> None:
        """Send ``s`` (file-like spelling)."""
        self.send(s)

    def writelines(self, sequence: Iterable[str | bytes]) -> None:
        """Send each item of ``sequence``."""
        for s in sequence:
            self.send(s)

    def isalive(self) -> bool:
        """Whether the console is open and has not ended."""
        return not self.closed and not self.flag_eof

    def close(self, force: bool = True) -> None:
        """Close the console: log the unfinished last line and end the stream (the port is released)."""
        if self.closed:
            return
        self.closed = True
        if self.capture is not None:
            self.capture.close()
        self.stream.close()


def describe_patterns(patterns: Any) -> str:
    """Patterns as a reader wants them in an error message.

    >>> import re
    >>> describe_patterns([b"login:", re.compile(rb"# $"), pexpect.EOF])
    "'login:' or '# $'"
    """
    items = patterns if isinstance(patterns, (list, tuple)) else [patterns]
    shown = []
    for item in items:
        if isinstance(item, type):  # pexpect.EOF or pexpect.TIMEOUT in a pattern list
            continue
        text = getattr(item, "pattern", item)
        shown.append(repr(text.decode("utf-8", "replace") if isinstance(text, bytes) else text))
    return " or ".join(shown) or "match"


class PySerialClient(DriverClient):
    """Client of a :class:`~jumpstarter_drivers.pyserial.driver.PySerial` console.

    - :meth:`stream` is the raw byte stream (``send``, ``receive(timeout)``, ``read_exactly``);
    - :meth:`pexpect` is a pexpect console over that stream (no extra TCP hop):

      >>> with client.serial.pexpect() as console:          # doctest: +SKIP
      ...     console.expect("login:", timeout=60)
      ...     console.sendline("root")

    - :meth:`open` / :meth:`close` do the same without a ``with`` block (Jumpstarter's
      spelling); :meth:`close` closes the consoles this client opened, not the connection.

    Console capture: everything received through :meth:`pexpect` and :meth:`open` is also
    logged line by line at INFO on the logger ``jumpstarter.console.<node name>``, each record
    carrying ``console=<node name>`` and the node's uuid (see :mod:`jumpstarter_drivers.pyserial.common`);
    the pytest plugin writes these records into the test's log. The raw :meth:`stream` is not
    captured. Ending a console (leaving the ``with`` block, or ``send_eof()`` on the stream)
    ends it in both directions and releases the port on the exporter.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._opened = contextlib.ExitStack()

    @property
    def console_name(self) -> str:
        """The name console records carry (the node's name in the tree)."""
        return self.name or "root"

    @contextlib.contextmanager
    def stream(self, method: str = "connect") -> Iterator[ByteStream]:
        """The console's raw byte stream (not captured in the console log)."""
        with super().stream(method) as stream:
            yield stream

    @contextlib.contextmanager
    def pexpect(self, timeout: float | None = 30, encoding: str | None = None, **kwargs: Any) -> Iterator[ConsoleSpawn]:
        """A pexpect console (bytes mode unless ``encoding`` is given); received bytes are logged.

        Other keyword arguments (``maxread``, ``searchwindowsize``, ``logfile``, ``codec_errors``)
        go to :class:`ConsoleSpawn`.
        """
        with self.stream() as stream:
            console = ConsoleSpawn(
                stream, timeout=timeout, encoding=encoding, capture=ConsoleLog(self.console_name, self._uuid), **kwargs
            )
            try:
                yield console
            finally:
                console.close()

    def open(self, timeout: float | None = 30, encoding: str | None = None, **kwargs: Any) -> ConsoleSpawn:
        """Like :meth:`pexpect` without a ``with`` block; :meth:`close` (or the console's ``close()``) ends it."""
        return self._opened.enter_context(self.pexpect(timeout=timeout, encoding=encoding, **kwargs))

    def open_stream(self) -> ByteStream:
        """Like :meth:`stream` without a ``with`` block; :meth:`close` ends it."""
        return self._opened.enter_context(self.stream())

    def close(self) -> None:
        """Close the consoles and streams opened with :meth:`open` and :meth:`open_stream`.

        The connection stays up; leaving a ``with client:`` block closes it too.
        """
        self._opened.close()

    def __exit__(self, *exc_info: object) -> None:
        self.close()
        super().close()
