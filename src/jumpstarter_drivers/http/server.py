"""A threaded HTTP/1.1 file server for boards: GET and HEAD, single byte ranges, sendfile.

It works without a session: the :class:`~jumpstarter_drivers.http.driver.HttpServer` driver
wraps it. Files go out with ``socket.sendfile`` (zero copy, constant memory, any size).

Anyone on the network may connect, so what a peer can hold is bounded: at most
``max_connections`` connections at once and ``max_connections_per_host`` from one address
(more are answered 503 and closed at once); a request line and headers must arrive whole
within ``header_timeout`` seconds of the connection being free for a request (which also ends
idle keep-alive connections) and within ``MAX_HEADER_BYTES``; a reply that the peer does not
read for ``send_timeout`` seconds is cut, and so is one still unsent after ``send_timeout`` plus
its size at ``min_send_rate`` bytes per second (a peer reading a byte now and then). The listen
backlog is ``BACKLOG``.

>>> import tempfile
>>> server = FileServer(root=tempfile.mkdtemp())
>>> server.start()
>>> server.url.startswith("http://127.0.0.1:")
True
>>> server.stop()
"""

from __future__ import annotations

import email.utils
import io
import mimetypes
import os
import re
import select
import socket
import struct
import threading
import time
import urllib.parse
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from ..storage.served import DirectoryServer, PeerQuota, is_servable

#: Bytes a request line and its headers may take.
MAX_HEADER_BYTES = 64 << 10
#: Connections the kernel may queue before the server accepts them.
BACKLOG = 128

_RANGE = re.compile(r"^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$", re.IGNORECASE)


def parse_range(header: str, size: int) -> tuple[int, int] | None:
    """The inclusive ``(first, last)`` byte range a ``Range`` header asks of a ``size``-byte file.

    ``None`` means "serve the whole file" (no usable single range); ``ValueError`` means the
    range cannot be satisfied (answer 416).

    >>> parse_range("bytes=0-99", 1000), parse_range("bytes=900-", 1000), parse_range("bytes=-100", 1000)
    ((0, 99), (900, 999), (900, 999))
    >>> parse_range("bytes=0-1,5-6", 1000) is None
    True
    >>> parse_range("bytes=1000-", 1000)
    Traceback (most recent call last):
    ...
    ValueError: range bytes=1000- starts past the end of a 1000-byte file
    """
    match = _RANGE.match(header)
    if match is None:
        return None
    first, last = match.groups()
    if not first and not last:
        return None
    if not first:
        length = int(last)
        if length == 0 or size == 0:
            raise ValueError(f"range {header} asks for no bytes of a {size}-byte file")
        return max(0, size - length), size - 1
    start = int(first)
    end = int(last) if last else size - 1
    if last and end < start:
        return None
    if start >= size:
        raise ValueError(f"range {header} starts past the end of a {size}-byte file")
    return start, min(end, size - 1)


