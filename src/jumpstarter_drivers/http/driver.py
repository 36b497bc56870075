"""HTTP driver: serves a directory to the board (images, kernels), with a storage child on it."""

from __future__ import annotations

from dataclasses import dataclass

from ..core.driver import export
from ..core.errors import DriverError
from ..storage.served import ServedDirectory
from .server import FileServer


@dataclass(kw_only=True)
class HttpServer(ServedDirectory):
    """Serves ``root_dir`` over HTTP on ``host``:``port`` (port 0 picks a free one).

    GET and HEAD, byte ranges (resume), files of any size with constant memory. The
    ``storage`` child (created on the same root when not given) puts files there. Anyone on the
    network may connect, so at most ``max_connections`` are open at once and
    ``max_connections_per_host`` from one address; a request must arrive whole within
    ``header_timeout`` seconds and a reply nobody reads is cut after ``send_timeout`` seconds, one
    read slowly after ``send_timeout`` plus its size at ``min_send_rate`` bytes per second.
    """

    header_timeout: float = 10.0
    send_timeout: float = 30.0
    min_send_rate: float = 64 << 10
    max_connections: int = 64
    max_connections_per_host: int = 16

    protocol = "HTTP"
    transport = "tcp"

    @classmethod
    def client(cls) -> str:
        return "jumpstarter_drivers.http.client.HttpServerClient"

    def make_server(self) -> FileServer:
        bounds = ("header_timeout", "send_timeout", "min_send_rate", "max_connections", "max_connections_per_host")
        self.check_bounds(*bounds)
        return FileServer(
            root=self.storage.root,
            host=self.host,
            port=self.port,
            resolve=self.storage.resolve,
            log=self.logger,
            **{field: getattr(self, field) for field in bounds},
        )

    @export
    def get_url(self) -> str:
        """The base URL of the served directory, e.g. ``http://127.0.0.1:8080``."""
        if not self.server.running:
            raise DriverError("the HTTP server is not running; call start() first")
        return self.server.url
