"""HTTP: a file server beside the board, for boards to download images (ranges, any size)."""

from .client import HttpServerClient
from .driver import HttpServer
from .server import FileServer, parse_range

__all__ = ["FileServer", "HttpServer", "HttpServerClient", "parse_range"]
