"""Worker threads for blocking driver code: one slow device cannot take the threads others need."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from jumpstarter_drivers import Driver, export
from jumpstarter_drivers.composite import Composite
from jumpstarter_drivers.core import serve
from jumpstarter_drivers.core.loop import DRIVER_THREADS
from jumpstarter_drivers.power.driver import SyncMockPower

#: More hanging calls than anyio's shared pool has threads (40), as in the report (45 on() to a dead strip).
HANGING_CALLS = 45


@dataclass(kw_only=True)
class Hanging(Driver):
    """A device whose blocking calls hang until the test releases them (a strip that never answers)."""

    release: threading.Event = field(default_factory=threading.Event, repr=False)
    entered: int = field(default=0, init=False)
    _count_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @export
    def on(self) -> None:
        with self._count_lock:
            self.entered += 1
        if not self.release.wait(60):
            raise TimeoutError("the test never released the hanging call")


def test_a_hanging_driver_does_not_starve_another_drivers_calls() -> None:
    hanging = Hanging()
    root = Composite(children={"strip": hanging, "power": SyncMockPower()})
    with serve(root) as client:
        callers = [
            threading.Thread(target=client.strip.call, args=("on",), name=f"hanging-{n}") for n in range(HANGING_CALLS)
        ]
        try:
            for caller in callers:
                caller.start()
            deadline = time.monotonic() + 30
            while hanging.entered < DRIVER_THREADS and time.monotonic() < deadline:
                time.sleep(0.01)  # polling a counter with a deadline
            assert hanging.entered >= DRIVER_THREADS, "the hanging calls did not start within 30 s"
            power = threading.Thread(target=client.power.on, name="unrelated")
            power.start()
            power.join(20)  # generous: it takes milliseconds unless it waits for a hanging call's thread
            assert not power.is_alive(), (
                f"SyncMockPower.on() waited while {hanging.entered} calls hung in another driver"
            )
            assert hanging.entered == DRIVER_THREADS, "one driver's calls took more than its share of threads"
        finally:
            hanging.release.set()
            for caller in callers:
                caller.join(30)
    assert hanging.entered == HANGING_CALLS
