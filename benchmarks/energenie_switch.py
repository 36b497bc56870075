"""Time an EnerGenie switch against the EG-PMS2-LAN simulator, beside the bare HTTP floor.

Rows: the two requests done with plain ``requests`` (the floor), the driver called directly,
and the driver through a real session (``serve``), each with the default config and with
``logout`` and ``verify`` on. The simulator answers at once, so the figures are the toolkit's
own overhead; a real strip adds its own (slow) reply time to every request.

    python benchmarks/energenie_switch.py [--count 100]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable

import requests

from jumpstarter_drivers.core import serve
from jumpstarter_drivers.energenie import EnerGenie
from jumpstarter_drivers.energenie.simulator import EnerGenieSimulator


def timed(count: int, switch: Callable[[bool], None]) -> list[float]:
    """Seconds per call of ``switch``, alternating on and off."""
    switch(False)  # warm up: imports, first connection
    times = []
    for n in range(count):
        start = time.perf_counter()
        switch(n % 2 == 0)
        times.append(time.perf_counter() - start)
    return times


def bare(sim: EnerGenieSimulator) -> Callable[[bool], None]:
    def switch(on: bool) -> None:
        with requests.Session() as http:
            http.post(f"{sim.url}/login.html", data={"pw": "1"}, timeout=5).raise_for_status()
            http.post(f"{sim.url}/", data={"cte1": "1" if on else "0"}, timeout=5).raise_for_status()

    return switch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=100, help="switch operations per row (default 100)")
    count = parser.parse_args().count
    rows: list[tuple[str, list[float]]] = []
    with EnerGenieSimulator() as sim, tempfile.TemporaryDirectory() as lock_dir:
        rows.append(("plain requests, login + switch (floor)", timed(count, bare(sim))))
        for label, extra in (("default", {}), ("logout + verify", {"logout": True, "verify": True})):
            driver = EnerGenie(host=sim.address, lock_dir=lock_dir, **extra)
            rows.append((f"driver direct, {label}", timed(count, lambda on, d=driver: d.on() if on else d.off())))
            with serve(EnerGenie(host=sim.address, lock_dir=lock_dir, **extra)) as client:
                rows.append((f"through serve(), {label}", timed(count, lambda on: client.on() if on else client.off())))
    print(f"{'EnerGenie switch vs simulator':42} {'median ms':>10} {'p95 ms':>8} {'ops/s':>8}")
    for label, times in rows:
        times.sort()
        median = statistics.median(times)
        print(f"{label:42} {median * 1e3:10.2f} {times[int(len(times) * 0.95) - 1] * 1e3:8.2f} {1 / median:8.0f}")


if __name__ == "__main__":
    main()
