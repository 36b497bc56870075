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
    ``storage`` child (created on the same root when not given) puts files there.
    """

    protocol = "HTTP"
    transport = "tcp"

    @classmethod
    def client(cls) -> str:
        return "jumpstarter_drivers.http.client.HttpServerClient"

    def make_server(self) -> FileServer:
        return FileServer(
            root=self.storage.root, host=self.host, port=self.port, resolve=self.storage.resolve, log=self.logger
        )

    @export
    def get_url(self) -> str:
        """The base URL of the served directory, e.g. ``http://127.0.0.1:8080``."""
        if not self.server.running:
            raise DriverError("the HTTP server is not running; call start() first")
        return self.server.url
