"""Wall time of 50 tests in 5 JumpstarterTest classes against a local lab, beside the same 50 tests with no fixture.

Each suite runs as its own ``pytest`` process, as a user runs it, so start-up counts: the lab's
start (exporter file, session on a unix socket, gRPC) and one connection per class. Rows:

- ``no fixture``: 50 tests in 5 plain classes, no lab (the floor: pytest itself);
- ``JumpstarterTest``: the same tests taking ``client`` (one connection per class);
- ``JumpstarterTest + call``: each test also switches the power (one driver call per test).

Jumpstarter 0.9.0's ``JumpstarterTest`` sleeps 1 s per class in teardown, about 6x the floor
for this suite (reported in issue 3; not installed here to measure).

    python benchmarks/plugin_classes.py [--runs 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CLASSES, TESTS = 5, 10
EXPORTER = "export:\n  power: {type: MockPower}\n"
JUMPSTARTER_0_9_RATIO = 6.0


def suite(base: str, args: str, body: str) -> str:
    lines = ["from jumpstarter_testing import JumpstarterTest", ""]
    for c in range(CLASSES):
        lines.append(f"class TestGroup{c}({base}):")
        for t in range(TESTS):
            lines.append(f"    def test_{t}(self{args}):")
            lines.append(f"        {body}")
        lines.append("")
    return "\n".join(lines)


SUITES = {
    "no fixture": suite("object", "", "assert True"),
    "JumpstarterTest": suite("JumpstarterTest", ", client", "assert client.power is not None"),
    "JumpstarterTest + call": suite("JumpstarterTest", ", client", "client.power.on()"),
}


#: Not passed on: lab settings, and PYTHONDONTWRITEBYTECODE (users keep bytecode caches; without
#: them every run recompiles gRPC and re-rewrites asserts, which measures the machine, not the plugin).
DROPPED_ENV = ("JUMPSTARTER_HOST", "JMP_DRIVERS_ALLOW", "PYTEST_ADDOPTS", "PYTHONDONTWRITEBYTECODE")


def run(directory: Path) -> float:
    env = {k: v for k, v in os.environ.items() if k not in DROPPED_ENV}
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(directory)],
        cwd=directory, env=env, capture_output=True, text=True, timeout=300, check=False,
    )
    elapsed = time.perf_counter() - start
    if result.returncode != 0 or f"{CLASSES * TESTS} passed" not in result.stdout:
        raise SystemExit(f"suite in {directory} did not pass:\n{result.stdout}\n{result.stderr}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="runs per suite (the median is reported)")
    options = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="jmp-bench-") as tmp:
        directories = {}
        for name, source in SUITES.items():
            directory = Path(tmp) / name.replace(" ", "_").replace("+", "plus")
            directory.mkdir()
            (directory / "pytest.ini").write_text("[pytest]\n")
            (directory / "exporter.yaml").write_text(EXPORTER)
            (directory / "test_suite.py").write_text(source)
            directories[name] = directory
        times: dict[str, list[float]] = {name: [] for name in SUITES}
        for directory in directories.values():
            run(directory)  # warm-up: bytecode caches
        for _ in range(options.runs):  # interleaved, so machine load hits every suite alike
            for name, directory in directories.items():
                times[name].append(run(directory))
    floor = statistics.median(times["no fixture"])
    print(f"{CLASSES * TESTS} tests in {CLASSES} classes, median of {options.runs} pytest runs (wall time)")
    print(f"{'suite':<26}{'median s':>10}{'min s':>9}{'ratio':>8}")
    for name, samples in times.items():
        median = statistics.median(samples)
        print(f"{name:<26}{median:>10.3f}{min(samples):>9.3f}{median / floor:>7.2f}x")
    print(f"{'Jumpstarter 0.9.0 (issue 3)':<26}{'':>10}{'':>9}{JUMPSTARTER_0_9_RATIO:>7.1f}x  (1 s sleep per class)")
    print("target: JumpstarterTest within 1.5x of no fixture")


if __name__ == "__main__":
    main()
