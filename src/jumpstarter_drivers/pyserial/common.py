"""What both sides of a serial console share: the console log contract.

Bytes a test reads from a console (through :meth:`PySerialClient.pexpect` or
:meth:`PySerialClient.open`) are also logged, one record per line, so a test's log shows what
the board printed:

- logger ``jumpstarter.console.<node name>`` (a child of :data:`CONSOLE_LOGGER`), level INFO;
- the message is one line, without its ``\\n`` or ``\\r\\n``, decoded as UTF-8 (bad bytes
  become U+FFFD);
- the record carries ``console=<node name>`` and ``driver_uuid=<the node's uuid>`` (the pytest
  plugin names the console by the node's full path from it);
- the record's time is when the line's first byte arrived;
- a line longer than :data:`MAX_LINE` bytes is logged in pieces; an unfinished line (a prompt
  such as ``login:``) is logged when the test sends something, when :func:`flush_consoles` runs
  (the plugin calls it at the end of each test phase), and when the console closes.

>>> import logging
>>> log = ConsoleLog("serial")
>>> log.logger.name
'jumpstarter.console.serial'
>>> log.feed(b"U-Boot 2024.01\\r\\nHit any key")
>>> log.close()
"""

from __future__ import annotations

import logging
import threading
import time
import weakref

#: Parent logger of every console capture.
CONSOLE_LOGGER = "jumpstarter.console"

#: A line longer than this many bytes is logged in pieces (a board printing binary never ends its line).
MAX_LINE = 4096

DEFAULT_BAUDRATE = 115200

_open_logs: weakref.WeakSet[ConsoleLog] = weakref.WeakSet()


class ConsoleLog:
    """Splits console bytes into lines and logs each on ``jumpstarter.console.<name>``."""

    def __init__(self, name: str, uuid: str | None = None) -> None:
        self.name = name
        self.uuid = uuid
        self.logger = logging.getLogger(f"{CONSOLE_LOGGER}.{name}")
        self._partial = b""
        self._since = 0.0  # when the unfinished line's first byte arrived
        self._lock = threading.Lock()
        _open_logs.add(self)

    def feed(self, data: bytes) -> None:
        """Log every line ``data`` completes; keep the unfinished rest for later."""
        now = time.time()
        with self._lock:
            if not self._partial:
                self._since = now
            lines = (self._partial + data).split(b"\n")
            self._partial = lines.pop()
            for line in lines:
                self._emit(line, self._since)
                self._since = now
            while len(self._partial) > MAX_LINE:
                self._emit(self._partial[:MAX_LINE], self._since)
                self._partial = self._partial[MAX_LINE:]

    def flush(self) -> None:
        """Log the unfinished line now, if any (what follows it starts a new record)."""
        with self._lock:
            if self._partial:
                self._emit(self._partial, self._since)
                self._partial = b""

    def close(self) -> None:
        """Log the unfinished last line, if any; :func:`flush_consoles` no longer reaches this log."""
        self.flush()
        _open_logs.discard(self)

    def _emit(self, line: bytes, created: float) -> None:
        if not self.logger.isEnabledFor(logging.INFO):
            return
        text = line.removesuffix(b"\r").decode("utf-8", "replace")
        extra = {"console": self.name, "driver_uuid": self.uuid}
        record = self.logger.makeRecord(self.logger.name, logging.INFO, __file__, 0, "%s", (text,), None, extra=extra)
        record.created = created
        record.msecs = (created - int(created)) * 1000
        self.logger.handle(record)


def flush_consoles() -> None:
    """Log the unfinished line of every open console log (the prompt a board waits at)."""
    for log in list(_open_logs):
        log.flush()
