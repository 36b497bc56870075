"""Building blocks of the drivers the tests serve (core sample drivers, the robustness lab) and use.

Importable as ``tests.helpers.drivers`` from any test folder and from an exporter process
started with the repository root on ``PYTHONPATH``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import TypeVar

import anyio

from jumpstarter_drivers.core.session import current_session
from jumpstarter_drivers.core.streams import PipeStream, pipe
from jumpstarter_drivers.storage.served import ServedDirectory

Served = TypeVar("Served", bound=ServedDirectory)


@asynccontextmanager
async def echo_pipe() -> AsyncIterator[PipeStream]:
    """The near end of a pipe whose far end sends back all it receives, until either end closes."""
    near, far = pipe()

    async def loop_back() -> None:
        try:
            async for chunk in far:
                await far.send(chunk)
        except (anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError):
            return  # an end closed: nothing is left to echo
        finally:
            await far.aclose()

    async with anyio.create_task_group() as tg:
        tg.start_soon(loop_back)
        yield near
        tg.cancel_scope.cancel()


async def resource_size(handle: dict) -> int:
    """Read a client's resource (a driver call's ``handle``) to its end; how many bytes came."""
    total = 0
    async with current_session.get().open_resource(handle) as stream:
        try:
            while True:
                total += len(await stream.receive())
        except anyio.EndOfStream:
            return total


@contextmanager
def started(driver: Served) -> Iterator[Served]:
    """``driver`` started, closed on exit (a TFTP or HTTP server, say)."""
    driver.start()
    try:
        yield driver
    finally:
        driver.close()
