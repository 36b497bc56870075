"""Power: switching the board, cycling it, and reading what it draws.

Runs against the built-in virtual lab by default; point it at a real board with
``pytest --jumpstarter-host=HOST:PORT`` (or ``JUMPSTARTER_HOST``).
"""

import pytest

from jumpstarter_testing import JumpstarterTest, eventually


@pytest.mark.jumpstarter_requires("power")
class TestPower(JumpstarterTest):
    """Tests in a JumpstarterTest class share one connection: ``client`` is the lab's root."""

    def test_on_off(self, client):
        client.power.on()
        client.power.off()

    def test_cycle(self, client):
        client.power.cycle(wait=0.1)

    @pytest.mark.jumpstarter_requires("power.read")  # skipped on a strip that cannot measure (EnerGenie)
    def test_readings(self, client):
        readings = list(client.power.read())
        assert readings, "the supply reported no readings"
        for reading in readings:
            assert 0 <= reading.voltage <= 60, f"implausible voltage: {reading}"
            assert reading.current >= 0, f"negative current: {reading}"
        assert readings[-1].apparent_power == readings[-1].voltage * readings[-1].current


@pytest.mark.jumpstarter_requires("power")
def test_plain_function_with_session_client(client, session):
    """Plain test functions use the run-wide ``client``; ``session`` tells which lab it is."""
    assert session.status().name == "LEASE_READY"
    client.power.on()


@pytest.mark.jumpstarter_requires("power.read")
def test_draws_current_once_on(client):
    """``eventually`` retries an assertion until it holds (or its timeout passes): no fixed sleeps."""
    client.power.on()

    def drawing():
        reading = list(client.power.read())[-1]
        assert reading.current > 0, f"no current yet: {reading}"
        return reading

    assert eventually(drawing, timeout=10).voltage > 0
