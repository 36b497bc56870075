"""What the plugin writes about a lab test: which board ran it, and why it failed.

Plain functions over a :class:`~jumpstarter_testing.lab.Lab` and pytest's objects, so the
plugin's hooks stay short.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pytest

    from .lab import Lab

#: Attribute set on a log record the plugin's capture took (pytest's own report section skips it).
CAPTURED = "jumpstarter_captured"


@dataclass(frozen=True)
class Board:
    """The identity of a lab as its exporter reports it: where, which one, and its labels."""

    description: str
    address: str
    uuid: str
    labels: tuple[tuple[str, str], ...]

    @classmethod
    def of(cls, lab: Lab) -> Board:
        """Ask the lab's exporter (one ``GetReport``)."""
        report = lab.report()
        where = f"local lab from {lab.source} at" if lab.local is not None else "exporter at"
        return cls(f"{where} {lab.address}", lab.address, report.uuid, tuple(sorted(report.labels.items())))

    def suite_properties(self) -> list[tuple[str, str]]:
        """The JUnit testsuite properties naming this board.

        >>> Board("exporter at lab:9000", "lab:9000", "u-1", (("board", "rpi4"),)).suite_properties()
        [('jumpstarter_exporter_address', 'lab:9000'), ('jumpstarter_exporter_uuid', 'u-1'), ('jumpstarter_exporter_label:board', 'rpi4')]
        """
        return [
            ("jumpstarter_exporter_address", self.address),
            ("jumpstarter_exporter_uuid", self.uuid),
            *((f"jumpstarter_exporter_label:{key}", value) for key, value in self.labels),
        ]

    def header(self, nodeid: str, worker: str | None) -> list[str]:
        """The first lines of a per-test log file.

        >>> Board("exporter at lab:9000", "lab:9000", "u-1", (("board", "rpi4"),)).header("t.py::test_a", "gw1")
        ['# t.py::test_a', '# board: exporter at lab:9000 (uuid u-1, labels board=rpi4), worker gw1']
        """
        labels = ", ".join(f"{key}={value}" for key, value in self.labels) or "none"
        return [f"# {nodeid}", f"# board: {self.description} (uuid {self.uuid}, labels {labels})"
                + (f", worker {worker}" if worker else "")]


def log_line(created: float, level: str, source: str, message: str) -> str:
    """One line of a test's log: local time with milliseconds, level, source, message.

    >>> log_line(0.25, "INFO", "board.power", "power on")[8:]
    '.250 INFO    board.power: power on'
    """
    stamp = time.strftime("%H:%M:%S", time.localtime(created))
    return f"{stamp}.{int((created % 1) * 1000):03d} {level:<7} {source}: {message}"


def failure_line(item: pytest.Item, report: pytest.TestReport, call: pytest.CallInfo) -> str:
    """Why a test phase failed, for the test's log file: the phase, the test's own line, the exception."""
    excinfo = call.excinfo
    if excinfo is None:
        return log_line(time.time(), "ERROR", "test", f"failed ({report.when}): {report.longreprtext.strip()}")
    where = ""
    own = [entry for entry in excinfo.traceback if entry.path == item.path]
    if own:
        where = f" at {item.location[0]}:{own[-1].lineno + 1}"
    return log_line(time.time(), "ERROR", "test", f"failed ({report.when}){where}: {excinfo.exconly()}")


class SkipCaptured(logging.Filter):
    """Leaves out records the plugin's capture already reports (pytest's "Captured log" would repeat them)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(record, CAPTURED, False)


SKIP_CAPTURED = SkipCaptured()
