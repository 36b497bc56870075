"""Power drivers through a real session."""

from __future__ import annotations

import logging

import pytest

from jumpstarter_drivers import serve
from jumpstarter_drivers.power import MockPower, PowerReading, SyncMockPower, VirtualPowerClient
from jumpstarter_drivers.power.driver import VirtualPowerInterface


@pytest.mark.parametrize("driver", [MockPower, SyncMockPower])
def test_mock_power_switches_logs_and_reads(driver, caplog):
    caplog.set_level(logging.INFO)
    with serve(driver()) as client, client.log_stream():
        client.on()
        client.off()
        readings = list(client.read())
        _wait(lambda: len([r for r in caplog.records if r.name == "exporter:driver"]) >= 2)
    assert readings == [PowerReading(voltage=0.0, current=0.0), PowerReading(voltage=5.0, current=2.0)]
    assert [type(r.voltage) for r in readings] == [float, float]
    assert readings[1].apparent_power == 10.0
    assert [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "exporter:driver"] == [
        ("INFO", "power on"),
        ("INFO", "power off"),
    ]


def test_cycle_switches_off_then_on(caplog):
    caplog.set_level(logging.INFO)
    with serve(MockPower()) as client, client.log_stream():
        client.cycle(wait=0)
        _wait(lambda: len([r for r in caplog.records if r.name == "exporter:driver"]) >= 2)
    assert [r.getMessage() for r in caplog.records if r.name == "exporter:driver"] == ["power off", "power on"]


def test_virtual_power_off_takes_destroy():
    from dataclasses import dataclass

    seen = []

    @dataclass(kw_only=True)
    class Machine(VirtualPowerInterface):
        def on(self) -> None:
            seen.append("on")

        def off(self, destroy: bool = False) -> None:
            seen.append(("off", destroy))

        def read(self):
            yield PowerReading(voltage=1.0, current=0.5)

    with serve(Machine()) as client:
        assert isinstance(client, VirtualPowerClient)
        client.on()
        client.off()
        client.off(destroy=True)
        assert [r.apparent_power for r in client.read()] == [0.5]
    assert seen == ["on", ("off", False), ("off", True)]


def test_power_reading_text():
    assert str(PowerReading(voltage=5.0, current=2.0)) == "voltage=5.0 V  current=2.0 A  apparent_power=10.0 VA"


def _wait(predicate, timeout: float = 5.0) -> None:
    import threading

    event = threading.Event()
    for _ in range(int(timeout / 0.005)):
        if predicate():
            return
        event.wait(0.005)
