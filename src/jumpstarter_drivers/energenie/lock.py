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
import errno
import fcntl
import os
import re
import stat
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from ..core.errors import DriverError, DriverTimeout

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


def ensure_lock_dir(path: Path) -> None:
    """Create ``path`` (mode ``0700``) if missing; :class:`DriverError` unless only this user can change it."""
    for folder in (*reversed(path.parents), path):
        try:
            os.mkdir(folder, 0o700)
        except FileExistsError:
            continue
        except OSError as exc:
            raise DriverError(
                f"cannot create lock directory {path}: {exc.strerror}; set 'lock_dir' to a directory of your own"
            ) from None
    uid = os.geteuid()
    info = os.lstat(path)
    fix = f"remove {path} (another user may have planted it) or set 'lock_dir' to a directory of your own"
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        raise DriverError(f"lock directory {path} is not a plain directory (a symbolic link?); {fix}")
    if info.st_uid != uid:
        raise DriverError(f"lock directory {path} belongs to uid {info.st_uid}, not to this user (uid {uid}); {fix}")
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise DriverError(
            f"lock directory {path} is writable by other users (mode {stat.S_IMODE(info.st_mode):04o}); "
            f"chmod 700 it, or {fix}"
        )
    parent = Path(os.path.realpath(path.parent))
    for folder in (parent, *parent.parents):
        info = os.stat(folder)
        shared = info.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not info.st_mode & stat.S_ISVTX
        if info.st_uid not in (0, uid) or shared:
            raise DriverError(
                f"lock directory {path} lies in {folder}, which another user can change (uid {info.st_uid}, "
                f"mode {stat.S_IMODE(info.st_mode):04o}); set 'lock_dir' to a directory of your own"
            )


def open_lock_file(path: Path) -> int:
    """The fd of the lock file at ``path`` (created ``0600``), never through a link; :class:`DriverError` else."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, 0o600)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise DriverError(
                f"lock file {path} is a symbolic link; remove it (it was not made by this driver)"
            ) from None
        raise DriverError(f"cannot open lock file {path}: {exc.strerror}") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid() or info.st_nlink != 1:
        os.close(fd)
        raise DriverError(
            f"lock file {path} is not a plain file of this user with a single link (uid {info.st_uid}, "
            f"{info.st_nlink} links); remove it (it was not made by this driver)"
        )
    return fd


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
        ensure_lock_dir(path.parent)
        fd = open_lock_file(path)
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
