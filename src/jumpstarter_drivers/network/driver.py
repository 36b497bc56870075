"""TCP ports of a board, reached through the exporter as byte streams of the session.

:class:`TcpNetwork` connects to one configured ``host:port`` (the board's address as the exporter
host reaches it) and exports the connection as the byte stream ``connect``; a client never names
the address, so a session cannot reach anything but the ports the lab's configuration lists.
:class:`Network` groups several ports of one host as ``TcpNetwork`` children named ``port<N>``.
The client forwards a local loopback port to them (:mod:`.client`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import anyio
import anyio.abc

from ..core.driver import Driver, export, exportstream
from ..core.errors import ConfigurationError, DriverError


def _check_port(owner: str, port: int) -> None:
    if not 0 < port < 65536:
        raise ConfigurationError(f"{owner}: port {port} is not a TCP port (1-65535)")


@dataclass(kw_only=True)
class TcpNetwork(Driver):
    """One TCP port of a board: ``host`` and ``port`` as the exporter reaches them.

    ``connect_timeout`` bounds each connection attempt; at most ``max_connections`` are open at a
    time (more are refused with an error naming the limit).
    """

    host: str
    port: int
    connect_timeout: float = 10.0
    max_connections: int = 16

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.host:
            raise ConfigurationError("TcpNetwork: config field 'host' is empty; give the board's address")
        _check_port("TcpNetwork", self.port)
        if self.max_connections < 1:
            raise ConfigurationError(
                f"TcpNetwork: config field 'max_connections' must be at least 1, got {self.max_connections}")
        self._open = 0

    @classmethod
    def client(cls) -> str:
        return "jumpstarter_drivers.network.client.TcpNetworkClient"

    @export
    def address(self) -> dict[str, str | int]:
        """The board's ``host`` and ``port`` this node reaches."""
        return {"host": self.host, "port": self.port}

    @exportstream
    async def connect(self) -> AsyncIterator[anyio.abc.ByteStream]:
        """A TCP connection to the configured host and port, as a byte stream."""
        if self._open >= self.max_connections:
            raise DriverError(f"{self.host}:{self.port} already has {self.max_connections} connections open "
                              "(max_connections); close one first")
        self._open += 1
        try:
            try:
                with anyio.fail_after(self.connect_timeout):
                    stream = await anyio.connect_tcp(self.host, self.port)
            except (OSError, TimeoutError) as exc:
                raise DriverError(f"cannot connect to {self.host}:{self.port} on the board: "
                                  f"{exc or 'no answer within ' + format(self.connect_timeout, 'g') + ' s'}") from None
            self.logger.info("connected to %s:%d", self.host, self.port)
            async with stream:
                yield stream
        finally:
            self._open -= 1


@dataclass(kw_only=True)
class Network(Driver):
    """Several TCP ports of one board ``host``; each is a :class:`TcpNetwork` child ``port<N>``."""

    #: The board's address as the exporter host reaches it.
    host: str
    #: The board's TCP ports a client may reach (each a ``TcpNetwork`` child ``port<N>``).
    ports: list[int]
    #: Seconds each connection attempt may take.
    connect_timeout: float = 10.0
    #: Connections open at a time per port; more are refused.
    max_connections: int = 16

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.ports:
            raise ConfigurationError("Network: config field 'ports' is empty; list the board's TCP ports")
        for port in self.ports:
            _check_port("Network", port)
            self.children.setdefault(f"port{port}", TcpNetwork(
                host=self.host, port=port, connect_timeout=self.connect_timeout, max_connections=self.max_connections))

    @classmethod
    def client(cls) -> str:
        return "jumpstarter_drivers.network.client.NetworkClient"
