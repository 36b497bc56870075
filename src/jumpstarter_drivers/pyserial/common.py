"""What both sides of a serial console share: the console log contract.

Bytes a test reads from a console (through :meth:`PySerialClient.pexpect` or
:meth:`PySerialClient.open`) are also logged, one record per line, so a test's log shows what
the board printed:

- logger ``jumpstarter.console.<node name>`` (a child of :data:`CONSOLE_LOGGER`), level INFO;
- the message is one line, without its ``\\n`` or ``\\r\\n``, decoded as UTF-8 (bad bytes
  become U+FFFD);
- the record carries ``console=<node name>``;
- a line longer than :data:`MAX_LINE` bytes is logged in pieces, and an unfinished last line
  is logged when the console closes.

>>> import logging
>>> log = ConsoleLog("serial")
>>> log.logger.name
'jumpstarter.console.serial'
>>> log.feed(b"U-Boot 2024.01\\r\\nHit any key")
>>> log.close()
"""

from __future__ import annotations

import logging

#: Parent logger of every console capture.
CONSOLE_LOGGER = "jumpstarter.console"

#: A line longer than this many bytes is logged in pieces (a board printing binary never ends its line).
MAX_LINE = 4096

DEFAULT_BAUDRATE = 115200


class ConsoleLog:
    """Splits console bytes into lines and logs each on ``jumpstarter.console.<name>``."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.logger = logging.getLogger(f"{CONSOLE_LOGGER}.{name}")
        self._partial = b""

    def feed(self, data: bytes) -> None:
        """Log every line ``data`` completes; keep the unfinished rest for later."""
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            self._emit(line)
        while len(self._partial) > MAX_LINE:
            self._emit(self._partial[:MAX_LINE])
            self._partial = self._partial[MAX_LINE:]

    def close(self) -> None:
        """Log the unfinished last line, if any."""
        if self._partial:
            self._emit(self._partial)
            self._partial = b""

    def _emit(self, line: bytes) -> None:
        text = line.removesuffix(b"\r").decode("utf-8", "replace")
        self.logger.info("%s", text, extra={"console": self.name})
