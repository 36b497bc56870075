"""HTTP server client: start the server beside the board and publish files on it."""

from __future__ import annotations

import os
import urllib.parse

from ..core.client import DriverClient
from ..storage.client import StorageClient
from ..storage.common import ProgressCallback


class HttpServerClient(DriverClient):
    """Client of :class:`~jumpstarter_drivers.http.driver.HttpServer`; ``storage`` is its root's storage."""

    storage: StorageClient

    def start(self) -> None:
        """Start the HTTP server."""
        self.call("start")

    def stop(self) -> None:
        """Stop the HTTP server."""
        self.call("stop")

    def get_url(self) -> str:
        """The base URL of the served directory (the server must be running)."""
        return self.call_as(str, "get_url")

    def get_host(self) -> str:
        """The address the server listens on."""
        return self.call_as(str, "get_host")

    def get_port(self) -> int:
        """The TCP port the server is bound to."""
        return self.call_as(int, "get_port")

    def put_file(self, dst: str, src: str | os.PathLike, progress: ProgressCallback | None = None) -> str:
        """Upload ``src`` as ``dst`` in the served directory; returns the URL a board downloads it from."""
        self.children["storage"].write_from_path(dst, src, progress)
        return f"{self.get_url()}/{urllib.parse.quote(dst.lstrip('/'))}"
