"""TFTP driver: a read-only TFTP server beside the board, with a storage child on its root."""

from __future__ import annotations

from dataclasses import dataclass

from ..storage.served import ServedDirectory
from .server import TftpServer


@dataclass(kw_only=True)
class Tftp(ServedDirectory):
    """Serves ``root_dir`` over TFTP (read only) on ``host``:``port`` (port 0 picks a free one).

    The ``storage`` child (created on the same root when not given) puts files where the
    server finds them. The server runs between :meth:`start` and :meth:`stop` (or close).
    ``timeout`` and ``retries`` govern retransmission.
    """

    timeout: float = 1.0
    retries: int = 5

    protocol = "TFTP"
    transport = "udp"

    @classmethod
    def client(cls) -> str:
        return "jumpstarter_drivers.tftp.client.TftpClient"

    def make_server(self) -> TftpServer:
        return TftpServer(
            root=self.storage.root,
            host=self.host,
            port=self.port,
            timeout=self.timeout,
            retries=self.retries,
            resolve=self.storage.resolve,
            log=self.logger,
        )
