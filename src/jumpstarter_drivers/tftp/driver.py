"""TFTP driver: a read-only TFTP server beside the board, with a storage child on its root."""

from __future__ import annotations

from dataclasses import dataclass

from ..core.driver import Driver, export
from ..core.errors import ConfigurationError, DriverError
from ..storage.driver import storage_child
from .server import TftpServer


@dataclass(kw_only=True)
class Tftp(Driver):
    """Serves ``root_dir`` over TFTP (read only) on ``host``:``port`` (port 0 picks a free one).

    The ``storage`` child (created on the same root when not given) puts files where the
    server finds them. The server runs between :meth:`start` and :meth:`stop` (or close).
    """

    root_dir: str
    host: str = "127.0.0.1"
    port: int = 0
    timeout: float = 1.0
    retries: int = 5

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.port <= 65535:
            raise ConfigurationError(
                f"{type(self).__name__}: port {self.port} is not in 0..65535 (0 picks a free port)"
            )
        self.storage = storage_child(self, self.root_dir)
        self.server = TftpServer(
            root=self.storage.root,
            host=self.host,
            port=self.port,
            timeout=self.timeout,
            retries=self.retries,
            resolve=self.storage.resolve,
            log=self.logger,
        )

    @classmethod
    def client(cls) -> str:
        return "jumpstarter_drivers.tftp.client.TftpClient"

    @export
    def start(self) -> None:
        """Start serving; an error names the address when it cannot be bound."""
        if self.server.running:
            self.logger.info("TFTP server already running on %s:%d", self.host, self.server.bound_port)
            return
        try:
            self.server.start()
        except OSError as exc:
            raise DriverError(
                f"TFTP server cannot bind {self.host}:{self.port}/udp: {exc.strerror or exc}; "
                "free that port or configure another (0 picks a free one)"
            ) from None

    @export
    def stop(self) -> None:
        """Stop serving (waits at most a few seconds for transfers to end)."""
        self.server.stop()

    @export
    def get_host(self) -> str:
        """The address the server listens on."""
        return self.host

    @export
    def get_port(self) -> int:
        """The UDP port the server is bound to (the configured one before :meth:`start`)."""
        return self.server.bound_port or self.port

    def close(self) -> None:
        """Stop the server, then close the children."""
        try:
            self.server.stop()
        finally:
            super().close()
