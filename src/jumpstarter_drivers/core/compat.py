"""Client class names shared with the Jumpstarter project.

Our reports name the Jumpstarter client class where one exists, so Jumpstarter's client finds
a class it has; our client maps those names back to ours. One table serves both directions.

>>> toolkit_name_for("jumpstarter_driver_power.client.PowerClient")
'jumpstarter_drivers.power.client.PowerClient'
>>> jumpstarter_name_for("jumpstarter_drivers.power.client.PowerClient")
'jumpstarter_driver_power.client.PowerClient'
"""

from __future__ import annotations

#: Jumpstarter client path -> our client path.
JUMPSTARTER_CLIENTS: dict[str, str] = {
    "jumpstarter.client.DriverClient": "jumpstarter_drivers.core.client.DriverClient",
    "jumpstarter_driver_power.client.PowerClient": "jumpstarter_drivers.power.client.PowerClient",
    "jumpstarter_driver_power.client.VirtualPowerClient": "jumpstarter_drivers.power.client.VirtualPowerClient",
    "jumpstarter_driver_composite.client.CompositeClient": "jumpstarter_drivers.composite.client.CompositeClient",
    "jumpstarter_driver_pyserial.client.PySerialClient": "jumpstarter_drivers.pyserial.client.PySerialClient",
    "jumpstarter_driver_tftp.client.TftpServerClient": "jumpstarter_drivers.tftp.client.TftpClient",
    "jumpstarter_driver_http.client.HttpServerClient": "jumpstarter_drivers.http.client.HttpServerClient",
    "jumpstarter_driver_flashers.client.BaseFlasherClient": "jumpstarter_drivers.flashers.client.FlasherClient",
}

#: Our clients that Jumpstarter serves with a more general client of its own (ours -> theirs only).
GENERALISED: dict[str, str] = {
    "jumpstarter_drivers.energenie.client.EnerGenieClient": "jumpstarter_driver_power.client.PowerClient",
}

_OURS_TO_JUMPSTARTER = {ours: theirs for theirs, ours in JUMPSTARTER_CLIENTS.items()} | GENERALISED


def toolkit_name_for(path: str) -> str:
    """Our client path for a client path found in a report (unchanged when it is not Jumpstarter's)."""
    return JUMPSTARTER_CLIENTS.get(path, path)


def jumpstarter_name_for(path: str) -> str:
    """The Jumpstarter client path that speaks to the same driver as our ``path`` (or ``path``)."""
    return _OURS_TO_JUMPSTARTER.get(path, path)
