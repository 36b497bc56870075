"""TFTP driver: a read-only TFTP server beside the board, with a storage child on its root."""

from __future__ import annotations

from dataclasses import dataclass

from ..core.errors import ConfigurationError
from ..storage.served import ServedDirectory
from .server import TftpServer


@dataclass(kw_only=True)
class Tftp(ServedDirectory):
    """Serves ``root_dir`` over TFTP (read only) on ``host``:``port`` (port 0 picks a free one).

    The ``storage`` child (created on the same root when not given) puts files where the
    server finds them. The server runs between :meth:`start` and :meth:`stop` (or close).
    ``timeout`` and ``retries`` govern retransmission. Anyone on the network may ask for files,
    so at most ``max_transfers`` run at once, ``max_transfers_per_host`` from one address, each
    for at most ``max_transfer_time`` seconds (see :mod:`jumpstarter_drivers.tftp.server`).
    """

    timeout: float = 1.0
    retries: int = 5
    max_transfers: int = 64
    max_transfers_per_host: int = 8
    max_transfer_time: float = 900.0

    protocol = "TFTP"
    transport = "udp"

    @classmethod
    def client(cls) -> str:
        return "jumpstarter_drivers.tftp.client.TftpClient"

    def make_server(self) -> TftpServer:
        name = type(self).__name__
        if self.timeout <= 0:
            raise ConfigurationError(f"{name}: config field 'timeout' is {self.timeout}; give seconds > 0")
        if self.retries < 0:
            raise ConfigurationError(f"{name}: config field 'retries' is {self.retries}; give a count >= 0")
        self.check_bounds("max_transfers", "max_transfers_per_host", "max_transfer_time")
        return TftpServer(
            root=self.storage.root,
            host=self.host,
            port=self.port,
            timeout=self.timeout,
            retries=self.retries,
            max_transfers=self.max_transfers,
            max_transfers_per_host=self.max_transfers_per_host,
            max_transfer_time=self.max_transfer_time,
            resolve=self.storage.resolve,
            log=self.logger,
        )
