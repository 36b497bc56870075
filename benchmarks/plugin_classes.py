"""Wall time of 50 tests in 5 JumpstarterTest classes against a local lab, beside the same 50 tests with no fixture.

Each suite runs as its own ``pytest`` process, as a user runs it, so start-up counts: the lab's
start (exporter file, session on a unix socket, gRPC) and one connection per class. Rows:

- ``no fixture``: 50 tests in 5 plain classes, no lab (the floor: pytest itself);
- ``JumpstarterTest``: the same tests taking ``client`` (one connection per class);
- ``JumpstarterTest + call``: each test also switches the power (one driver call per test).

With ``--jumpstarter-python`` (a Python with ``jumpstarter-testing==0.9.0`` and
``jumpstarter-driver-power``), the same three suites also run with Jumpstarter's
``JumpstarterTest``, against a session of ours served on a unix socket through
``JUMPSTARTER_HOST`` (the protocol is the same), each ratio to that Python's own floor.

    python benchmarks/plugin_classes.py [--runs 5] [--jumpstarter-python /path/to/python]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

CLASSES, TESTS = 5, 10
EXPORTER = "export:\n  power: {type: MockPower}\n"
#: Not passed on: lab settings, and PYTHONDONTWRITEBYTECODE (users keep bytecode caches; without
#: them every run recompiles gRPC and re-rewrites asserts, which measures the machine, not the plugin).
DROPPED_ENV = ("JUMPSTARTER_HOST", "JMP_DRIVERS_ALLOW", "PYTEST_ADDOPTS", "PYTHONDONTWRITEBYTECODE")


def suite(base: str, imports: str, args: str, body: str) -> str:
    lines = [imports, ""]
    for c in range(CLASSES):
        lines.append(f"class TestGroup{c}({base}):")
        for t in range(TESTS):
            lines.append(f"    def test_{t}(self{args}):")
            lines.append(f"        {body}")
        lines.append("")
    return "\n".join(lines)


@dataclass
class Suite:
    name: str
    python: str
    source: str
    env: dict[str, str]
    floor: str  # name of the suite this one is compared with


def suites(jumpstarter_python: str | None, host: str | None) -> list[Suite]:
    ours = "from jumpstarter_testing import JumpstarterTest"
    result = [
        Suite("no fixture", sys.executable, suite("object", "", "", "assert True"), {}, "no fixture"),
        Suite("JumpstarterTest", sys.executable, suite("JumpstarterTest", ours, ", client", "assert client.power is not None"), {}, "no fixture"),
        Suite("JumpstarterTest + call", sys.executable, suite("JumpstarterTest", ours, ", client", "client.power.on()"), {}, "no fixture"),
    ]
    if jumpstarter_python and host:
        theirs = "from jumpstarter_testing.pytest import JumpstarterTest"
        env = {"JUMPSTARTER_HOST": host, "JMP_DRIVERS_ALLOW": "UNSAFE"}
        floor = "Jumpstarter 0.9.0: no fixture"
        result += [
            Suite(floor, jumpstarter_python, suite("object", "", "", "assert True"), {}, floor),
            Suite("Jumpstarter 0.9.0: JumpstarterTest", jumpstarter_python, suite("JumpstarterTest", theirs, ", client", "assert client is not None"), env, floor),
            Suite("Jumpstarter 0.9.0: + call", jumpstarter_python, suite("JumpstarterTest", theirs, ", client", "client.on()"), env, floor),
        ]
    return result


@contextlib.contextmanager
def jumpstarter_host() -> Iterator[str]:
    """A session of ours with one mock power supply at the root, for Jumpstarter's client."""
    from jumpstarter_drivers import Session
    from jumpstarter_drivers.power import MockPower

    with Session(root_device=MockPower()) as session, session.serve_unix() as path:
        yield str(path)


def run(directory: Path, item: Suite) -> float:
    env = {k: v for k, v in os.environ.items() if k not in DROPPED_ENV} | item.env
    start = time.perf_counter()
    result = subprocess.run(
        [item.python, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(directory)],
        cwd=directory, env=env, capture_output=True, text=True, timeout=300, check=False,
    )
    elapsed = time.perf_counter() - start
    if result.returncode != 0 or f"{CLASSES * TESTS} passed" not in result.stdout:
        raise SystemExit(f"suite {item.name!r} in {directory} did not pass:\n{result.stdout}\n{result.stderr}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="runs per suite (the median is reported)")
    parser.add_argument("--jumpstarter-python", help="a Python with jumpstarter-testing 0.9.0, to run its JumpstarterTest too")
    options = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="jmp-bench-") as tmp, contextlib.ExitStack() as stack:
        host = stack.enter_context(jumpstarter_host()) if options.jumpstarter_python else None
        items = suites(options.jumpstarter_python, host)
        directories = {}
        for index, item in enumerate(items):
            directory = Path(tmp) / f"suite{index}"
            directory.mkdir()
            (directory / "pytest.ini").write_text("[pytest]\n")
            (directory / "exporter.yaml").write_text(EXPORTER)
            (directory / "test_suite.py").write_text(item.source)
            directories[item.name] = directory
            run(directory, item)  # warm-up: bytecode caches
        times: dict[str, list[float]] = {item.name: [] for item in items}
        for _ in range(options.runs):  # interleaved, so machine load hits every suite alike
            for item in items:
                times[item.name].append(run(directories[item.name], item))
    medians = {name: statistics.median(samples) for name, samples in times.items()}
    print(f"{CLASSES * TESTS} tests in {CLASSES} classes, median of {options.runs} pytest runs (wall time)")
    print(f"{'suite':<38}{'median s':>10}{'min s':>9}{'ratio':>8}")
    for item in items:
        ratio = medians[item.name] / medians[item.floor]
        print(f"{item.name:<38}{medians[item.name]:>10.3f}{min(times[item.name]):>9.3f}{ratio:>7.2f}x")
    if not options.jumpstarter_python:
        print("Jumpstarter 0.9.0: about 6x (issue 3; pass --jumpstarter-python to measure it here)")
    print("target: JumpstarterTest within 1.5x of no fixture")


if __name__ == "__main__":
    main()
