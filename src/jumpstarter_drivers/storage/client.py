"""Storage client: put files on the exporter and get them back, from a test.

Small payloads travel inside a call as base64 (``write_bytes``/``read_bytes``); files move
through a protocol resource in 1 MiB chunks (``write_from_path``/``read_into_path``), so memory
stays flat whatever the size, and progress is reported as they go.
"""

from __future__ import annotations

import base64
import builtins
import contextlib
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from ..core.client import DriverClient
from ..core.errors import DriverError, DriverTimeout
from .common import CHUNK, FileStat, ProgressCallback, default_progress

#: How often a download checks whether the driver call failed while no bytes arrive.
_POLL = 0.2


class StorageClient(DriverClient):
    """Client of :class:`~jumpstarter_drivers.storage.driver.Storage`; paths are relative to its root."""

    def write_bytes(self, path: str, data: bytes) -> int:
        """Write ``data`` to ``path`` (small files; use :meth:`write_from_path` for images)."""
        return self.call_as(int, "write_bytes", path, base64.b64encode(bytes(data)).decode("ascii"))

    def read_bytes(self, path: str) -> bytes:
        """The content of ``path`` (at most 16 MiB; use :meth:`read_into_path` for more)."""
        return base64.b64decode(self.call_as(str, "read_bytes", path))

    def write_from_path(
        self, dst: str, src: str | os.PathLike, progress: ProgressCallback | None = None, timeout: float = 60.0
    ) -> int:
        """Upload the local file ``src`` to ``dst`` in the root; returns the bytes written.

        ``progress(done, total)`` is called as chunks go out (by default a progress bar on a
        terminal, else log records: see :func:`~jumpstarter_drivers.storage.common.default_progress`).
        ``timeout`` bounds the wait for the driver once every byte is sent.
        """
        src = Path(src)
        total = src.stat().st_size
        progress = progress or default_progress(f"upload {src.name} -> {dst}")
        with (
            self.resource() as (handle, stream),
            _background(self.call_as, int, "write_from_resource", dst, handle, total) as call,
        ):
            done = 0
            progress(0, total)
            with src.open("rb") as source:
                # The driver drains the stream when it fails, so sending never blocks for good.
                while not call.done() and (chunk := source.read(CHUNK)):
                    stream.send(chunk)
                    done += len(chunk)
                    progress(done, total)
            stream.send_eof()
            written = _result(call, timeout, f"upload of {src} to {dst}")
        if written != total:
            raise DriverError(f"upload of {src} to {dst}: the driver wrote {written} of {total} bytes")
        return written

    def read_into_path(
        self, src: str, dst: str | os.PathLike, progress: ProgressCallback | None = None, timeout: float = 60.0
    ) -> int:
        """Download ``src`` from the root into the local file ``dst``; returns the bytes read.

        ``dst`` is replaced only once every byte has arrived. ``timeout`` bounds any stall.
        """
        dst = Path(dst)
        total = self.stat(src).size
        progress = progress or default_progress(f"download {src} -> {dst}")
        fd, temp = tempfile.mkstemp(dir=dst.parent, prefix=f".{dst.name}.", suffix=".part")
        try:
            with (
                os.fdopen(fd, "wb") as out,
                self.resource() as (handle, stream),
                _background(self.call_as, int, "read_into_resource", src, handle) as call,
            ):
                done = 0
                progress(0, total)
                stalled_since = time.monotonic()
                while True:
                    try:
                        data = stream.receive(_POLL)
                    except TimeoutError:
                        if call.done() and call.exception() is not None:
                            raise call.exception() from None
                        if time.monotonic() - stalled_since > timeout:
                            raise DriverTimeout(f"download of {src}: no data for {timeout:g} s") from None
                        continue
                    if not data:
                        break
                    out.write(data)
                    done += len(data)
                    stalled_since = time.monotonic()
                    progress(done, max(total, done))
                sent = _result(call, timeout, f"download of {src}")
            if sent != done:
                raise DriverError(f"download of {src}: the driver sent {sent} bytes but {done} arrived")
            os.replace(temp, dst)
        finally:
            Path(temp).unlink(missing_ok=True)
        return done

    def exists(self, path: str) -> bool:
        """Whether ``path`` exists in the root."""
        return self.call_as(bool, "exists", path)

    def delete(self, path: str) -> bool:
        """Delete a file or directory tree; ``False`` when nothing was there."""
        return self.call_as(bool, "delete", path)

    def list(self, path: str = ".", recursive: bool = False) -> builtins.list[str]:
        """Paths (relative to the root) under the directory ``path``; every file below it when ``recursive``."""
        return self.call_as(builtins.list[str], "list", path, recursive)

    def stat(self, path: str) -> FileStat:
        """Size, modification time and kind of ``path``."""
        return self.call_as(FileStat, "stat", path)

    def hash(self, path: str, algo: str = "sha256") -> str:
        """Hex digest of ``path`` computed on the exporter (compare it with a local ``hashlib``)."""
        return self.call_as(str, "hash", path, algo)


class ServedDirectoryClient(DriverClient):
    """Client of a :class:`~jumpstarter_drivers.storage.served.ServedDirectory` (the TFTP and HTTP servers).

    ``storage`` is the served root's storage; :meth:`put_file` uploads there and returns
    :meth:`location`, what a board asks for to fetch the file.
    """

    storage: StorageClient

    def start(self) -> None:
        """Start the server (nothing happens when it runs already)."""
        self.call("start")

    def stop(self) -> None:
        """Stop the server."""
        self.call("stop")

    def get_host(self) -> str:
        """The address the server listens on."""
        return self.call_as(str, "get_host")

    def get_port(self) -> int:
        """The port the server is bound to."""
        return self.call_as(int, "get_port")

    def location(self, name: str) -> str:
        """What a board asks the server for to fetch ``name`` from the root: the name itself."""
        return name

    def put_file(self, dst: str, src: str | os.PathLike, progress: ProgressCallback | None = None) -> str:
        """Upload ``src`` as ``dst`` in the served root; returns its :meth:`location`."""
        self.storage.write_from_path(dst, src, progress)
        return self.location(dst)


@contextlib.contextmanager
def _background(func: Callable[..., int], *args: object) -> Iterator[Future]:
    """Run the driver call ``func(*args)`` in a worker thread while the caller moves the bytes."""
    pool = ThreadPoolExecutor(1, "jumpstarter-storage")
    try:
        yield pool.submit(func, *args)
    finally:
        pool.shutdown(wait=False)


def _result(call: Future, timeout: float, what: str) -> int:
    try:
        return call.result(timeout)
    except TimeoutError:
        raise DriverTimeout(f"{what}: the driver did not finish within {timeout:g} s") from None
