"""The EnerGenie client: a power client that can also ask the strip whether the socket is on."""

from __future__ import annotations

from ..power.client import PowerClient


class EnerGenieClient(PowerClient):
    """Client of :class:`~jumpstarter_drivers.energenie.driver.EnerGenie`.

    ``on()``, ``off()`` and ``cycle()`` as for any power switch; ``read()`` raises
    :class:`~jumpstarter_drivers.core.errors.DriverMethodNotImplemented` (the strip measures nothing).
    """

    def state(self) -> bool:
        """Whether the socket is on, as the strip reports it now."""
        return self.call_as(bool, "state")
