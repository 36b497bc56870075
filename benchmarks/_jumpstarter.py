"""Jumpstarter 0.9.0 measured the way a user of it moves bytes: its own session, driver and client.

A small Jumpstarter driver beside ours in ``core.py``: it counts what a resource or a byte
stream brings, sends a pattern back, writes a resource into a file and reads a file into one.
The client side uses Jumpstarter's public API (``resource_async``, ``stream``, ``call``).
Imported only when Jumpstarter 0.9.0 is installed (the ``interop`` extra).
"""

from __future__ import annotations

import contextlib
import os
import select
import subprocess
import sys
import time
import warnings
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import ObjectStream
from jumpstarter.driver import Driver, export, exportstream
from jumpstarter.exporter import Session
from jumpstarter.streams.common import create_memory_stream

from jumpstarter_drivers.core.processes import stop_process

warnings.filterwarnings("ignore", category=RuntimeWarning)  # its session leaves a coroutine un-awaited

PATTERN = (bytes(range(256)) * 4096)[: 1 << 20]


class JBench(Driver):
    """The Jumpstarter twin of ``core.Bench``."""

    @classmethod
    def client(cls) -> str:
        return "jumpstarter.client.DriverClient"

    @export
    async def nothing(self) -> None:
        return None

    @export
    async def items(self, n: int) -> Any:
        for i in range(int(n)):
            yield i

    @export
    async def up(self, handle: Any) -> int:
        total = 0
        async with self.resource(handle) as stream:
            with contextlib.suppress(anyio.EndOfStream):
                while True:
                    total += len(await stream.receive())
        return total

    @export
    async def down(self, handle: Any, size: int, write: int) -> int:
        chunk = PATTERN[: int(write)] if write <= len(PATTERN) else b"\x5a" * int(write)
        sent = 0
        async with self.resource(handle) as stream:
            while sent < size:
                await stream.send(chunk)
                sent += len(chunk)
        return sent

    @export
    async def write_file(self, handle: Any, path: str) -> int:
        written = 0
        async with self.resource(handle) as stream, await anyio.open_file(path, "wb") as out:
            with contextlib.suppress(anyio.EndOfStream):
                while True:
                    chunk = await stream.receive()
                    await out.write(chunk)
                    written += len(chunk)
        return written

    @export
    async def read_file(self, handle: Any, path: str) -> int:
        sent = 0
        async with self.resource(handle) as stream, await anyio.open_file(path, "rb") as source:
            while chunk := await source.read(1 << 20):
                await stream.send(chunk)
                sent += len(chunk)
        return sent

    @exportstream
    @asynccontextmanager
    async def sink(self) -> AsyncIterator[ObjectStream]:
        """Counts what it receives; sends the count back as text at the end."""
        near, far = create_memory_stream()

        async def count() -> None:
            total = 0
            with contextlib.suppress(anyio.EndOfStream, anyio.ClosedResourceError):
                while True:
                    total += len(await far.receive())
            with contextlib.suppress(anyio.ClosedResourceError, anyio.BrokenResourceError):
                await far.send(str(total).encode())
                await far.aclose()

        async with anyio.create_task_group() as tg:
            tg.start_soon(count)
            yield near
            tg.cancel_scope.cancel()

    @asynccontextmanager
    async def _produce(self, write: int) -> AsyncIterator[ObjectStream]:
        near, far = create_memory_stream()
        chunk = PATTERN[:write]

        async def produce() -> None:
            with contextlib.suppress(anyio.ClosedResourceError, anyio.BrokenResourceError):
                while True:
                    await far.send(chunk)

        async with anyio.create_task_group() as tg:
            tg.start_soon(produce)
            yield near
            tg.cancel_scope.cancel()

    @exportstream
    @asynccontextmanager
    async def source(self) -> AsyncIterator[ObjectStream]:
        """Sends the pattern in 1 MiB writes until the client goes."""
        async with self._produce(1 << 20) as stream:
            yield stream

    @exportstream
    @asynccontextmanager
    async def source64(self) -> AsyncIterator[ObjectStream]:
        """Sends the pattern in 64 KiB writes until the client goes."""
        async with self._produce(64 << 10) as stream:
            yield stream


