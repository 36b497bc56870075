"""A read-only TFTP server (RFC 1350) with option negotiation (RFC 2347, 2348, 2349, 7440).

It works without a session: the :class:`~jumpstarter_drivers.tftp.driver.Tftp` driver wraps it.
One thread listens on the well-known port; each read request gets its own thread and socket
(its transfer ID). Write requests and paths outside the root are answered with a TFTP ERROR.

Anyone on the network may send requests, so what they can hold is bounded: at most
``max_transfers`` transfers at once and ``max_transfers_per_host`` from one address (more are
answered "busy" from the listening socket, without a thread); a transfer ends after
``max_transfer_time`` seconds whatever its peer does; a ``timeout`` option above ``max_timeout``
is not acknowledged, so the server keeps its own (a peer that never answers is dropped after
``timeout * (retries + 1)`` seconds).

>>> import tempfile
>>> server = TftpServer(root=tempfile.mkdtemp())
>>> server.start()
>>> server.bound_port > 0
True
>>> server.stop()
>>> server.running
False
"""

from __future__ import annotations

import enum
import math
import os
import select
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from ..storage.served import DirectoryServer, PeerQuota, is_servable

#: Largest block RFC 2348 allows.
MAX_BLKSIZE = 65464
DEFAULT_BLKSIZE = 512
_HEADER = struct.Struct("!HH")


class Opcode(enum.IntEnum):
    RRQ = 1
    WRQ = 2
    DATA = 3
    ACK = 4
    ERROR = 5
    OACK = 6


class ErrorCode(enum.IntEnum):
    NOT_DEFINED = 0
    FILE_NOT_FOUND = 1
    ACCESS_VIOLATION = 2
    DISK_FULL = 3
    ILLEGAL_OPERATION = 4
    UNKNOWN_TID = 5
    FILE_EXISTS = 6
    NO_SUCH_USER = 7
    OPTION_REFUSED = 8


class _Expired(Exception):
    """A transfer ran past ``max_transfer_time``."""