class _RequestReader(io.RawIOBase):
    """The connection's bytes, read within the handler's deadline and header budget."""

    def __init__(self, handler: _Handler) -> None:
        self.handler = handler

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        handler = self.handler
        left = handler.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"no complete request within {handler.server.header_timeout:g} s")
        if handler.budget <= 0:
            raise ConnectionAbortedError(f"request line and headers exceed {MAX_HEADER_BYTES} bytes")
        handler.connection.settimeout(left)
        view = memoryview(buffer)[: handler.budget]
        count = handler.connection.recv_into(view)
        handler.budget -= count
        return count


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    server_version = "jumpstarter-http"

    def setup(self) -> None:
        self.timeout = self.server.send_timeout
        super().setup()
        self.rfile = io.BufferedReader(_RequestReader(self))

    def handle_one_request(self) -> None:
        # A new request: its line and headers must come whole, in time and within the budget.
        self.deadline = time.monotonic() + self.server.header_timeout
        self.budget = MAX_HEADER_BYTES
        super().handle_one_request()

    def parse_request(self) -> bool:
        parsed = super().parse_request()
        self.connection.settimeout(self.server.send_timeout)  # the headers are in: now the reply
        return parsed

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def do_GET(self) -> None:
        self._serve(body=True)

    def _serve(self, body: bool) -> None:
        raw = urllib.parse.urlsplit(self.path).path
        name = urllib.parse.unquote(raw).lstrip("/")
        try:
            path = self.server.resolve(name)
        except ValueError:
            self._refuse(HTTPStatus.FORBIDDEN, f"{raw} is outside the served directory")
            return
        if not is_servable(path):
            self._refuse(HTTPStatus.NOT_FOUND, f"{raw} not found")
            return
        try:
            file = path.open("rb")
        except PermissionError:
            self._refuse(HTTPStatus.FORBIDDEN, f"{raw} is not readable")
            return
        with file:
            stat = os.fstat(file.fileno())
            size = stat.st_size
            first, last = 0, size - 1
            status = HTTPStatus.OK
            if (header := self.headers.get("Range")) and self._range_applies(stat.st_mtime):
                try:
                    wanted = parse_range(header, size)
                except ValueError:
                    self.send_response(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE)
                    self.send_header("Content-Range", f"bytes */{size}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if wanted is not None:
                    (first, last), status = wanted, HTTPStatus.PARTIAL_CONTENT
            length = last - first + 1
            self.send_response(status)
            self.send_header("Content-Type", mimetypes.guess_type(path.name)[0] or "application/octet-stream")
            self.send_header("Content-Length", str(length))
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Last-Modified", email.utils.formatdate(stat.st_mtime, usegmt=True))
            if status == HTTPStatus.PARTIAL_CONTENT:
                self.send_header("Content-Range", f"bytes {first}-{last}/{size}")
            self.end_headers()
            if body and length > 0:
                self.wfile.flush()
                self._send_file(file, first, length)
        self.server.log.debug("%s %s %s (%d bytes)", self.command, raw, status.value, length)

    def _send_file(self, file: Any, offset: int, length: int) -> None:
        """``sendfile`` ``length`` bytes from ``offset``; a peer reading slower than the bounds is cut.

        ``socket.sendfile`` waits ``send_timeout`` afresh after every byte the peer takes, so a
        slow reader is given an overall deadline too: ``send_timeout`` plus ``length / min_send_rate``.
        """
        server = self.server
        deadline = time.monotonic() + server.send_timeout + length / server.min_send_rate
        sock, poller = self.connection, select.poll()
        sock.settimeout(server.send_timeout)  # with a timeout the socket is non-blocking underneath
        poller.register(sock.fileno(), select.POLLOUT)
        idle_until = time.monotonic() + server.send_timeout
        while length > 0:
            now = time.monotonic()
            if now >= deadline or now >= idle_until:
                # closed with a reset: what the kernel still buffers for the peer is dropped, not sent on
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                raise TimeoutError(f"reply not read for {server.send_timeout:g} s" if now >= idle_until else
                                   f"reply not read at {server.min_send_rate:g} bytes/s or faster; cut")
            if not poller.poll(max(min(deadline, idle_until) - now, 0.001) * 1000):
                continue
            try:
                sent = os.sendfile(sock.fileno(), file.fileno(), offset, min(length, 1 << 20))
            except BlockingIOError:
                continue
            if sent == 0:  # the file shrank under us
                raise ConnectionAbortedError("the file ended before its announced length")
            offset, length = offset + sent, length - sent
            idle_until = time.monotonic() + server.send_timeout

    def _range_applies(self, mtime: float) -> bool:
        """A ``Range`` counts unless an ``If-Range`` names another version (we only send Last-Modified)."""
        condition = self.headers.get("If-Range")
        return not condition or condition.strip() == email.utils.formatdate(mtime, usegmt=True)

    def _refuse(self, status: HTTPStatus, message: str) -> None:
        body = f"{status.value} {status.phrase}: {message}\n".encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        self.server.log.debug("%s - %s", self.address_string(), format % args)


class _Server(ThreadingHTTPServer):
    daemon_threads = False
    block_on_close = True
    request_queue_size = BACKLOG

    def __init__(self, address: tuple, owner: FileServer, family: int) -> None:
        assert owner.resolve is not None
        self.address_family = family
        self.resolve = owner.resolve
        self.log = owner.log
        self.header_timeout = owner.header_timeout
        self.send_timeout = owner.send_timeout
        self.min_send_rate = owner.min_send_rate
        assert owner.log is not None
        self.connections = PeerQuota(
            "HTTP", owner.max_connections, owner.max_connections_per_host, "connections", owner.log
        )
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # Plain bind: HTTPServer.server_bind would look up the host name (slow, and useless here).
        # Reuse the address, so a restart on a fixed port does not wait out TIME-WAIT connections.
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.socket.bind(self.server_address)
        self.server_address = self.socket.getsockname()

    def verify_request(self, request: Any, client_address: Any) -> bool:
        """Count the connection, or answer 503 without a thread when a bound is reached (then it is closed)."""
        reason = self.connections.admit(request, client_address[0])
        if reason is None:
            return True
        body = f"503 Service Unavailable: server busy, {reason}; try again later\n".encode()
        head = f"HTTP/1.1 503 Service Unavailable\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        try:
            request.setblocking(False)
            request.send(head.encode() + body)
        except OSError as exc:
            self.log.debug("HTTP: cannot tell %s it is refused: %s", client_address[0], exc)
        return False

    def shutdown_request(self, request: Any) -> None:
        self.connections.release(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        import sys

        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError)):
            self.log.debug("HTTP client %s went away: %s", client_address, exc)
        else:
            self.log.exception("HTTP request from %s failed", client_address)

    def drop_connections(self) -> None:
        """Cut every open connection, so their threads end now."""
        for connection in self.connections.snapshot():
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError as exc:
                self.log.debug("closing a connection: %s", exc)


