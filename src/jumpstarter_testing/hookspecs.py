"""Hooks the jumpstarter plugin calls; implement them in a conftest.py or a plugin.

.. code-block:: python

    def pytest_jumpstarter_test_finished(item, client, failed, reports):
        if failed:
            client.power.off()
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from jumpstarter_drivers.core.client import DriverClient
    from jumpstarter_drivers.core.config import DriverRegistry

    from .lab import Lab


@pytest.hookspec
def pytest_jumpstarter_register_drivers(registry: DriverRegistry) -> None:
    """Register driver short names before a local lab's exporter file is loaded.

    ``registry.register("MyPower", "my_package.driver.MyPower")`` (a class works too).
    """


@pytest.hookspec
def pytest_jumpstarter_lab_ready(session: Lab, client: DriverClient) -> None:
    """The lab is connected (first use in this run); ``session`` is the ``session`` fixture's value."""


@pytest.hookspec
def pytest_jumpstarter_test_started(item: pytest.Item, client: DriverClient) -> None:
    """A test that uses the lab is being set up: the lab is ready, the test's own function-scoped
    fixtures are not set up yet (this is called from the plugin's autouse fixture)."""


@pytest.hookspec
def pytest_jumpstarter_test_finished(
    item: pytest.Item, client: DriverClient, failed: bool, reports: dict[str, Any]
) -> None:
    """A test that used the lab is torn down; ``reports`` maps setup/call/teardown to its TestReport.

    ``failed`` is true when any phase failed: a conftest may power the board off, say.
    """
