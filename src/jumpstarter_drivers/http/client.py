"""HTTP server client: start the server beside the board and publish files on it."""

from __future__ import annotations

import urllib.parse

from ..storage.client import ServedDirectoryClient


class HttpServerClient(ServedDirectoryClient):
    """Client of :class:`~jumpstarter_drivers.http.driver.HttpServer`; ``storage`` is its root's storage.

    :meth:`put_file` returns the URL a board downloads the file from.
    """

    def get_url(self) -> str:
        """The base URL of the served directory (the server must be running)."""
        return self.call_as(str, "get_url")

    def location(self, name: str) -> str:
        """The URL of ``name`` in the served directory (the server must be running)."""
        return f"{self.get_url()}/{urllib.parse.quote(name.lstrip('/'))}"
