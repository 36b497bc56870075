"""One user of a power strip at a time, across threads and processes of this machine.

The strip serves one web session and one request at a time, so every operation on it holds
an exclusive ``flock`` on a lock file named after the strip. ``flock`` locks belong to an
open file, so two threads of one process exclude each other as two processes do.

>>> import tempfile, pathlib
>>> path = pathlib.Path(tempfile.mkdtemp()) / "strip.lock"
>>> with strip_lock(path, timeout=1.0, what="strip"):
...     pass
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from ..core.errors import DriverTimeout

_POLL_MIN = 0.005
_POLL_MAX = 0.05

# One lock per lock file inside this process, so threads queue on it instead of polling flock.
_thread_locks: dict[str, threading.Lock] = {}
_thread_locks_guard = threading.Lock()


def default_lock_dir() -> Path:
    """``$XDG_RUNTIME_DIR/jumpstarter-drivers/energenie``, or a per-user folder in the temp dir."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return Path(runtime) / "jumpstarter-drivers" / "energenie"
    return Path(tempfile.gettempdir()) / f"jumpstarter-drivers-{os.getuid()}" / "energenie"


def lock_path_for(host: str, port: int, lock_dir: Path) -> Path:
    """The lock file of the strip at ``host:port``.

    >>> lock_path_for("::1", 8080, Path("/run/x")).name
    '__1_8080.lock'
    """
    return lock_dir / (re.sub(r"[^A-Za-z0-9_.-]", "_", f"{host}_{port}") + ".lock")


def _holder(fd: int) -> str:
    try:
        text = os.pread(fd, 64, 0).decode(errors="replace").strip()
    except OSError:
        return ""
    return f" (held by process {text})" if text else ""


@contextlib.contextmanager
def strip_lock(path: Path, timeout: float, what: str) -> Iterator[None]:
    """Hold the exclusive lock at ``path``; :class:`DriverTimeout` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    with _thread_locks_guard:
        thread_lock = _thread_locks.setdefault(str(path), threading.Lock())
    if not thread_lock.acquire(timeout=timeout):
        raise DriverTimeout(
            f"{what}: another thread kept the strip busy for {timeout:g} s; raise lock_timeout if its "
            "operations are slow"
        )
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            _flock_until(fd, deadline, timeout, what, path)
            try:
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)
    finally:
        thread_lock.release()


def _flock_until(fd: int, deadline: float, timeout: float, what: str, path: Path) -> None:
    """Take the ``flock``, polling with a growing interval until ``deadline``."""
    interval = _POLL_MIN
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DriverTimeout(
                    f"{what}: another process kept the strip busy for {timeout:g} s{_holder(fd)}; lock file "
                    f"{path}; raise lock_timeout if its operations are slow"
                ) from None
            time.sleep(min(interval, remaining))
            interval = min(interval * 2, _POLL_MAX)
