"""Self-tests of the pytest plugin, each running a small suite with pytester."""

from __future__ import annotations

import pytest

from jumpstarter_drivers import JMP_DRIVERS_ALLOW, JUMPSTARTER_HOST, Session
from jumpstarter_drivers.power import MockPower

SAMPLE = """
from jumpstarter_testing import JumpstarterTest

class TestSample(JumpstarterTest):
    def test_simple(self, client):
        client.on()
"""


def test_jumpstarter_test_class_uses_jumpstarter_host(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    with Session(root_device=MockPower()) as session:
        with session.serve_unix() as path:
            monkeypatch.setenv(JUMPSTARTER_HOST, str(path))
            monkeypatch.setenv(JMP_DRIVERS_ALLOW, "UNSAFE")
            pytester.makepyfile(SAMPLE)
            pytester.runpytest().assert_outcomes(passed=1)
