"""The driver the robustness tests abuse: typed calls, bounded and endless streams, an exclusive
byte stream (like a serial port) and uploads, with counters that show what is still held."""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import anyio
from tests.helpers.drivers import echo_pipe, resource_size

from jumpstarter_drivers import Driver, export, exportstream
from jumpstarter_drivers.core.streams import PipeStream


@dataclass
class Point:
    x: int
    y: float


@dataclass(kw_only=True)
class Target(Driver):
    """Counts what it serves; ``state()`` tells what is in use right now."""

    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    _calls: int = field(default=0, init=False)
    _port_busy: bool = field(default=False, init=False)
    _streaming: int = field(default=0, init=False)
    _uploading: int = field(default=0, init=False)

    def _count(self) -> None:
        with self._lock:
            self._calls += 1

    @export
    async def echo(self, value: Any) -> Any:
        """Return the argument."""
        self._count()
        return value

    @export
    def add(self, a: int, b: int) -> int:
        """Add two integers."""
        self._count()
        return a + b

    @export
    def norm(self, point: Point, scale: float = 1.0) -> float:
        """Manhattan norm of a point, scaled."""
        return (abs(point.x) + abs(point.y)) * scale

    @export
    def total(self, values: list[int], weights: dict[str, float]) -> float:
        """Sum of values plus the sum of weights."""
        return sum(values) + sum(weights.values())

    @export
    async def count(self, n: int) -> AsyncGenerator[int, None]:
        """Yield 0..n-1 (n at most 1000)."""
        if not 0 <= n <= 1000:
            raise ValueError(f"n must be in 0..1000, got {n}")
        for i in range(n):
            yield i

    @export
    async def ticks(self) -> AsyncGenerator[int, None]:
        """Yield forever, every 10 ms, until the client goes away."""
        self._streaming += 1
        try:
            i = 0
            while True:
                yield i
                i += 1
                await anyio.sleep(0.01)
        finally:
            self._streaming -= 1

    @exportstream
    async def port(self) -> AsyncIterator[PipeStream]:
        """An exclusive echo port, like a serial port only one client may hold."""
        if self._port_busy:
            raise RuntimeError("port busy: another client holds it")
        self._port_busy = True
        try:
            async with echo_pipe() as stream:
                yield stream
        finally:
            self._port_busy = False

    @export
    async def upload(self, handle: dict) -> int:
        """Read a client's resource to its end; return the byte count."""
        self._uploading += 1
        try:
            return await resource_size(handle)
        finally:
            self._uploading -= 1

    @export
    async def hog(self, seconds: float) -> float:
        """Keep the exporter's event loop busy for ``seconds`` (a driver that forgot to await)."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            pass  # computing on the loop on purpose
        return seconds

    @export
    def state(self) -> dict[str, Any]:
        """What is in use: the port, endless streams, uploads; and the calls counted so far."""
        return {
            "calls": self._calls,
            "port_busy": self._port_busy,
            "streaming": self._streaming,
            "uploading": self._uploading,
        }
