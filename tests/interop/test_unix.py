"""Jumpstarter 0.9.0 and this toolkit drive each other over a unix socket."""

from __future__ import annotations

import logging

import pytest

from jumpstarter_drivers import JMP_DRIVERS_ALLOW, JUMPSTARTER_HOST, Session, env
from jumpstarter_drivers.power import MockPower, PowerClient, PowerReading, SyncMockPower

jumpstarter_env = pytest.importorskip("jumpstarter.utils.env", reason="jumpstarter==0.9.0 is not installed").env
jumpstarter_power = pytest.importorskip("jumpstarter_driver_power.driver")
JumpstarterSession = pytest.importorskip("jumpstarter.exporter").Session

# Jumpstarter 0.9.0's session calls context.abort() without awaiting it when checking its status.
pytestmark = pytest.mark.filterwarnings("ignore:coroutine .*abort. was never awaited:RuntimeWarning")


@pytest.mark.parametrize("driver", [MockPower, SyncMockPower])
def test_jumpstarter_client_drives_our_session(driver, monkeypatch):
    with Session(root_device=driver()) as session, session.serve_unix() as path:
        monkeypatch.setenv(JUMPSTARTER_HOST, str(path))
        monkeypatch.setenv(JMP_DRIVERS_ALLOW, "jumpstarter_driver_power.*")
        with jumpstarter_env() as client:
            assert type(client).__module__ == "jumpstarter_driver_power.client"
            client.on()
            client.off()
            readings = list(client.read())
    assert [(r.voltage, r.current) for r in readings] == [(0.0, 0.0), (5.0, 2.0)]


def test_jumpstarter_client_sees_our_driver_errors(monkeypatch):
    from jumpstarter.client.core import DriverMethodNotImplemented as TheirNotImplemented

    with Session(root_device=MockPower()) as session, session.serve_unix() as path:
        monkeypatch.setenv(JUMPSTARTER_HOST, str(path))
        monkeypatch.setenv(JMP_DRIVERS_ALLOW, "UNSAFE")
        with jumpstarter_env() as client, pytest.raises(TheirNotImplemented):
            client.call("no_such_method")


def test_our_client_drives_a_jumpstarter_session(monkeypatch):
    with JumpstarterSession(root_device=jumpstarter_power.MockPower()) as session, session.serve_unix() as path:
        monkeypatch.setenv(JUMPSTARTER_HOST, str(path))
        monkeypatch.setenv(JMP_DRIVERS_ALLOW, "jumpstarter_drivers.*")
        with env() as client:
            assert isinstance(client, PowerClient), "Jumpstarter's client path maps to ours"
            client.on()
            client.off()
            readings = list(client.read())
    assert readings == [PowerReading(voltage=0.0, current=0.0), PowerReading(voltage=5.0, current=2.0)]


def test_our_log_stream_receives_a_jumpstarter_sessions_driver_logs(monkeypatch, caplog):
    import threading

    caplog.set_level(logging.INFO)  # as a Jumpstarter exporter process configures its logging

    received: list[str] = []
    arrived = threading.Event()

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            received.append(record.getMessage())
            arrived.set()

    streamed = logging.getLogger("exporter:driver")
    handler = Collect()
    streamed.addHandler(handler)
    # In one process Jumpstarter's session captures the root logger too; without this our
    # re-emitted records would travel back to it and round again.
    monkeypatch.setattr(streamed, "propagate", False)
    try:
        with JumpstarterSession(root_device=jumpstarter_power.MockPower()) as session, session.serve_unix() as path:
            monkeypatch.setenv(JUMPSTARTER_HOST, str(path))
            with env() as client, client.log_stream():
                client.on()
                assert arrived.wait(5), "no driver log arrived from the Jumpstarter session"
    finally:
        streamed.removeHandler(handler)
    assert "power on" in received
