"""Byte links: non-blocking sockets (plain or TLS) spliced to each other on the running event loop.

asyncio's TLS transport runs OpenSSL through memory buffers with several Python calls per read
and per write; a relay forwarding small gRPC frames pays that at every hop. A :class:`Link`
reads and writes its socket directly (``ssl.SSLSocket`` in non-blocking mode: one call into
OpenSSL per read or write) from ``add_reader``/``add_writer`` callbacks, and hands what it reads
to a sink, usually the other link's :meth:`Link.write`.

Flow control: a link whose unsent bytes pass ``high`` stops the links that write into it from
reading, until it has sent down to half of that. A link is used by one event loop only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections import deque
from collections.abc import Callable

logger = logging.getLogger(__name__)

#: Most bytes one read callback gathers before handing them on.
READ_CHUNK = 1 << 20
#: Unsent bytes a link may hold before its writers stop reading.
WRITE_HIGH = 1 << 20

_WOULD_BLOCK = (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError)


async def handshake(sock: ssl.SSLSocket, timeout: float) -> None:
    """Finish the TLS handshake of a non-blocking ``sock`` within ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(timeout):
        while True:
            try:
                sock.do_handshake()
                return
            except ssl.SSLWantReadError:
                await _ready(loop, sock.fileno(), writing=False)
            except ssl.SSLWantWriteError:
                await _ready(loop, sock.fileno(), writing=True)


async def accept(listener: socket.socket, serve: Callable[[socket.socket, object], None], what: str) -> None:
    """Hand each connection to the non-blocking ``listener`` to ``serve(connection, peer)`` until
    cancelled; a failed accept (out of file descriptors, say) is logged, naming ``what``, and tried
    again rather than ending the listener for good (it ends once the listener is found closed)."""
    loop = asyncio.get_running_loop()
    while True:
        try:
            connection, peer = await loop.sock_accept(listener)
        except OSError as exc:
            if listener.fileno() < 0:
                return  # closed
            logger.warning("%s: cannot accept a connection: %s", what, exc)
            await asyncio.sleep(0.1)
            continue
        serve(connection, peer)


async def _ready(loop: asyncio.AbstractEventLoop, fd: int, writing: bool) -> None:
    waiter = loop.create_future()
    add, remove = (loop.add_writer, loop.remove_writer) if writing else (loop.add_reader, loop.remove_reader)
    add(fd, lambda: waiter.done() or waiter.set_result(None))
    try:
        await waiter
    finally:
        remove(fd)


