"""Lease priority on top of FIFO: a lease with a lower priority lets later ones of a higher priority go first."""

from __future__ import annotations

import subprocess
import sys

import pytest

from jumpstarter_drivers.controller.client import ControllerClient, LeaseTimeout, leased
from jumpstarter_drivers.controller.priority import PRIORITY_TAG, priority
from jumpstarter_drivers.controller.store import Record
from jumpstarter_drivers.core import loop


@pytest.mark.parametrize(
    ("tag", "expected"), [(None, 0), ("-10", -10), ("-1000", -100), ("5", 0), ("high", 0), (" -3 ", -3)]
)
def test_priority_is_clamped_to_lowering_only(tag: str | None, expected: int) -> None:
    tags = {} if tag is None else {PRIORITY_TAG: tag}
    assert priority(Record("lease", {"tags": tags}, 1, 1)) == expected


def test_a_background_lease_lets_a_later_normal_one_go_first(lab) -> None:
    lab.serve("board-1", {"board": "rpi4"})
    bob, carol = ControllerClient(lab.client("bob")), ControllerClient(lab.client("carol"))
    try:
        with leased(lab.client("alice"), "board=rpi4", duration=60, wait=30):
            nightly = loop.run(bob.create_lease("board=rpi4", 60, keepalive=0, tags={PRIORITY_TAG: "-10"}))
            lab.wait_for(lambda state: nightly.name.rsplit("/", 1)[-1] in state.leases)
            urgent = loop.run(carol.create_lease("board=rpi4", 60, keepalive=0))
        ready = loop.run(carol.wait_ready(urgent.name, 30))
        assert ready.exporter.endswith("board-1")
        with pytest.raises(LeaseTimeout):
            loop.run(bob.wait_ready(nightly.name, 1.0))
        loop.run(carol.release(urgent.name))
        assert loop.run(bob.wait_ready(nightly.name, 30)).exporter.endswith("board-1")
        loop.run(bob.release(nightly.name))
    finally:
        loop.run(bob.close())
        loop.run(carol.close())


def test_a_malformed_priority_option_ends_the_run_with_one_line(lab, tmp_path) -> None:
    (tmp_path / "test_board.py").write_text("def test_power(client):\n    client.power.on()\n")
    command = [
        sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", str(tmp_path / "test_board.py"),
        "--jumpstarter-selector", "board=rpi4", "--jumpstarter-client-config", str(lab.client_file("ci")),
        "--jumpstarter-lease-priority", "high",
    ]  # fmt: skip
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 4, result.stdout + result.stderr
    assert "--jumpstarter-lease-priority 'high' is not a whole number" in result.stdout + result.stderr
