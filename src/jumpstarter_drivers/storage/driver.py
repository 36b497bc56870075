"""Storage: files in one directory on the exporter, reachable from tests and from other drivers.

TFTP and HTTP servers and flashers keep a ``Storage`` child rooted where they serve from. Every
path a client names is relative to ``root_dir`` and must stay inside it; bytes move through
protocol resources, so a multi-GB image moves with constant memory.

>>> import tempfile
>>> root = tempfile.mkdtemp()
>>> storage = Storage(root_dir=root)
>>> storage.resolve("images/kernel").relative_to(storage.root).as_posix()
'images/kernel'
>>> storage.resolve("../etc/passwd")  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
jumpstarter_drivers.core.errors.DriverInvalidArgument: '../etc/passwd' leaves the storage root (contains '..'); ...
"""

from __future__ import annotations

import base64
import binascii
import builtins
import contextlib
import errno
import fcntl
import hashlib
import logging
import os
import shutil
import stat
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import anyio

from ..core.driver import Driver, export
from ..core.errors import ConfigurationError, DriverError, DriverInvalidArgument
from .common import CHUNK, FileStat

#: Largest file ``read_bytes`` returns; bigger ones go through ``read_into_path``.
MAX_INLINE = 16 << 20

_END = (anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError)


#: Real directories that are never a storage root: everything under them belongs to the system.
SYSTEM_TREES = ("/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/libx32", "/proc", "/sbin", "/sys", "/usr")
#: Real directories that are no storage root themselves (their subdirectories may be).
SYSTEM_DIRS = ("/", "/home", "/media", "/mnt", "/opt", "/root", "/run", "/srv", "/tmp", "/var", "/var/lib", "/var/tmp")


def inside(root: Path, name: str) -> tuple[Path | None, str]:
    """``(real path, "")`` of ``name`` under ``root``, or ``(None, why it leaves root)``.

    ``name`` is relative; absolute names, ``..`` components, NUL bytes and symbolic links that
    lead outside ``root`` leave it. ``root`` must already be a real (resolved) path.

    >>> inside(Path("/srv"), "../etc/passwd")
    (None, "contains '..'")
    """
    if "\0" in name:
        return None, "contains a NUL byte"
    if name.startswith("/") or os.path.isabs(name):
        return None, "is absolute"
    parts = PurePosixPath(name).parts
    if ".." in parts:
        return None, "contains '..'"
    path = Path(os.path.realpath(root.joinpath(*parts)))
    if path == root or path.is_relative_to(root):
        return path, ""
    return None, "leads through a symbolic link to a place outside the root"


def resolve_inside(root: Path, name: str, logger: logging.Logger | logging.LoggerAdapter | None = None) -> Path:
    """The real path of ``name`` under ``root``, refusing anything that would leave ``root``.

    ``name`` is relative (a leading ``/`` is refused); ``..`` components, NUL bytes and symbolic
    links that point outside the root raise :class:`DriverInvalidArgument`, logged at WARNING
    (without the root's path: driver logs reach clients).
    ``root`` must already be a real (resolved) path.
    """
    path, reason = inside(root, name)
    if path is not None:
        return path
    if logger is not None:
        logger.warning("refused path %r (it %s): paths must stay inside the storage root", name, reason)
    raise DriverInvalidArgument(f"{name!r} leaves the storage root ({reason}); name a path inside it")


@contextlib.contextmanager
def host_errors(path: str) -> Iterator[None]:
    """Re-raise an ``OSError`` that names files of the host (absolute paths) as a :class:`DriverError`
    naming ``path`` as the client gave it: error texts reach clients, the host's layout does not."""
    try:
        yield
    except OSError as exc:
        if exc.filename is None:
            raise
        raise DriverError(f"{path!r}: {exc.strerror or type(exc).__name__}") from None


