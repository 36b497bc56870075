"""Types both sides of a storage driver share: file facts and transfer progress."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TextIO

#: Bytes read from a file per chunk of a transfer; one chunk becomes one stream frame.
CHUNK = 1 << 20

#: Called as ``progress(done, total)`` during a transfer (``total`` is ``None`` when unknown).
ProgressCallback = Callable[[int, "int | None"], None]


@dataclass(frozen=True)
class FileStat:
    """What :meth:`StorageClient.stat` reports about a path in the storage root.

    >>> FileStat(size=1024, mtime=0.0, is_dir=False).size
    1024
    """

    size: int
    mtime: float
    is_dir: bool = False


@dataclass
class ProgressLog:
    """Logs a transfer's progress at INFO at most every ``interval`` seconds, and once at the end.

    The default progress of :meth:`StorageClient.write_from_path` and ``read_into_path``.

    >>> progress = ProgressLog("upload kernel")
    >>> progress(0, 1024); progress(1024, 1024)
    """

    what: str
    interval: float = 2.0
    logger: logging.Logger = field(default_factory=lambda: logging.getLogger("jumpstarter_drivers.storage"))
    _start: float = field(default_factory=time.monotonic, init=False)
    _last: float = field(default=0.0, init=False)

    def __call__(self, done: int, total: int | None) -> None:
        now = time.monotonic()
        finished = total is not None and done >= total
        if not finished and now - self._last < self.interval:
            return
        self._last = now
        elapsed = max(now - self._start, 1e-6)
        rate = done / elapsed / 1e6
        if total:
            self.logger.info("%s: %d/%d bytes (%.0f%%), %.1f MB/s", self.what, done, total, 100 * done / total, rate)
        else:
            self.logger.info("%s: %d bytes, %.1f MB/s", self.what, done, rate)


@dataclass
class ProgressBar:
    """A one-line text progress bar redrawn on ``stream`` (a terminal); pass it as ``progress=``.

    >>> import io
    >>> out = io.StringIO()
    >>> bar = ProgressBar(stream=out, width=10)
    >>> bar(512, 1024); bar(1024, 1024)
    >>> out.getvalue().splitlines()[-1].strip()
    '[##########] 100%  1.0 KiB'
    """

    stream: TextIO | None = None
    width: int = 30

    def __call__(self, done: int, total: int | None) -> None:
        import sys

        stream = self.stream or sys.stderr
        if total:
            filled = self.width * done // total
            line = f"[{'#' * filled}{'.' * (self.width - filled)}] {100 * done // total:3d}%  {_size(done)}"
        else:
            line = f"{_size(done)}"
        stream.write("\r" + line)
        if total is not None and done >= total:
            stream.write("\n")
        stream.flush()


def _size(n: int) -> str:
    """Human-readable byte count.

    >>> _size(3 << 30)
    '3.0 GiB'
    """
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.1f} {unit}" if unit != "B" else f"{n} B"
        value /= 1024
    return f"{n} B"
