"""Drivers the core tests serve: every kind of method and every way to fail."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator, Generator
from dataclasses import dataclass, field
from typing import Any

from tests.helpers.drivers import echo_pipe, resource_size

from jumpstarter_drivers import Driver, export, exportstream
from jumpstarter_drivers.core.session import current_session
from jumpstarter_drivers.core.streams import PipeStream


@dataclass
class Point:
    x: int
    y: float


@dataclass(kw_only=True)
class Sample(Driver):
    """A driver with one method of each shape."""

    gate: threading.Event = field(default_factory=threading.Event, repr=False)

    @export
    def add(self, a: int, b: int) -> int:
        """Add two integers (types restored from the annotations)."""
        assert type(a) is int and type(b) is int, (type(a), type(b))
        return a + b

    @export
    async def echo(self, value: Any) -> Any:
        return value

    @export
    def types_of(self, a: int, b: float, c: str, d: bool, e: list[int], f: dict[str, int], p: Point) -> list[str]:
        return [type(v).__name__ for v in (a, b, c, d, e, f, p)] + [type(e[0]).__name__, type(f["k"]).__name__]

    @export
    def optional(self, a: int, b: int = 10) -> int:
        return a + b

    @export
    def point(self) -> Point:
        return Point(x=3, y=4.5)

    @export
    def fail(self, kind: str) -> None:
        raise {
            "value": ValueError("bad value 42"),
            "notimpl": NotImplementedError("not on this device"),
            "timeout": TimeoutError("the device took too long"),
            "connection": ConnectionError("strip unreachable"),
            "os": FileNotFoundError(2, "No such file", "/dev/ttyX"),
            "runtime": RuntimeError("something broke"),
        }[kind]

    @export
    def wait_gate(self, timeout: float) -> bool:
        """Block a worker thread until the gate opens (proves sync calls do not stall the loop)."""
        return self.gate.wait(timeout)

    @export
    def open_gate(self) -> None:
        self.gate.set()

    @export
    def sleep(self, seconds: float) -> float:
        time.sleep(seconds)
        return seconds

    @export
    def count(self, n: int) -> Generator[int, None, None]:
        yield from range(n)

    @export
    async def acount(self, n: int) -> AsyncGenerator[int, None]:
        for i in range(n):
            yield i

    @export
    async def forever(self) -> AsyncGenerator[int, None]:
        i = 0
        while True:
            yield i
            i += 1
            await asyncio.sleep(0.01)

    @export
    async def broken_stream(self) -> AsyncGenerator[int, None]:
        yield 1
        raise ValueError("stream broke after one item")

    @export
    def log(self, message: str, count: int = 1) -> None:
        for i in range(count):
            self.logger.info("%s %d", message, i)

    @exportstream
    async def echo_stream(self) -> AsyncIterator[PipeStream]:
        """A byte stream that echoes what it receives."""
        async with echo_pipe() as stream:
            yield stream

    @export
    async def upload_size(self, handle: dict) -> int:
        """Read a client's resource to its end; return how many bytes came."""
        return await resource_size(handle)

    @export
    async def download(self, handle: dict, size: int) -> None:
        """Write ``size`` bytes of a pattern to a client's resource."""
        async with current_session.get().open_resource(handle) as stream:
            pattern = bytes(range(256)) * 4096
            sent = 0
            while sent < size:
                chunk = pattern[: min(len(pattern), size - sent)]
                await stream.send(chunk)
                sent += len(chunk)
            await stream.send_eof()


@dataclass(kw_only=True)
class Parent(Driver):
    """A composite-like root with children."""

    @export
    def hello(self) -> str:
        return "parent"
