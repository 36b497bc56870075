"""Tests that need several boards at once, one per role, leased together from the controller.

::

    @pytest.mark.jumpstarter_roles(host="board=rpi4", dut="board=imx8")
    def test_ping(jumpstarter_boards):
        jumpstarter_boards["host"].power.on()
        jumpstarter_boards["dut"].power.on()

The fixture leases one board per role as a group (all together or none, waiting in the queue
meanwhile; see :func:`jumpstarter_drivers.controller.client.leased_roles`) with the run's client
configuration and lease options, yields ``{role: root client}`` and releases them after the test.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest

from jumpstarter_drivers.core.errors import JumpstarterError

from . import leasing

MARKER = "jumpstarter_roles"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{MARKER}(**roles): the boards the `jumpstarter_boards` fixture leases together, one label selector per "
        "role (e.g. host='board=rpi4', dut='board=imx8')",
    )


@pytest.fixture
def jumpstarter_boards(
    request: pytest.FixtureRequest, jumpstarter_drivers_allow: str | None
) -> Iterator[dict[str, Any]]:
    """``{role: root client}`` of the boards named by the test's ``jumpstarter_roles`` marker, leased together
    from the controller (``--jumpstarter-client-config``) for this test and released after it."""
    from jumpstarter_drivers.controller.client import LeaseTimeout, leased_roles
    from jumpstarter_drivers.core.access import connect

    marker = request.node.get_closest_marker(MARKER)
    if marker is None or marker.args or len(marker.kwargs) < 2:
        pytest.fail(
            f"jumpstarter_boards needs @pytest.mark.{MARKER}(role='selector', ...) naming two or more roles",
            pytrace=False,
        )
    roles = {role: str(selector) for role, selector in marker.kwargs.items()}
    run_lease = request.config.stash[leasing.LEASE]
    wanted = ", ".join(f"{role}: {selector}" for role, selector in roles.items())
    with contextlib.ExitStack() as stack:
        try:
            access, options = leasing.lease_settings(request.config)
            run_lease.say(f"leasing boards together ({wanted})")
            held = stack.enter_context(leased_roles(access, roles, progress=run_lease.say, **options))
        except LeaseTimeout as exc:
            pytest.fail(f"jumpstarter: {exc}", pytrace=False)
        except (JumpstarterError, OSError, ValueError) as exc:
            pytest.fail(f"jumpstarter: cannot lease boards ({wanted}): {exc}", pytrace=False)
        clients = {}
        for role, lease in held.items():
            properties = [(f"jumpstarter_{role}_exporter", lease.exporter), (f"jumpstarter_{role}_lease", lease.name)]
            request.node.user_properties.extend(properties)
            clients[role] = stack.enter_context(connect(lease.socket, allow=jumpstarter_drivers_allow))
        yield clients
