"""``JumpstarterTest``: a base class giving each test class its own connection to the lab."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from jumpstarter_drivers.core.client import DriverClient

    from .lab import Lab


class JumpstarterTest:
    """Subclass it; test methods then take ``client``, a connection to the lab shared by the class.

    The lab is the plugin's ``session``: ``JUMPSTARTER_HOST`` (or ``--jumpstarter-host``) when set,
    otherwise the local lab from ``--jumpstarter-exporter`` or the built-in virtual lab. The
    connection opens when the class's first test needs it and closes after its last test.

    .. code-block:: python

        class TestBoard(JumpstarterTest):
            def test_power(self, client):
                client.power.on()
    """

    @pytest.fixture(scope="class")
    @classmethod
    def client(cls, session: Lab) -> Iterator[DriverClient]:
        """The root client of the lab, connected once for this test class."""
        with session.connect() as client:
            yield client
