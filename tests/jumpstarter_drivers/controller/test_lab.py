"""A shared lab end to end: a controller, real `jumpstarter serve` exporters, clients leasing through the router."""

from __future__ import annotations

from jumpstarter_drivers.controller.client import leased
from jumpstarter_drivers.core.access import connect


def test_a_leased_board_answers_through_the_router_and_only_while_leased(lab) -> None:
    lab.serve("board-1", {"board": "rpi4"})
    with leased(lab.client("alice"), "board=rpi4", duration=60, wait=30) as lease:
        assert lease.exporter == "board-1"
        with connect(lease.socket) as client:
            client.power.on()
            assert list(client.power.read())
    assert "leased to alice" in lab.log("board-1")