@contextlib.contextmanager
def client_of(path: str | os.PathLike) -> Iterator[Any]:
    """Jumpstarter's own client (``env()``) of the session at the unix socket ``path``."""
    from jumpstarter.utils.env import env

    saved = {k: os.environ.get(k) for k in ("JUMPSTARTER_HOST", "JMP_DRIVERS_ALLOW")}
    os.environ.update(JUMPSTARTER_HOST=str(path), JMP_DRIVERS_ALLOW="UNSAFE")
    try:
        with env() as client:
            yield client
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def served() -> Iterator[Any]:
    """Jumpstarter's session serving :class:`JBench` on a unix socket in this process, and its client."""
    with Session(root_device=JBench()) as session, session.serve_unix() as path, client_of(path) as client:
        yield client


@contextlib.contextmanager
def served_process() -> Iterator[Any]:
    """The same session in a child process of its own (as an exporter runs), and a client here."""
    child = subprocess.Popen(
        [sys.executable, __file__], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    try:
        assert child.stdout is not None
        if not select.select([child.stdout], [], [], 30)[0]:
            raise RuntimeError("Jumpstarter's session did not start within 30 s")
        with client_of(child.stdout.readline().strip()) as client:
            yield client
    finally:
        if child.stdin is not None:
            child.stdin.close()
        try:
            child.wait(10)
        except subprocess.TimeoutExpired:
            stop_process(child)


class _Source(ObjectStream[bytes]):
    """What a Jumpstarter resource upload reads from: ``size`` bytes in writes of ``write`` bytes, or a file."""

    def __init__(self, size: int, write: int, path: Path | None = None) -> None:
        self.left = size
        self.chunk = b"\x5a" * write
        self.file = path.open("rb") if path else None

    async def receive(self) -> bytes:
        if self.file is not None:
            data = await anyio.to_thread.run_sync(self.file.read, 1 << 20)
            if not data:
                raise anyio.EndOfStream
            return data
        if self.left <= 0:
            raise anyio.EndOfStream
        self.left -= len(self.chunk)
        return self.chunk

    async def send(self, item: bytes) -> None:
        raise anyio.BrokenResourceError

    async def send_eof(self) -> None:
        pass

    async def aclose(self) -> None:
        if self.file is not None:
            self.file.close()


class _Sink(ObjectStream[bytes]):
    """What a Jumpstarter resource download writes into: counts bytes, or writes a file."""

    def __init__(self, path: Path | None = None) -> None:
        self.received = 0
        self.done = anyio.Event()
        self.file = path.open("wb") if path else None

    async def receive(self) -> bytes:
        await self.done.wait()
        raise anyio.EndOfStream

    async def send(self, item: bytes) -> None:
        if self.file is not None:
            await anyio.to_thread.run_sync(self.file.write, item)
        self.received += len(item)

    async def send_eof(self) -> None:
        self.done.set()

    async def aclose(self) -> None:
        self.done.set()
        if self.file is not None:
            self.file.close()


def resource_upload(client: Any, size: int, write: int, method: str = "up", *args: Any, path: Path | None = None) -> float:
    """Seconds a resource upload of ``size`` bytes (or the file ``path``) takes, to the driver's answer."""

    async def run() -> Any:
        async with client.resource_async(_Source(size, write, path)) as handle:
            return await client.call_async(method, handle, *args)

    started = time.perf_counter()
    moved = client.portal.call(run)
    elapsed = time.perf_counter() - started
    if path is None and moved != size:
        raise RuntimeError(f"Jumpstarter upload moved {moved} of {size} bytes")
    return elapsed


def resource_download(client: Any, size: int, write: int, method: str = "down", *args: Any, path: Path | None = None) -> float:
    """Seconds a resource download of ``size`` bytes (or into the file ``path``) takes, to the last byte."""

    async def run() -> int:
        sink = _Sink(path)
        async with client.resource_async(sink) as handle:
            sent = await client.call_async(method, handle, *args) if args else await client.call_async(
                method, handle, size, write
            )
            with anyio.fail_after(60):
                while sink.received < sent:
                    await anyio.sleep(0.001)  # the forwarder is still writing what was sent
        return sink.received

    started = time.perf_counter()
    moved = client.portal.call(run)
    elapsed = time.perf_counter() - started
    if path is None and moved != size:
        raise RuntimeError(f"Jumpstarter download moved {moved} of {size} bytes")
    return elapsed


if __name__ == "__main__":
    with Session(root_device=JBench()) as _session, _session.serve_unix() as _path:
        print(_path, flush=True)
        sys.stdin.read()