def check_root(root_dir: str, owner: str) -> Path:
    """The real path of a configured storage root; refused: ``''`` and the current directory (or a folder
    holding it), system directories, the home directory, a folder holding it, and its hidden folders.

    >>> check_root("/etc/tftp", "Tftp")
    Traceback (most recent call last):
    ...
    jumpstarter_drivers.core.errors.ConfigurationError: Tftp: root_dir '/etc/tftp' is /etc/tftp, a system directory; ...
    """
    if not root_dir.strip():
        raise ConfigurationError(
            f"{owner}: root_dir {root_dir!r} is empty (it would serve the current directory); name a directory "
            "of its own, such as /srv/tftp"
        )
    real = Storage.real_root(root_dir)
    own = "name a directory of its own, such as /srv/tftp"
    if str(real) in SYSTEM_DIRS or any(real == Path(t) or real.is_relative_to(t) for t in SYSTEM_TREES):
        raise ConfigurationError(
            f"{owner}: root_dir {root_dir!r} is {real}, a system directory; clients would read and write its "
            f"files; {own}"
        )
    try:
        home: Path | None = Path(os.path.realpath(Path.home()))
    except RuntimeError:  # no home directory known for this user
        home = None
    if real == home:
        raise ConfigurationError(
            f"{owner}: root_dir {root_dir!r} is {real}, the home directory; name a directory of its own below it"
        )
    with contextlib.suppress(FileNotFoundError):  # a current directory since removed holds nothing
        cwd = Path(os.path.realpath(os.getcwd()))
        if cwd.is_relative_to(real):
            raise ConfigurationError(
                f"{owner}: root_dir {root_dir!r} is {real}, the current directory or a folder holding it (where "
                f"the exporter's own files are); {own}"
            )
    if home is not None and home.is_relative_to(real):
        raise ConfigurationError(f"{owner}: root_dir {root_dir!r} is {real}, which holds the home directory; {own}")
    if home is not None and real.is_relative_to(home) and real.relative_to(home).parts[0].startswith("."):
        hidden = home / real.relative_to(home).parts[0]
        raise ConfigurationError(
            f"{owner}: root_dir {root_dir!r} is in {hidden}, a hidden folder of the home directory (keys and "
            f"settings such as ~/.ssh, ~/.gnupg, ~/.config); {own}"
        )
    return real


