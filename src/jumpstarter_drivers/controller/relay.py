"""The router's relay port: tunnels as plain byte streams, for the toolkit's own clients and exporters.

``RouterService.Stream`` wraps every chunk of a tunnel in a gRPC message; each one costs each
process on the path a trip through gRPC's threads. A client or exporter of this toolkit asks the
router endpoint where its relay listens (``Where``, a method upstream routers do not have, so
Jumpstarter's own peers keep using ``Stream``), opens a TLS connection there and sends one line::

    JMP-RELAY/1 <router token>\\n

The router answers ``ok\\n`` once the other side of the tunnel is there, or
``error <CODE>: <message>\\n`` and closes; after ``ok`` the connection carries the tunnel's bytes
as they are. Pairing, tokens, limits and the cut at the lease's end are the router's
(:mod:`.router`), so a relay side pairs with a ``Stream`` side as well as with another relay side.

Bounds (SECURITY.md): at most :data:`MAX_CONNECTIONS` connections at once (more are closed before
TLS); a connection must finish TLS within :data:`HANDSHAKE_TIMEOUT` and send its line (at most
:data:`MAX_PREAMBLE` bytes) within :data:`PREAMBLE_TIMEOUT`; at most :data:`MAX_PENDING`
connections may be waiting to send it at once; a paired connection buffers at most
:data:`WRITE_HIGH` bytes towards its peer before the other side stops being read; TCP keepalive
cuts a peer whose host vanished within about 25 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import Callable
from typing import TYPE_CHECKING

import grpc

if TYPE_CHECKING:
    from .router import Router

logger = logging.getLogger(__name__)

#: The gRPC service (on the router endpoint) whose ``Where`` tells the relay's port.
RELAY_SERVICE = "jumpstarter.toolkit.v1.Relay"
PREAMBLE = b"JMP-RELAY/1 "
#: Longest first line (a router token is under 200 bytes).
MAX_PREAMBLE = 1024
#: Seconds a connection has, after TLS, to send its first line.
PREAMBLE_TIMEOUT = 10.0
#: Connections that have not sent a valid first line yet; more are closed at once.
MAX_PENDING = 256
#: Bytes one read may hand over (bounds what arrives while TLS finishes starting).
CHUNK_BOUND = 256 * 1024
#: Relay connections one replica holds at once (a tunnel through the relay takes two).
MAX_CONNECTIONS = 1024
#: Seconds a connection may take to finish TLS.
HANDSHAKE_TIMEOUT = 10.0
#: Bytes a connection's outgoing buffer may hold before its peer stops being read.
WRITE_HIGH = 1 << 20
#: TCP keepalive: a peer whose host vanished is cut after about idle + interval * count seconds.
KEEPALIVE_IDLE, KEEPALIVE_INTERVAL, KEEPALIVE_COUNT = 10, 5, 3


def keep_alive(sock: socket.socket | None) -> None:
    """Turn on TCP keepalive with short timers (where the platform has them)."""
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (
        ("TCP_KEEPIDLE", KEEPALIVE_IDLE),
        ("TCP_KEEPINTVL", KEEPALIVE_INTERVAL),
        ("TCP_KEEPCNT", KEEPALIVE_COUNT),
    ):
        if hasattr(socket, name):
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)


class RelayConnection(asyncio.Protocol):
    """One connection to the relay port: its first line, then the tunnel's bytes one way and the other."""

    def __init__(self, router: Router) -> None:
        self.router = router
        self.transport: asyncio.Transport | None = None
        self._head = bytearray()
        self._early: list[bytes] = []
        self._timer: asyncio.TimerHandle | None = None
        self._pending = False
        #: start_tls running (it may hand over the first bytes before it returns).
        self._securing = False
        self._tls_task: asyncio.Task | None = None
        #: Router.relay(): authorizing, pairing, carrying.
        self._paired_task: asyncio.Task | None = None
        #: Where received bytes go once paired (the peer's transport, or a bridge to a Stream peer).
        self._sink: Callable[[bytes], None] | None = None
        #: Called once with the error (``None`` for a clean end) when nothing more will be received.
        self.on_end: Callable[[BaseException | None], None] | None = None
        #: Called when this connection's outgoing buffer fills and drains (they pause the peer's reading).
        self.on_pause: Callable[[], None] | None = None
        self.on_resume: Callable[[], None] | None = None
        self._writable = asyncio.Event()
        self._writable.set()
        self.closed = asyncio.Event()
        self._ended = False
        self._end_error: BaseException | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """A TCP connection: counted against :data:`MAX_CONNECTIONS`, then TLS (if any), then its line."""
        assert isinstance(transport, asyncio.Transport)
        if self.transport is not None:
            return  # start_tls's own call: the handshake is done, _secure goes on
        self.transport = transport
        if len(self.router.relays) >= MAX_CONNECTIONS:
            transport.abort()
            return
        self.router.relays.add(self)
        keep_alive(transport.get_extra_info("socket"))
        context = self.router.relay_tls
        if context is None:
            self._await_first_line(transport)
        else:
            self._securing = True
            self._tls_task = asyncio.get_running_loop().create_task(self._secure(transport, context))

    async def _secure(self, transport: asyncio.Transport, context: ssl.SSLContext) -> None:
        loop = asyncio.get_running_loop()
        try:
            secured = await loop.start_tls(
                transport, self, context, server_side=True, ssl_handshake_timeout=HANDSHAKE_TIMEOUT
            )
        except (OSError, TimeoutError, ConnectionError, asyncio.CancelledError) as exc:
            logger.debug("relay connection: TLS failed: %s", exc)
            transport.abort()
            self._release()
            return
        if secured is None:  # closed meanwhile
            self._release()
            return
        self._securing = False
        self.transport = secured
        self._await_first_line(secured)
        if self._head and not secured.is_closing():
            self._first_line()

    def _await_first_line(self, transport: asyncio.Transport) -> None:
        if self.router.relay_pending >= MAX_PENDING:
            transport.abort()
            return
        self.router.relay_pending += 1
        self._pending = True
        transport.set_write_buffer_limits(high=WRITE_HIGH)
        self._timer = asyncio.get_running_loop().call_later(
            PREAMBLE_TIMEOUT,
            self.refuse,
            grpc.StatusCode.DEADLINE_EXCEEDED,
            f"no '{PREAMBLE.decode().strip()} <router token>' line within {PREAMBLE_TIMEOUT:g} s",
        )

    def _release(self) -> None:
        self.router.relays.discard(self)
        self._not_pending()

    def _not_pending(self) -> None:
        if self._pending:
            self._pending = False
            self.router.relay_pending -= 1
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def data_received(self, data: bytes) -> None:
        if self._sink is not None:
            self._sink(data)
            return
        if self._paired_task is not None:
            self._early.append(data)  # arrived before reading paused; bounded by one read
            return
        self._head += data
        if self._securing:
            # the handshake is done but start_tls has not returned yet: parse once it has
            if len(self._head) > MAX_PREAMBLE + CHUNK_BOUND:
                self._abort()
            return
        self._first_line()

    def _first_line(self) -> None:
        line, newline, rest = self._head.partition(b"\n")
        if not newline:
            if len(self._head) > MAX_PREAMBLE:
                self.refuse(grpc.StatusCode.INVALID_ARGUMENT, f"first line longer than {MAX_PREAMBLE} bytes")
            return
        self._not_pending()
        assert self.transport is not None
        self.transport.pause_reading()
        if rest:
            self._early.append(bytes(rest))
        self._head.clear()
        if not line.startswith(PREAMBLE):
            self.refuse(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"expected '{PREAMBLE.decode().strip()} <router token>' (this port is the router's relay)",
            )
            return
        token = line[len(PREAMBLE) :].decode(errors="replace").strip()
        self._paired_task = asyncio.get_running_loop().create_task(self.router.relay(self, token))

    def _abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def paired(self) -> None:
        """Tell the peer its tunnel is there (before the other side's first byte reaches it)."""
        self.write(b"ok\n")

    def accept(self, sink: Callable[[bytes], None]) -> None:
        """Hand everything received to ``sink`` from now on."""
        assert self.transport is not None
        self._sink = sink
        early, self._early = self._early, []
        for data in early:
            sink(data)
        if self._ended:
            self._signal_end()
        else:
            self.transport.resume_reading()

    def refuse(self, code: grpc.StatusCode, message: str) -> None:
        """Tell the peer why, and close."""
        self._not_pending()
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(f"error {code.name}: {message}\n".encode())
            self.transport.close()

    def eof_received(self) -> bool:
        self._end(None)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._release()
        if self._tls_task is not None:
            self._tls_task.cancel()
        if self._sink is None and self._paired_task is not None:
            self._paired_task.cancel()  # gone while waiting for its other side
        self._end(exc)
        self._writable.set()
        self.closed.set()

    def _end(self, exc: BaseException | None) -> None:
        if self._ended:
            return
        self._ended, self._end_error = True, exc
        if self._sink is not None:
            self._signal_end()

    def _signal_end(self) -> None:
        callback, self.on_end = self.on_end, None
        if callback is not None:
            callback(self._end_error)

    def pause_writing(self) -> None:
        self._writable.clear()
        if self.on_pause is not None:
            self.on_pause()

    def resume_writing(self) -> None:
        self._writable.set()
        if self.on_resume is not None:
            self.on_resume()

    async def drain(self) -> None:
        """Wait until the outgoing buffer is below its limit (or the connection is gone)."""
        await self._writable.wait()

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def pause_reading(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def close(self, failed: bool) -> None:
        """End the connection: at once when the tunnel failed, else once what is queued is sent."""
        if self.transport is not None:
            if failed:
                self.transport.abort()
            else:
                self.transport.close()


async def serve(router: Router, host: str | None, port: int, ssl_context: ssl.SSLContext | None) -> asyncio.Server:
    """Listen for relay connections on ``host:port`` (``ssl_context`` ``None``: plaintext).

    TLS starts only once a connection is counted (``start_tls``), so a flood of stalled handshakes
    is bounded like everything else.
    """
    router.relay_tls = ssl_context
    loop = asyncio.get_running_loop()
    return await loop.create_server(lambda: RelayConnection(router), host, port, backlog=128)


async def close(server: asyncio.Server) -> None:
    server.close()
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(server.wait_closed(), 2.0)
