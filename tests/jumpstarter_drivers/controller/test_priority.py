"""Lease priority on top of FIFO: a lease with a lower priority lets later ones of a higher priority go first."""

from __future__ import annotations

import subprocess
import sys

import pytest

from jumpstarter_drivers.controller.client import ControllerClient, LeaseTimeout, leased
from jumpstarter_drivers.controller.priority import PRIORITY_TAG, granted, priority
from jumpstarter_drivers.controller.store import Record
from jumpstarter_drivers.core import loop


@pytest.mark.parametrize(
    ("tag", "expected"), [(None, 0), ("-10", -10), ("-1000", -100), ("5", 0), ("high", 0), (" -3 ", -3)]
)
def test_priority_is_clamped_to_lowering_only(tag: str | None, expected: int) -> None:
    tags = {} if tag is None else {PRIORITY_TAG: tag}
    assert priority(Record("lease", {"tags": tags}, 1, 1)) == expected


@pytest.mark.parametrize(
    ("tag", "ceiling", "expected"),
    [("10", 0, 0), ("10", 20, 10), ("50", 20, 20), ("500", 100, 100), ("-500", 100, -100), ("x", 20, 0), ("5", -3, 0)],
)
def test_a_token_raises_priority_up_to_its_ceiling(tag: str, ceiling: int, expected: int) -> None:
    assert granted({PRIORITY_TAG: tag}, ceiling) == expected


def test_the_priority_fixed_at_creation_wins_over_the_tag() -> None:
    assert priority(Record("lease", {"tags": {PRIORITY_TAG: "30"}, "priority": 30}, 1, 1)) == 30
    assert priority(Record("lease", {"tags": {PRIORITY_TAG: "30"}, "priority": 0}, 1, 1)) == 0


def test_a_client_allowed_a_higher_priority_goes_before_earlier_waiters_and_others_cannot(lab) -> None:
    lab.serve("board-1", {"board": "rpi4"})
    bob, carol = ControllerClient(lab.client("bob")), ControllerClient(lab.client("carol", max_priority=10))
    dave = ControllerClient(lab.client("dave"))
    high = {PRIORITY_TAG: "10"}
    try:
        with leased(lab.client("alice"), "board=rpi4", duration=60, wait=30):
            normal = loop.run(bob.create_lease("board=rpi4", 60, keepalive=0))
            lab.wait_for(lambda state: normal.name.rsplit("/", 1)[-1] in state.leases)
            claimed = loop.run(dave.create_lease("board=rpi4", 60, keepalive=0, tags=high))  # not allowed: 0
            lab.wait_for(lambda state: claimed.name.rsplit("/", 1)[-1] in state.leases)
            urgent = loop.run(carol.create_lease("board=rpi4", 60, keepalive=0, tags=high))
        order = []
        for client, lease in ((carol, urgent), (bob, normal), (dave, claimed)):
            order.append(loop.run(client.wait_ready(lease.name, 30)).name)
            loop.run(client.release(lease.name))
        assert order == [urgent.name, normal.name, claimed.name]
    finally:
        for client in (bob, carol, dave):
            loop.run(client.close())


def test_only_a_client_token_takes_a_priority_ceiling(lab) -> None:
    with pytest.raises(Exception, match="a client's token may allow 0 to 100"):
        lab.token("exporter", "board-9", max_priority=5)
    with pytest.raises(Exception, match="a client's token may allow 0 to 100"):
        lab.token("client", "eve", max_priority=101)


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