@dataclass(kw_only=True)
class Storage(Driver):
    """Files under ``root_dir`` on the exporter (created if missing).

    With ``cleanup``, files written during the session are deleted when the driver closes.
    Writes land in a temporary file beside the target and are renamed over it, so a reader
    (a TFTP or HTTP server) never sees half a file.
    """

    root_dir: str
    cleanup: bool = False

    _created: set[Path] = field(default_factory=set, init=False, repr=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_root(self.root_dir, type(self).__name__)
        root = Path(self.root_dir).expanduser()
        if root.exists() and not root.is_dir():
            raise ConfigurationError(f"{type(self).__name__}: root_dir {self.root_dir!r} exists and is not a directory")
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigurationError(
                f"{type(self).__name__}: cannot create root_dir {self.root_dir!r}: {exc.strerror}"
            ) from None
        self.root = self.real_root(root)
        remove_stale_partials(self.root, self.logger)

    @staticmethod
    def real_root(root_dir: str | os.PathLike) -> Path:
        """The real path a ``root_dir`` names (user and symbolic links expanded)."""
        return Path(os.path.realpath(Path(root_dir).expanduser()))

    @classmethod
    def client(cls) -> str:
        return "jumpstarter_drivers.storage.client.StorageClient"

    def resolve(self, path: str) -> Path:
        """The real path of ``path`` inside the root; traversal raises :class:`DriverInvalidArgument`."""
        return resolve_inside(self.root, path, self.logger)

    def _file(self, path: str) -> Path:
        target = self.resolve(path)
        with host_errors(path):
            if not target.is_file():
                raise FileNotFoundError(f"no file {path!r} in the storage root")
        return target

    def _open(self, path: str) -> Any:
        """The file ``path`` opened for reading (errors name ``path``, not the host's paths)."""
        target = self._file(path)
        with host_errors(path):
            return target.open("rb")

    # writing --------------------------------------------------------------------------------

    def _begin_write(self, path: str) -> tuple[Path, Path, Any]:
        target = self.resolve(path)
        with host_errors(path):
            if target == self.root or target.is_dir():
                raise DriverInvalidArgument(f"{path!r} is a directory in the storage root; name a file")
            missing = [p for p in reversed(target.parents) if p.is_relative_to(self.root) and not p.exists()]
            target.parent.mkdir(parents=True, exist_ok=True)
            if self.cleanup:
                self._created.update(missing)
            stem = os.fsdecode(os.fsencode(target.name)[:PARTIAL_STEM])  # '.STEM.XXXXXXXX.part' fits in 255 bytes
            fd, temp = tempfile.mkstemp(dir=target.parent, prefix=f".{stem}.", suffix=PARTIAL_SUFFIX)
        os.fchmod(fd, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)  # held while open: remove_stale_partials leaves a live writer's file alone
        return target, Path(temp), os.fdopen(fd, "wb")

    def _commit(self, path: str, target: Path, temp: Path) -> None:
        existed = target.exists()
        with host_errors(path):
            os.replace(temp, target)
        if self.cleanup and not existed:
            self._created.add(target)

    def write_local(self, path: str, data: bytes) -> int:
        """Write ``data`` to ``path`` atomically (for drivers on the exporter); returns its length."""
        return self.write_chunks(path, [data])

    def write_chunks(self, path: str, chunks: Iterable[bytes]) -> int:
        """Write ``path`` atomically from ``chunks`` (for drivers on the exporter); returns the bytes written.

        Whatever fails midway (the source, a full disk) leaves ``path`` as it was and no partial file.
        """
        target, temp, out = self._begin_write(path)
        written = 0
        try:
            with out:
                for chunk in chunks:
                    out.write(chunk)
                    written += len(chunk)
            self._commit(path, target, temp)
        finally:
            temp.unlink(missing_ok=True)
        return written

    @export
    def write_bytes(self, path: str, data: str) -> int:
        """Write a small file; ``data`` is the content in base64 (the wire carries text only)."""
        try:
            raw = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise DriverInvalidArgument(
                f"write_bytes({path!r}): data must be base64 text; StorageClient.write_bytes encodes it for you"
            ) from None
        return self.write_local(path, raw)

    @export
    async def write_from_resource(self, path: str, handle: dict, size: int = -1) -> int:
        """Write ``path`` from a client resource stream (``StorageClient.write_from_path``); returns bytes written.

        With ``size`` (not -1) a stream that ends early or runs long leaves ``path`` untouched.
        On failure the rest of the stream is read and dropped, so the sender never stalls.
        """
        from ..core.session import current_session

        async with current_session.get().open_resource(handle) as stream:
            try:
                target, temp, out = self._begin_write(path)
            except Exception:
                await _drain(stream)
                raise
            written = 0
            try:
                try:
                    with out:
                        while True:
                            try:
                                chunk = await stream.receive(CHUNK)
                            except _END:
                                break
                            await anyio.to_thread.run_sync(out.write, chunk)
                            written += len(chunk)
                except Exception:
                    await _drain(stream)
                    raise
                if size >= 0 and written != size:
                    raise DriverError(
                        f"write {path!r}: the stream ended after {written} of {size} bytes; {path!r} is unchanged"
                    )
                self._commit(path, target, temp)
            finally:
                temp.unlink(missing_ok=True)
        self.logger.info("wrote %s (%d bytes)", path, written)
        return written

    # reading --------------------------------------------------------------------------------

    @export
    def read_bytes(self, path: str) -> str:
        """A small file's content in base64 (at most 16 MiB; use ``read_into_path`` for more)."""
        with self._open(path) as source:
            size = os.fstat(source.fileno()).st_size
            if size > MAX_INLINE:
                raise DriverInvalidArgument(
                    f"{path!r} is {size} bytes, more than read_bytes returns ({MAX_INLINE}); use read_into_path"
                )
            return base64.b64encode(source.read()).decode("ascii")

    @export
    async def read_into_resource(self, path: str, handle: dict) -> int:
        """Send ``path`` into a client resource stream (``StorageClient.read_into_path``); returns bytes sent."""
        from ..core.session import current_session

        async with current_session.get().open_resource(handle) as stream:
            sent = 0
            with self._open(path) as source:
                while chunk := await anyio.to_thread.run_sync(source.read, CHUNK):
                    await stream.send(chunk)
                    sent += len(chunk)
            with contextlib.suppress(*_END):
                await stream.send_eof()
        self.logger.info("read %s (%d bytes)", path, sent)
        return sent

    # facts ----------------------------------------------------------------------------------

    @export
    def exists(self, path: str) -> bool:
        """Whether ``path`` exists in the root."""
        target = self.resolve(path)
        with host_errors(path):
            return target.exists()

    @export
    def stat(self, path: str) -> FileStat:
        """Size, modification time and kind of ``path``."""
        target = self.resolve(path)
        with host_errors(path):
            if not target.exists():
                raise FileNotFoundError(f"no file {path!r} in the storage root")
            st = target.stat()
        return FileStat(size=st.st_size, mtime=st.st_mtime, is_dir=stat.S_ISDIR(st.st_mode))

    @export
    def list(self, path: str = ".", recursive: bool = False) -> builtins.list[str]:
        """Names under the directory ``path``, relative to the root, sorted (files only when ``recursive``)."""
        target = self.resolve(path)
        with host_errors(path):
            if not target.is_dir():
                raise NotADirectoryError(f"{path!r} is not a directory in the storage root")
            entries = [p for p in target.rglob("*") if p.is_file()] if recursive else builtins.list(target.iterdir())
        return sorted(p.relative_to(self.root).as_posix() for p in entries if not _is_partial(p))

    @export
    def hash(self, path: str, algo: str = "sha256") -> str:
        """Hex digest of a file (``algo``: any of hashlib's guaranteed algorithms)."""
        if algo not in hashlib.algorithms_guaranteed:
            raise DriverInvalidArgument(
                f"unknown hash algorithm {algo!r}; use one of {', '.join(sorted(hashlib.algorithms_guaranteed))}"
            )
        digest = hashlib.new(algo)
        with self._open(path) as source:
            while chunk := source.read(CHUNK):
                digest.update(chunk)
        return digest.hexdigest(*(() if not algo.startswith("shake") else (32,)))

    @export
    def delete(self, path: str) -> bool:
        """Delete a file or a directory tree; ``False`` when nothing was there. The root cannot go.

        A symbolic link is deleted itself; what it points to stays.
        """
        if self.resolve(path) == self.root:
            raise DriverInvalidArgument("refusing to delete the storage root itself; name a path inside it")
        name = PurePosixPath(path)
        entry = self.resolve(str(name.parent)) / name.name  # the name itself, not where a link leads
        with host_errors(path):
            if entry.is_symlink():
                entry.unlink()
            elif entry.is_dir():
                shutil.rmtree(entry)
            elif entry.exists():
                entry.unlink()
            else:
                return False
        self.logger.info("deleted %s", path)
        return True

    def close(self) -> None:
        """Delete what this session created when ``cleanup`` is set, then close children."""
        try:
            if self.cleanup and self._created:
                removed = 0
                for path in sorted(self._created, key=lambda p: len(p.parts), reverse=True):
                    try:
                        path.rmdir() if path.is_dir() and not path.is_symlink() else path.unlink()
                        removed += 1
                    except FileNotFoundError:
                        continue
                    except OSError as exc:
                        self.logger.warning("cleanup: kept %s: %s", path, exc.strerror)
                self.logger.info("cleanup: removed %d path(s) created in %s", removed, self.root)
                self._created.clear()
        finally:
            super().close()


PARTIAL_SUFFIX = ".part"
#: Bytes of a file's name its partial file keeps: with the dots, 8 random characters and the suffix, 255.
PARTIAL_STEM = 255 - 2 - 8 - len(PARTIAL_SUFFIX)


def _is_partial(path: Path) -> bool:
    return path.name.startswith(".") and path.name.endswith(PARTIAL_SUFFIX)


def remove_stale_partials(root: Path, logger: logging.Logger | logging.LoggerAdapter) -> int:
    """Delete the partial files (``.NAME.XXXX.part``) under ``root`` that no live writer holds; how many.

    A writer holds an exclusive ``flock`` on its partial file until it commits or fails, and the
    kernel drops it when the writer dies (even by SIGKILL), so a partial file that can be locked
    is left over. Symbolic links are neither followed nor removed: only regular files of the
    root's own tree go.
    """
    removed = 0
    for directory, _, files, dir_fd in os.fwalk(root):  # by directory descriptors, never through a link
        for name in files:
            if not _is_partial(Path(name)):
                continue
            relative = Path(directory, name).relative_to(root)
            try:
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dir_fd)
            except OSError as exc:  # a link (ELOOP), or gone meanwhile
                if exc.errno not in (errno.ELOOP, errno.ENOENT):
                    logger.warning("cannot check partial file %s: %s", relative, exc.strerror)
                continue
            try:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    continue
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # a live writer's
                os.unlink(name, dir_fd=dir_fd)
                removed += 1
            finally:
                os.close(fd)
    if removed:
        logger.info("removed %d partial file(s) left by an interrupted write", removed)
    return removed


async def _drain(stream: Any) -> None:
    """Read and drop the rest of a stream, so the peer's sender finishes."""
    with contextlib.suppress(*_END):
        while await stream.receive(CHUNK):
            pass
