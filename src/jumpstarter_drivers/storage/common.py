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
    """A one-line progress display redrawn on ``stream`` (a terminal): bar, bytes, rate and ETA.

    Redraws at most every ``interval`` seconds, and once at the end (followed by a newline).

    >>> import io
    >>> out, now = io.StringIO(), iter([0.0, 2.0, 4.0])
    >>> bar = ProgressBar("upload", stream=out, width=10, clock=lambda: next(now))
    >>> bar(0, 2048); bar(1024, 2048); bar(2048, 2048)
    >>> [line.rstrip() for line in out.getvalue().split("\\r")[1:]]
    ['upload [..........]   0%  0 B / 2.0 KiB', 'upload [#####.....]  50%  1.0 KiB / 2.0 KiB  512 B/s  ETA 0:02', 'upload [##########] 100%  2.0 KiB / 2.0 KiB  512 B/s']
    """

    what: str = ""
    stream: TextIO | None = None
    width: int = 30
    interval: float = 0.1
    clock: Callable[[], float] = time.monotonic
    _start: float | None = field(default=None, init=False)
    _last: float = field(default=float("-inf"), init=False)
    _drawn: int = field(default=0, init=False)

    def __call__(self, done: int, total: int | None) -> None:
        import sys

        now = self.clock()
        if self._start is None:
            self._start = now
        finished = total is not None and done >= total
        if not finished and now - self._last < self.interval:
            return
        self._last = now
        elapsed = now - self._start
        rate = done / elapsed if elapsed > 0 else 0.0
        parts = [self.what] if self.what else []
        if total:
            filled = self.width * done // total
            parts.append(f"[{'#' * filled}{'.' * (self.width - filled)}] {100 * done // total:3d}%")
            parts.append(f" {_size(done)} / {_size(total)}")
        else:
            parts.append(_size(done))
        if rate:
            parts.append(f" {_size(int(rate))}/s")
            if total and not finished:
                left = int((total - done) / rate)
                parts.append(f" ETA {left // 60}:{left % 60:02d}")
        line = " ".join(parts)
        stream = self.stream or sys.stderr
        stream.write("\r" + line.ljust(self._drawn))
        self._drawn = len(line)
        if finished:
            stream.write("\n")
        stream.flush()


def default_progress(what: str) -> ProgressCallback:
    """What a transfer shows when the caller gives no ``progress``: a :class:`ProgressBar` on stderr
    when it is a terminal, else a :class:`ProgressLog` (quiet unless INFO logs are shown)."""
    import sys

    stream = sys.stderr
    if stream is not None and stream.isatty():
        return ProgressBar(what, stream=stream)
    return ProgressLog(what)


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