class TftpRefusal(Exception):
    """A request the server answers with a TFTP ERROR packet."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def error_packet(code: ErrorCode, message: str) -> bytes:
    """An ERROR packet.

    >>> error_packet(ErrorCode.FILE_NOT_FOUND, "no")
    b'\\x00\\x05\\x00\\x01no\\x00'
    """
    return struct.pack("!HH", Opcode.ERROR, code) + message.encode("utf-8", "replace") + b"\0"


@dataclass(frozen=True)
class TftpRequest:
    """A parsed read (RRQ) or write (WRQ) request: file name, mode and options (names lower-cased)."""

    opcode: Opcode
    filename: str
    mode: str
    options: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, packet: bytes) -> TftpRequest:
        """Parse a request packet; :class:`TftpRefusal` when it is malformed.

        >>> TftpRequest.parse(b"\\x00\\x01kernel\\x00octet\\x00blksize\\x001468\\x00")
        TftpRequest(opcode=<Opcode.RRQ: 1>, filename='kernel', mode='octet', options={'blksize': '1468'})
        """
        if len(packet) < 4:
            raise TftpRefusal(ErrorCode.ILLEGAL_OPERATION, "packet too short")
        (opcode,) = struct.unpack("!H", packet[:2])
        if opcode not in (Opcode.RRQ, Opcode.WRQ):
            raise TftpRefusal(ErrorCode.ILLEGAL_OPERATION, f"expected a read request, got opcode {opcode}")
        fields = packet[2:].split(b"\0")
        if len(fields) < 3 or fields[-1] != b"":
            raise TftpRefusal(ErrorCode.ILLEGAL_OPERATION, "malformed request: fields must end with NUL")
        fields = fields[:-1]
        try:
            filename, mode, *rest = (f.decode("utf-8") for f in fields)
        except UnicodeDecodeError:
            raise TftpRefusal(ErrorCode.ILLEGAL_OPERATION, "malformed request: file name is not UTF-8") from None
        options = {rest[i].lower(): rest[i + 1] for i in range(0, len(rest) - 1, 2)}
        return cls(Opcode(opcode), filename, mode.lower(), options)


class _Source:
    """Blocks of a file in octet or netascii mode."""

    def __init__(self, file: BinaryIO, netascii: bool) -> None:
        self.file = file
        self.netascii = netascii
        self.pending = b""

    def read(self, size: int) -> bytes:
        if not self.netascii:
            return self.file.read(size)
        while len(self.pending) < size:
            raw = self.file.read(max(size, 1 << 16))
            if not raw:
                break
            self.pending += raw.replace(b"\r", b"\r\0").replace(b"\n", b"\r\n")
        block, self.pending = self.pending[:size], self.pending[size:]
        return block


@dataclass
class TftpServer(DirectoryServer):
    """Serves files under ``root`` over TFTP, read only (see :class:`DirectoryServer` for the rest).

    ``timeout`` and ``retries`` govern retransmission; clients may ask for a different timeout
    up to ``max_timeout`` seconds. The ``max_transfers*`` and ``max_transfer_time`` bounds are
    described in the module docstring.
    """

    timeout: float = 1.0
    retries: int = 5
    max_blksize: int = MAX_BLKSIZE
    max_windowsize: int = 64
    max_timeout: int = 10
    max_transfers: int = 64
    max_transfers_per_host: int = 8
    max_transfer_time: float = 900.0

    def __post_init__(self) -> None:
        super().__post_init__()
        self._socket: socket.socket | None = None
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._listener: threading.Thread | None = None
        assert self.log is not None
        self._transfers = PeerQuota("TFTP", self.max_transfers, self.max_transfers_per_host, "transfers", self.log)
        self._bound_port = 0

    @property
    def running(self) -> bool:
        """Whether the server is listening."""
        return self._listener is not None and self._listener.is_alive()

    @property
    def bound_port(self) -> int:
        """The UDP port the server listens on (0 when stopped)."""
        return self._bound_port

    # lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        """Bind and start serving; ``OSError`` when the address cannot be bound."""
        if self.running:
            return
        family, _, _, _, address = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_DGRAM)[0]
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.bind(address)
            self._socket = sock
            self._bound_port = sock.getsockname()[1]
            self._wake_r, self._wake_w = socket.socketpair()
            self._listener = threading.Thread(target=self._listen, name=f"tftp-{self._bound_port}", daemon=True)
            self._listener.start()
        except BaseException:  # no fds left for the wake-up pair, no thread: nothing stays open
            sock.close()
            self._release()
            raise
        self.log.info("TFTP server on %s:%d serving %s", self.host, self._bound_port, self.root)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop listening and end every transfer, waiting at most ``timeout`` seconds."""
        if self._listener is None:
            return
        deadline = time.monotonic() + timeout
        assert self._wake_w is not None
        self._wake_w.send(b"x")
        # The listener first: until it has returned it may still start transfers.
        self._listener.join(timeout)
        threads = [self._listener, *self._active_transfers()]
        for thread in threads[1:]:
            thread.join(max(0.0, deadline - time.monotonic()))
        stuck = [t.name for t in threads if t.is_alive()]
        self._release()
        if stuck:
            self.log.warning("TFTP threads still running after %g s: %s", timeout, ", ".join(stuck))
        else:
            self.log.info("TFTP server stopped")

    def _release(self) -> None:
        """Close the sockets and forget the listener (once it has returned, or when it never started)."""
        for sock in (self._socket, self._wake_r, self._wake_w):
            if sock is not None:
                sock.close()
        self._socket = self._wake_r = self._wake_w = None
        self._listener = None
        self._bound_port = 0

    @property
    def refused(self) -> int:
        """Requests answered "busy" because a bound was reached (since the server was created)."""
        return self._transfers.refused

    def _active_transfers(self) -> list[threading.Thread]:
        return self._transfers.snapshot()

    # serving ---------------------------------------------------------------------------------

    def _listen(self) -> None:
        assert self._socket is not None and self._wake_r is not None
        poller = select.poll()
        poller.register(self._socket, select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        wake = self._wake_r.fileno()
        while True:
            ready = {fd for fd, _ in poller.poll()}
            if wake in ready:
                return
            try:
                packet, peer = self._socket.recvfrom(65536)
            except OSError as exc:
                self.log.warning("TFTP listener: %s", exc)
                continue
            thread = threading.Thread(
                target=self._serve_request, args=(packet, peer), name=f"tftp-{peer[0]}:{peer[1]}", daemon=True
            )
            if self._admit(thread, peer):
                try:
                    thread.start()
                except RuntimeError as exc:  # no memory or threads left for it: refuse it, keep listening
                    self._transfers.release(thread)
                    self.log.warning("TFTP: no thread for a request from %s: %s", peer[0], exc)
                    self._busy(peer, f"no thread to serve it ({exc})")

    def _admit(self, thread: threading.Thread, peer: tuple) -> bool:
        """Count ``thread`` as a transfer of ``peer``; answer "busy" instead when a bound is reached."""
        reason = self._transfers.admit(thread, peer[0])
        if reason is None:
            return True
        self._busy(peer, reason)
        return False

    def _busy(self, peer: tuple, reason: str) -> None:
        """Tell ``peer``, from the listening socket, that its request is refused for ``reason``."""
        assert self._socket is not None
        try:
            self._socket.sendto(error_packet(ErrorCode.NOT_DEFINED, f"server busy: {reason}; try again later"), peer)
        except OSError as exc:
            self.log.debug("TFTP: cannot tell %s:%d it is refused: %s", peer[0], peer[1], exc)

    def _serve_request(self, packet: bytes, peer: tuple) -> None:
        assert self._socket is not None
        try:
            with socket.socket(self._socket.family, socket.SOCK_DGRAM) as sock:
                sock.bind((self._socket.getsockname()[0], 0))
                sock.connect(peer)
                _Transfer(self, sock, peer).run(packet)
        except OSError as exc:
            self.log.info("TFTP transfer to %s:%d ended: %s", peer[0], peer[1], exc)
        finally:
            self._transfers.release(threading.current_thread())


class _Transfer:
    """One read request, served from its own socket."""

    def __init__(self, server: TftpServer, sock: socket.socket, peer: tuple) -> None:
        self.server = server
        self.sock = sock
        self.peer = f"{peer[0]}:{peer[1]}"
        self.log = server.log
        self.timeout_ms = int(server.timeout * 1000)
        self.poller = select.poll()
        self.poller.register(sock, select.POLLIN)
        assert server._wake_r is not None
        self.poller.register(server._wake_r, select.POLLIN)
        self.wake = server._wake_r.fileno()
        self.deadline = time.monotonic() + server.max_transfer_time

    def run(self, packet: bytes) -> None:
        try:
            request = TftpRequest.parse(packet)
            if request.opcode is Opcode.WRQ:
                self.log.info("TFTP: refused write request for %r from %s", request.filename, self.peer)
                raise TftpRefusal(
                    ErrorCode.ACCESS_VIOLATION, "this TFTP server is read-only; write requests are refused"
                )
            if request.mode not in ("octet", "netascii"):
                raise TftpRefusal(
                    ErrorCode.ILLEGAL_OPERATION, f"unsupported mode {request.mode!r}; use octet or netascii"
                )
            path = self._open_path(request.filename)
            with path.open("rb") as file:
                self._send(request, file, path.stat().st_size)
        except TftpRefusal as refusal:
            self.sock.send(error_packet(refusal.code, refusal.message))
        except _Expired:
            limit = self.server.max_transfer_time
            self.log.warning("TFTP: transfer to %s ran for %g s (max_transfer_time); abandoned", self.peer, limit)
            self.sock.send(error_packet(ErrorCode.NOT_DEFINED, f"transfer took longer than {limit:g} s; abandoned"))

    def _open_path(self, name: str) -> Path:
        assert self.server.resolve is not None
        try:
            path = self.server.resolve(name.lstrip("/"))
        except ValueError:
            raise TftpRefusal(ErrorCode.ACCESS_VIOLATION, f"{name}: outside the TFTP root") from None
        if not is_servable(path):
            self.log.info("TFTP: %s asked for %r, which does not exist", self.peer, name)
            raise TftpRefusal(ErrorCode.FILE_NOT_FOUND, f"{name}: file not found")
        if not os.access(path, os.R_OK):
            raise TftpRefusal(ErrorCode.ACCESS_VIOLATION, f"{name}: not readable")
        return path

    def _negotiate(self, request: TftpRequest, size: int) -> tuple[dict[str, str], int, int]:
        accepted: dict[str, str] = {}
        blksize, window = DEFAULT_BLKSIZE, 1
        options = request.options
        if (value := _int(options.get("blksize"))) is not None and value >= 8:
            blksize = min(value, self.server.max_blksize)
            accepted["blksize"] = str(blksize)
        if (value := _int(options.get("timeout"))) is not None and 1 <= value <= min(255, self.server.max_timeout):
            self.timeout_ms = value * 1000
            accepted["timeout"] = str(value)
        if "tsize" in options and request.mode == "octet" and size > 0:
            # Some clients (curl) refuse a tsize of 0, so an empty file goes without one.
            accepted["tsize"] = str(size)
        if (value := _int(options.get("windowsize"))) is not None and value >= 1:
            window = min(value, self.server.max_windowsize)
            accepted["windowsize"] = str(window)
        return accepted, blksize, window

    def _send(self, request: TftpRequest, file: BinaryIO, size: int) -> None:
        accepted, blksize, window = self._negotiate(request, size)
        started = time.monotonic()
        if accepted:
            oack = struct.pack("!H", Opcode.OACK) + b"".join(
                k.encode() + b"\0" + v.encode() + b"\0" for k, v in accepted.items()
            )
            if not self._exchange(oack, 0):
                return
        source = _Source(file, request.mode == "netascii")
        sent = self._stream(source, blksize, window, request.filename)
        if sent is None:
            return
        elapsed = max(time.monotonic() - started, 1e-6)
        self.log.info(
            "TFTP: sent %r (%d bytes, blksize %d, window %d) to %s in %.2f s (%.1f MB/s)",
            request.filename,
            sent,
            blksize,
            window,
            self.peer,
            elapsed,
            sent / elapsed / 1e6,
        )

    def _stream(self, source: _Source, blksize: int, window: int, name: str) -> int | None:
        """Send every block, ``window`` at a time (go-back-N on loss); bytes sent, ``None`` if abandoned."""
        send, receive, read = self.sock.send, self._receive, source.read
        header = _HEADER.pack
        cache: dict[int, bytes] = {}
        acked, next_block, last, retries, sent = 0, 1, -1, 0, 0
        while True:
            while next_block <= acked + window and (last < 0 or next_block <= last):
                data = cache.get(next_block)
                if data is None:
                    data = cache[next_block] = read(blksize)
                    sent += len(data)
                    if len(data) < blksize:
                        last = next_block
                send(header(Opcode.DATA, next_block & 0xFFFF) + data)
                next_block += 1
            reply = receive()
            if reply is None:
                retries += 1
                if retries > self.server.retries:
                    self.log.warning("TFTP: %s stopped answering during %r; transfer abandoned", self.peer, name)
                    return None
                next_block = acked + 1
                continue
            opcode, number = reply
            if opcode == Opcode.ACK:
                in_flight = next_block - 1 - acked
                delta = (number - acked) & 0xFFFF
                if 0 < delta <= in_flight:
                    for block in range(acked + 1, acked + delta + 1):
                        del cache[block]
                    acked += delta
                    retries = 0
                    if acked == last:
                        return sent
                    if delta < in_flight:
                        next_block = acked + 1
                elif delta == 0 and window > 1:
                    next_block = acked + 1
            elif opcode == Opcode.ERROR:
                self.log.info("TFTP: %s cancelled %r: error %d", self.peer, name, number)
                return None

    def _exchange(self, packet: bytes, block: int) -> bool:
        """Send ``packet`` until the peer acknowledges ``block``; ``False`` if it gives up or errs."""
        for _ in range(self.server.retries + 1):
            self.sock.send(packet)
            while (reply := self._receive()) is not None:
                opcode, number = reply
                if opcode == Opcode.ERROR:
                    self.log.info("TFTP: %s declined the options (error %d)", self.peer, number)
                    return False
                if opcode == Opcode.ACK and number == block:
                    return True
        self.log.warning("TFTP: %s never acknowledged the option negotiation", self.peer)
        return False

    def _receive(self) -> tuple[int, int] | None:
        """The next packet from the peer as ``(opcode, number)``; ``None`` on timeout.

        :class:`_Expired` once the transfer has run ``max_transfer_time`` seconds.
        """
        left_ms = (self.deadline - time.monotonic()) * 1000
        if left_ms <= 0:
            raise _Expired
        ready = self.poller.poll(min(self.timeout_ms, math.ceil(left_ms)))
        if not ready:
            if time.monotonic() >= self.deadline:
                raise _Expired
            return None
        if len(ready) > 1 or ready[0][0] == self.wake:
            raise OSError("server stopping")
        packet = self.sock.recv(65536)
        if len(packet) < 4:
            return (0, 0)
        return _HEADER.unpack_from(packet)


def _int(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        return None
