"""A board's TCP ports, forwarded to the test's machine through the exporter."""

from .client import NetworkClient, TcpNetworkClient
from .driver import Network, TcpNetwork

__all__ = ["Network", "NetworkClient", "TcpNetwork", "TcpNetworkClient"]
