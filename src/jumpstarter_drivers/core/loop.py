"""One background event loop per process, hosting every served session.

Sessions are served by ``grpc.aio`` on this loop; synchronous callers (tests, scripts) hand it
coroutines with :func:`run` and get the result back, with a timeout. Blocking driver code runs in
worker threads through :func:`run_blocking`, which gives every driver a capacity of its own.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import threading
import weakref
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import anyio
import anyio.to_thread

logger = logging.getLogger(__name__)

T = TypeVar("T")

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None
_thread: threading.Thread | None = None


def get_loop() -> asyncio.AbstractEventLoop:
    """The process's background loop, started on first use."""
    global _loop, _thread
    with _lock:
        if _loop is None or _loop.is_closed():
            loop = asyncio.new_event_loop()
            ready = threading.Event()

            def run() -> None:
                asyncio.set_event_loop(loop)
                loop.call_soon(ready.set)
                loop.run_forever()

            _thread = threading.Thread(target=run, name="jumpstarter-loop", daemon=True)
            _thread.start()
            if not ready.wait(timeout=10):
                raise RuntimeError("the jumpstarter background event loop did not start within 10 s")
            _loop = loop
        return _loop


def in_loop_thread() -> bool:
    """Whether the caller runs on the background loop's thread."""
    return _thread is not None and threading.current_thread() is _thread


def run(coro: Coroutine[Any, Any, T], timeout: float | None = 30.0) -> T:
    """Run ``coro`` on the background loop and wait for its result (``TimeoutError`` past ``timeout``)."""
    if in_loop_thread():
        coro.close()
        raise RuntimeError("jumpstarter_drivers.core.loop.run() called from the loop thread itself; await instead")
    future = asyncio.run_coroutine_threadsafe(coro, get_loop())
    try:
        return future.result(timeout)
    except TimeoutError:
        future.cancel()
        raise


#: Worker threads one driver may keep busy at once; its further blocking calls wait for one of them.
DRIVER_THREADS = 8

_limiters: dict[int, anyio.CapacityLimiter] = {}


async def run_blocking(owner: object, func: Callable[[], T]) -> T:
    """``func()`` in a worker thread, at most :data:`DRIVER_THREADS` at once for ``owner`` (a driver).

    Each owner has its own capacity, so a device whose calls hang (a power strip that never
    answers) holds its own threads, not the ones every other driver needs.
    """
    key = id(owner)
    limiter = _limiters.get(key)
    if limiter is None:
        limiter = _limiters[key] = anyio.CapacityLimiter(DRIVER_THREADS)
        weakref.finalize(owner, _limiters.pop, key, None)
    return await anyio.to_thread.run_sync(func, limiter=limiter)


_cleanups: list[Callable[[], Coroutine[Any, Any, None]]] = []


def at_shutdown(cleanup: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run ``cleanup()`` on the loop when the process exits, before the loop stops."""
    _cleanups.append(cleanup)


def _shutdown() -> None:
    loop = _loop
    if loop is None or loop.is_closed():
        return

    async def cancel_all() -> None:
        for cleanup in reversed(_cleanups):
            try:
                await cleanup()
            except Exception as exc:  # noqa: BLE001 - one failing cleanup must not stop the others
                logger.debug("shutdown cleanup %r failed: %s", cleanup, exc)
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    try:
        asyncio.run_coroutine_threadsafe(cancel_all(), loop).result(5)
    except Exception as exc:  # noqa: BLE001 - best effort at interpreter exit, but say so
        logger.debug("background loop shutdown: %s", exc)
    loop.call_soon_threadsafe(loop.stop)
    if _thread is not None:
        _thread.join(5)


atexit.register(_shutdown)