@dataclass
class FileServer(DirectoryServer):
    """Serves files under ``root`` over HTTP on ``host``:``port`` (see :class:`DirectoryServer`).

    ``header_timeout``, ``send_timeout``, ``min_send_rate``, ``max_connections`` and
    ``max_connections_per_host`` bound what a peer can hold (see the module docstring).
    """

    header_timeout: float = 10.0
    send_timeout: float = 30.0
    min_send_rate: float = 64 << 10
    max_connections: int = 64
    max_connections_per_host: int = 16

    def __post_init__(self) -> None:
        super().__post_init__()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        """Whether the server is accepting connections."""
        return self._thread is not None and self._thread.is_alive()

    @property
    def bound_port(self) -> int:
        """The TCP port the server listens on (0 when stopped)."""
        return self._server.server_address[1] if self._server is not None else 0

    @property
    def refused(self) -> int:
        """Connections answered 503 because a bound was reached (since the last start)."""
        return self._server.connections.refused if self._server is not None else 0

    @property
    def url(self) -> str:
        """The base URL of the served directory (ends without a slash)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.bound_port}"

    def start(self) -> None:
        """Bind and start serving; ``OSError`` when the address cannot be bound."""
        if self.running:
            return
        family, _, _, _, address = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM)[0]
        server = _Server(address, self, family)
        thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.2}, name=f"http-{server.server_address[1]}",
            daemon=True,
        )
        try:
            thread.start()
        except BaseException:  # no thread: stop() would wait for its serve_forever for ever
            server.server_close()
            raise
        self._server, self._thread = server, thread
        self.log.info("HTTP server on %s serving %s", self.url, self.root)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop accepting, cut open connections and wait (at most ``timeout`` s) for their threads."""
        if self._server is None:
            return
        server, thread = self._server, self._thread
        server.shutdown()
        server.drop_connections()
        assert thread is not None
        thread.join(timeout)
        closer = threading.Thread(target=server.server_close, name="http-close", daemon=True)
        closer.start()
        closer.join(timeout)
        if closer.is_alive():
            self.log.warning("HTTP connection threads still running after %g s", timeout)
        self._server = self._thread = None
        self.log.info("HTTP server stopped")
