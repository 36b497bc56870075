"""Forwarding a board's TCP port to this machine, over the session's byte streams.

>>> with client.board.http.forward() as (host, port):         # doctest: +SKIP
...     requests.get(f"http://{host}:{port}/")

The forwarder listens on loopback only (``127.0.0.1``), carries each accepted connection over
its own byte stream to the exporter, and serves at most ``max_connections`` at a time; more wait
in the listen backlog. Leaving the ``with`` block closes the listener and every connection.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
from collections.abc import Iterator

from ..core.client import ByteStream, DriverClient
from ..core.errors import ConfigurationError

logger = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
#: How often blocked pumps look whether the forwarder is closing.
POLL = 0.2
CHUNK = 1 << 16


class Forwarder:
    """A loopback listener whose connections each get a byte stream from ``open_stream``."""

    def __init__(self, open_stream: contextlib.AbstractContextManager, where: str, local_port: int = 0,
                 max_connections: int = 16) -> None:
        self.open_stream, self.where = open_stream, where
        self.listener = socket.create_server((LOOPBACK, local_port), backlog=max_connections)
        self.listener.settimeout(POLL)
        self.address: tuple[str, int] = self.listener.getsockname()[:2]
        self.slots = threading.BoundedSemaphore(max_connections)
        self.closing = threading.Event()
        self.threads: list[threading.Thread] = []
        self.sockets: set[socket.socket] = set()
        self.lock = threading.Lock()
        self.acceptor = threading.Thread(target=self._accept, name=f"forward {where}", daemon=True)

    def start(self) -> None:
        self.acceptor.start()

    def _accept(self) -> None:
        while not self.closing.is_set():
            if not self.slots.acquire(timeout=POLL):
                continue
            try:
                conn, peer = self.listener.accept()
            except TimeoutError:
                self.slots.release()
                continue
            except OSError:  # the listener closed
                self.slots.release()
                return
            with self.lock:
                self.sockets.add(conn)
                thread = threading.Thread(target=self._serve, args=(conn, peer), name=f"forward {peer}", daemon=True)
                self.threads = [t for t in self.threads if t.is_alive()] + [thread]
            thread.start()

    def _serve(self, conn: socket.socket, peer: tuple[str, int]) -> None:
        try:
            with self.open_stream() as stream:
                logger.debug("forwarding %s:%d to %s", *peer[:2], self.where)
                upstream = threading.Thread(target=self._upstream, args=(conn, stream), daemon=True)
                upstream.start()
                self._downstream(conn, stream)
                upstream.join()
        except Exception as exc:  # noqa: BLE001 - one failed connection is logged, the others go on
            logger.warning("forwarding a connection from %s:%d to %s failed: %s", *peer[:2], self.where, exc)
        finally:
            with self.lock:
                self.sockets.discard(conn)
            conn.close()
            self.slots.release()

    def _upstream(self, conn: socket.socket, stream: ByteStream) -> None:
        """Local client -> board; the client's end of input ends the stream's sending side."""
        try:
            while data := conn.recv(CHUNK):
                stream.send(data)
        except OSError as exc:
            logger.debug("local connection ended: %s", exc)
        finally:
            with contextlib.suppress(Exception):
                stream.send_eof()

    def _downstream(self, conn: socket.socket, stream: ByteStream) -> None:
        """Board -> local client, until the board closes or the forwarder does."""
        while not self.closing.is_set():
            try:
                data = stream.receive(POLL)
            except TimeoutError:
                continue
            if not data:
                break
            try:
                conn.sendall(data)
            except OSError:
                break
        with contextlib.suppress(OSError):
            conn.shutdown(socket.SHUT_RDWR if self.closing.is_set() else socket.SHUT_WR)

    def close(self) -> None:
        self.closing.set()
        self.listener.close()
        self.acceptor.join(5)
        with self.lock:
            for conn in self.sockets:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
            threads = list(self.threads)
        for thread in threads:
            thread.join(10)


class TcpNetworkClient(DriverClient):
    """Client of a :class:`~jumpstarter_drivers.network.driver.TcpNetwork`: one port of the board."""

    def address(self) -> tuple[str, int]:
        """The board's host and port as the exporter reaches them."""
        found = self.call("address")
        return str(found["host"]), int(found["port"])

    @contextlib.contextmanager
    def forward(self, port: int | None = None, local_port: int = 0,
                max_connections: int = 16) -> Iterator[tuple[str, int]]:
        """Listen on ``127.0.0.1:local_port`` (0: any free port) and carry each connection to the
        board's port; yields the local ``(host, port)``. ``port``, when given, must be this node's."""
        _, board_port = self.address()
        if port is not None and port != board_port:
            raise ConfigurationError(f"{self.name or 'root'} forwards port {board_port}, not {port}")
        forwarder = Forwarder(lambda: self.stream("connect"), f"{self.name} port {board_port}", local_port,
                              max_connections)
        forwarder.start()
        logger.info("forwarding %s:%d to %s port %d", *forwarder.address, self.name, board_port)
        try:
            yield forwarder.address
        finally:
            forwarder.close()


class NetworkClient(DriverClient):
    """Client of a :class:`~jumpstarter_drivers.network.driver.Network`: several ports of the board."""

    def ports(self) -> dict[int, TcpNetworkClient]:
        """The forwardable ports and their nodes."""
        return {child.address()[1]: child for child in self.children.values() if isinstance(child, TcpNetworkClient)}

    @contextlib.contextmanager
    def forward(self, port: int, local_port: int = 0, max_connections: int = 16) -> Iterator[tuple[str, int]]:
        """Forward the board's ``port`` (one of the configured ones) to a local loopback port."""
        with forward_target(self, port).forward(port, local_port, max_connections) as address:
            yield address


def forward_target(node: DriverClient, port: int) -> TcpNetworkClient:
    """The node that forwards ``port``: ``node`` itself (a ``TcpNetwork``) or its child for that port."""
    if isinstance(node, TcpNetworkClient):
        return node
    if isinstance(node, NetworkClient):
        ports = node.ports()
        if port in ports:
            return ports[port]
        raise ConfigurationError(f"{node.name} forwards ports {', '.join(map(str, sorted(ports)))}, not {port}")
    raise ConfigurationError(f"{node.name or 'root'} is not a network node (TcpNetwork or Network); it cannot forward")


def parse_forward(spec: str) -> tuple[int, str, int]:
    """``LOCAL:NODE:PORT`` -> ``(local port, dotted node path, board port)``.

    >>> parse_forward("8080:board.http:80")
    (8080, 'board.http', 80)
    """
    parts = spec.split(":")
    if len(parts) != 3 or not parts[0].isdigit() or not parts[2].isdigit() or not parts[1]:
        raise ValueError(f"{spec!r} is not LOCAL:NODE:PORT (e.g. 8080:board.http:80; LOCAL 0 picks a free port)")
    local, node, port = int(parts[0]), parts[1], int(parts[2])
    if local > 65535 or not 0 < port < 65536:
        raise ValueError(f"{spec!r}: ports are 1-65535 (LOCAL may be 0)")
    return local, node, port
