"""HTTP driver: serves a directory to the board (images, kernels), with a storage child on it."""

from __future__ import annotations

from dataclasses import dataclass

from ..core.driver import Driver, export
from ..core.errors import ConfigurationError, DriverError
from ..storage.driver import storage_child
from .server import FileServer


@dataclass(kw_only=True)
class HttpServer(Driver):
    """Serves ``root_dir`` over HTTP on ``host``:``port`` (port 0 picks a free one).

    GET and HEAD, byte ranges (resume), files of any size with constant memory. The
    ``storage`` child (created on the same root when not given) puts files there.
    """

    root_dir: str
    host: str = "127.0.0.1"
    port: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.port <= 65535:
            raise ConfigurationError(
                f"{type(self).__name__}: port {self.port} is not in 0..65535 (0 picks a free port)"
            )
        self.storage = storage_child(self, self.root_dir)
        self.server = FileServer(
            root=self.storage.root, host=self.host, port=self.port, resolve=self.storage.resolve, log=self.logger
        )

    @classmethod
    def client(cls) -> str:
        return "jumpstarter_drivers.http.client.HttpServerClient"

    @export
    def start(self) -> None:
        """Start serving; an error names the address when it cannot be bound."""
        if self.server.running:
            self.logger.info("HTTP server already running at %s", self.server.url)
            return
        try:
            self.server.start()
        except OSError as exc:
            raise DriverError(
                f"HTTP server cannot bind {self.host}:{self.port}/tcp: {exc.strerror or exc}; "
                "free that port or configure another (0 picks a free one)"
            ) from None

    @export
    def stop(self) -> None:
        """Stop serving and cut open downloads."""
        self.server.stop()

    @export
    def get_url(self) -> str:
        """The base URL of the served directory, e.g. ``http://127.0.0.1:8080``."""
        if not self.server.running:
            raise DriverError("the HTTP server is not running; call start() first")
        return self.server.url

    @export
    def get_host(self) -> str:
        """The address the server listens on."""
        return self.host

    @export
    def get_port(self) -> int:
        """The TCP port the server is bound to (the configured one before :meth:`start`)."""
        return self.server.bound_port or self.port

    def close(self) -> None:
        """Stop the server, then close the children."""
        try:
            self.server.stop()
        finally:
            super().close()