class Link:
    """One non-blocking socket on the running loop: reads go to ``sink``, :meth:`write` sends."""

    def __init__(self, sock: socket.socket, high: int = WRITE_HIGH) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.fd = sock.fileno()
        self.loop = asyncio.get_running_loop()
        self.high = high
        #: Where received bytes go; ``on_end(error)`` once nothing more will come (``None``: a clean end).
        self.sink: Callable[[bytes], None] | None = None
        self.on_end: Callable[[BaseException | None], None] | None = None
        self.closed = asyncio.Event()
        self._out: deque[memoryview] = deque()
        self._unsent = 0
        self._reading = False
        self._writing = False
        self._closing = False
        self._ended = False
        #: Links that stopped reading because this one's unsent bytes passed ``high``.
        self._paused: set[Link] = set()

    @property
    def unsent(self) -> int:
        return self._unsent

    # reading -------------------------------------------------------------------------------

    def start_reading(self) -> None:
        if self._reading or self._ended or self.closed.is_set():
            return
        self._reading = True
        self.loop.add_reader(self.fd, self._readable)
        if isinstance(self.sock, ssl.SSLSocket) and self.sock.pending():
            self.loop.call_soon(self._readable)  # decrypted bytes waiting in OpenSSL: no readiness event comes

    def stop_reading(self) -> None:
        if self._reading:
            self._reading = False
            with contextlib.suppress(ValueError, OSError):
                self.loop.remove_reader(self.fd)

    def _readable(self) -> None:
        if not self._reading:
            return
        chunks: list[bytes] = []
        size = 0
        end: BaseException | None = None
        ended = False
        try:
            while size < READ_CHUNK:
                data = self.sock.recv(READ_CHUNK - size)
                if not data:
                    ended = True
                    break
                chunks.append(data)
                size += len(data)
        except _WOULD_BLOCK:
            pass
        except (OSError, ValueError) as exc:
            ended, end = True, exc
        if chunks and self.sink is not None:
            self.sink(chunks[0] if len(chunks) == 1 else b"".join(chunks))
        if ended:
            self._end(end)
        elif size >= READ_CHUNK and isinstance(self.sock, ssl.SSLSocket) and self.sock.pending():
            self.loop.call_soon(self._readable)

    def _end(self, error: BaseException | None) -> None:
        self.stop_reading()
        if not self._ended:
            self._ended = True
            callback, self.on_end = self.on_end, None
            if callback is not None:
                callback(error)

    # writing -------------------------------------------------------------------------------

    def write(self, data: bytes | memoryview, source: Link | None = None) -> None:
        """Send ``data`` (queued past what the socket takes now); ``source`` stops reading while too much waits."""
        if self._closing or self.closed.is_set() or not data:
            return
        view = memoryview(data)
        if not self._out:
            try:
                sent = self.sock.send(view)
            except _WOULD_BLOCK:
                sent = 0
            except (OSError, ValueError) as exc:
                self.abort(exc)
                return
            if sent >= len(view):
                return
            view = view[sent:]
        self._out.append(view)
        self._unsent += len(view)
        if not self._writing:
            self._writing = True
            self.loop.add_writer(self.fd, self._writable)
        if source is not None and self._unsent > self.high and source not in self._paused:
            self._paused.add(source)
            source.stop_reading()

    def _writable(self) -> None:
        while self._out:
            head = self._out[0]
            try:
                sent = self.sock.send(head)
            except _WOULD_BLOCK:
                break  # a TLS write is retried with the same bytes (OpenSSL allows the buffer to move)
            except (OSError, ValueError) as exc:
                self.abort(exc)
                return
            self._unsent -= sent
            if sent >= len(head):
                self._out.popleft()
            else:
                self._out[0] = head[sent:]
                break
        if self._paused and self._unsent <= self.high // 2:
            paused, self._paused = self._paused, set()
            for source in paused:
                source.start_reading()
        if not self._out:
            self._writing = False
            with contextlib.suppress(ValueError, OSError):
                self.loop.remove_writer(self.fd)
            if self._closing:
                self._finish()

    # ending --------------------------------------------------------------------------------

    def close(self) -> None:
        """Close once everything queued is sent."""
        if self.closed.is_set():
            return
        self._closing = True
        self.stop_reading()
        if not self._out:
            self._finish()

    def abort(self, error: BaseException | None = None) -> None:
        """Close now, dropping what is queued."""
        self._out.clear()
        self._unsent = 0
        self._end(error)
        self._finish()

    def _finish(self) -> None:
        if self.closed.is_set():
            return
        self.stop_reading()
        if self._writing:
            self._writing = False
            with contextlib.suppress(ValueError, OSError):
                self.loop.remove_writer(self.fd)
        for source in self._paused:
            source.start_reading()
        self._paused.clear()
        with contextlib.suppress(OSError):
            self.sock.close()
        self.closed.set()
        self._end(None)


def splice(a: Link, b: Link) -> None:
    """Each link's bytes go to the other; either one ending closes the other once it has sent what it holds."""
    a.sink = lambda data: b.write(data, a)
    b.sink = lambda data: a.write(data, b)
    a.on_end = lambda error: b.abort(error) if error is not None else b.close()
    b.on_end = lambda error: a.abort(error) if error is not None else a.close()
    a.start_reading()
    b.start_reading()
