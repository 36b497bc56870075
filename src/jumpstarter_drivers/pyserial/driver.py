"""The serial console driver: a pyserial port exported as a byte stream.

>>> console = PySerial(url="loop://")
>>> console.client()
'jumpstarter_drivers.pyserial.client.PySerialClient'
>>> console.close()
>>> PySerial(url="nosuch://port")
Traceback (most recent call last):
...
jumpstarter_drivers.core.errors.ConfigurationError: PySerial: 'nosuch://port' is not a serial URL pyserial knows (invalid URL, protocol 'nosuch' not known); use a device path such as /dev/ttyUSB0, or loop://, socket://HOST:PORT, rfc2217://HOST:PORT
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import select
import termios
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import ClassVar

import anyio
import anyio.abc
import serial

from ..core.driver import Driver, exportstream
from ..core.errors import ConfigurationError, DriverError
from .common import DEFAULT_BAUDRATE

#: Largest read from the port in one go.
READ_CHUNK = 1 << 16

#: Read timeout of the worker-thread path (ports without a file descriptor); also how long
#: closing such a stream may wait for a read in progress.
POLL_INTERVAL = 0.05


def prepare_port(port: serial.SerialBase) -> int | None:
    """Make an open port ready for non-blocking reads; its file descriptor, or ``None`` (worker-thread reads)."""
    fd = port_fileno(port)
    if fd is not None:
        os.set_blocking(fd, False)
        if os.isatty(fd):
            # pyserial leaves VMIN=0, where an idle tty reads as b"" (end of file); with VMIN=1 an
            # idle tty raises EAGAIN and b"" means the line hung up.
            attrs = termios.tcgetattr(fd)
            attrs[6][termios.VMIN], attrs[6][termios.VTIME] = 1, 0
            termios.tcsetattr(fd, termios.TCSANOW, attrs)
    else:
        port.timeout = POLL_INTERVAL
    return fd


def port_fileno(port: serial.SerialBase) -> int | None:
    """The port's file descriptor, or ``None`` for URL handlers without one (loop://, rfc2217://)."""
    try:
        fd = port.fileno()
    except (AttributeError, OSError):  # io.UnsupportedOperation is an OSError
        return None
    return fd if isinstance(fd, int) and fd >= 0 else None


class SerialStream(anyio.abc.ByteStream):
    """An open pyserial port as an anyio byte stream that never blocks the event loop.

    Ports with a file descriptor (device paths, ``socket://``) are read and written
    non-blocking, woken by the event loop; the others (``loop://``, ``rfc2217://``) are read by a
    worker thread with a :data:`POLL_INTERVAL` timeout and written by a worker thread.

    A serial line cannot carry an end of file, so :meth:`send_eof` ends the console: what was
    sent is already written to the port, later :meth:`send` calls fail, and :meth:`receive`
    hands out what the port holds right now, then raises :class:`anyio.EndOfStream`. A board
    hanging up (``EIO``, a closed socket) also ends the stream. The stream owns the port:
    :meth:`aclose` closes it.
    """

    def __init__(
        self,
        port: serial.SerialBase,
        logger: logging.Logger | logging.LoggerAdapter,
        history: bytes = b"",
        record: Callable[[bytes], None] | None = None,
    ) -> None:
        self.port = port
        self.logger = logger
        self.fd = prepare_port(port)
        self._history = history
        self._record = record
        #: The board hung up (EIO, a closed socket): the port is of no further use.
        self.hung_up = False
        self._eof = False
        self._drained = False
        self._closed = False
        self._waiting: anyio.CancelScope | None = None
        self._send_lock = anyio.Lock()

    @property
    def url(self) -> str:
        return str(self.port.portstr)

    async def receive(self, max_bytes: int = READ_CHUNK) -> bytes:
        """The next bytes from the port (at most ``max_bytes``)."""
        max_bytes = max(1, min(max_bytes, READ_CHUNK))
        if self._history and not self._closed:
            data, self._history = self._history[:max_bytes], self._history[max_bytes:]
            return data
        while True:
            if self._closed:
                raise anyio.ClosedResourceError
            if self._drained:
                raise anyio.EndOfStream
            last = self._eof
            data = self._read_fd(max_bytes) if self.fd is not None else await self._read_thread(max_bytes, not last)
            if last:
                self._drained = True
            if data:
                if self._record is not None:
                    self._record(data)
                return data
            if last:
                raise anyio.EndOfStream
            if self.fd is not None:
                with anyio.CancelScope() as scope:
                    self._waiting = scope
                    try:
                        await anyio.wait_readable(self.fd)
                    finally:
                        self._waiting = None

    def _read_fd(self, max_bytes: int) -> bytes:
        """What the descriptor holds now, up to ``max_bytes`` (a tty hands out 4 KiB per read)."""
        chunks: list[bytes] = []
        have = 0
        while have < max_bytes:
            try:
                data = os.read(self.fd, max_bytes - have)
            except BlockingIOError:
                break
            except OSError as exc:
                if chunks:  # deliver what came before the error; the next read meets it again
                    break
                if exc.errno == errno.EIO:
                    self._hung_up("the other end hung up (EIO)")
                raise anyio.BrokenResourceError(f"reading {self.url} failed: {exc}") from exc
            if not data:
                if chunks:
                    break
                self._hung_up("the other end closed it")
            chunks.append(data)
            have += len(data)
        return b"".join(chunks)

    async def _read_thread(self, max_bytes: int, wait: bool) -> bytes:
        def read() -> bytes:
            if not wait and not self.port.in_waiting:
                return b""
            data = self.port.read(1)
            if data and max_bytes > 1:
                waiting = self.port.in_waiting
                if waiting:
                    data += self.port.read(min(waiting, max_bytes - 1))
            return data

        try:
            return await anyio.to_thread.run_sync(read)
        except serial.SerialException as exc:
            self._hung_up(str(exc))

    def _hung_up(self, why: str) -> None:
        self.logger.warning("serial port %s: %s; ending the console", self.url, why)
        self._eof = self._drained = self.hung_up = True
        raise anyio.EndOfStream

    def detach(self) -> serial.SerialBase:
        """End the stream but leave the port open; the port, for someone else to read."""
        self._closed = True
        if self._waiting is not None:
            self._waiting.cancel()
        return self.port

    async def send(self, item: bytes) -> None:
        """Write all of ``item`` to the port (waits while the port's output buffer is full)."""
        if self._closed:
            raise anyio.ClosedResourceError
        if self._eof:
            raise anyio.ClosedResourceError(f"serial port {self.url}: the console was ended by send_eof()")
        async with self._send_lock:
            if self.fd is not None:
                await self._write_fd(memoryview(item))
            else:
                try:
                    # Abandoned on cancellation so a stalled writer cannot hold up closing the port.
                    await anyio.to_thread.run_sync(self.port.write, bytes(item), abandon_on_cancel=True)
                except serial.SerialException as exc:
                    raise anyio.BrokenResourceError(f"writing {self.url} failed: {exc}") from exc

    async def _write_fd(self, view: memoryview) -> None:
        while view:
            try:
                view = view[os.write(self.fd, view) :]
            except BlockingIOError:
                await anyio.wait_writable(self.fd)
            except OSError as exc:
                raise anyio.BrokenResourceError(f"writing {self.url} failed: {exc}") from exc

    async def send_eof(self) -> None:
        """End the console (see the class docstring): no more sends, reads drain then end."""
        self._eof = True
        if self._waiting is not None:
            self._waiting.cancel()

    async def aclose(self) -> None:
        """Close the port (in a worker thread: closing a real UART may wait for its output to drain)."""
        if self._closed:
            return
        self._closed = True
        if self._waiting is not None:
            self._waiting.cancel()
        with anyio.CancelScope(shield=True):
            if self.fd is not None:
                anyio.notify_closing(self.fd)
            await anyio.to_thread.run_sync(self.port.close)


class ConsoleRecord:
    """Appends console bytes to a file, from any thread, flushed as they come."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()
        try:
            self._file = open(os.path.expanduser(path), "ab")  # noqa: SIM115 - open for the driver's life
        except OSError as exc:
            raise ConfigurationError(
                f"PySerial: cannot open the console record {path!r}: {exc.strerror}; "
                "give a writable file path in config field 'record'"
            ) from None

    def write(self, data: bytes) -> None:
        with self._lock:
            if not self._file.closed:
                self._file.write(data)
                self._file.flush()

    def close(self) -> None:
        with self._lock:
            self._file.close()


class IdleReader:
    """Reads an open port in a thread while no client is connected.

    Keeps the last ``limit`` bytes for the next client and hands every byte to ``record``.
    :meth:`stop` ends the thread and returns the port (``None`` if the board hung up meanwhile,
    the port then closed) with what was kept.
    """

    def __init__(
        self,
        port: serial.SerialBase,
        limit: int,
        record: Callable[[bytes], None] | None,
        logger: logging.Logger | logging.LoggerAdapter,
    ) -> None:
        self.port = port
        self.limit = limit
        self.record = record
        self.logger = logger
        self.fd = prepare_port(port)
        self._kept = bytearray()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._wake_read, self._wake_write = os.pipe()
        self._hung_up = False
        self._thread = threading.Thread(target=self._run, name=f"serial-idle {port.portstr}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stopping.is_set():
                data = self._read()
                if data is None:
                    return
                if data:
                    self._keep(data)
        except (OSError, serial.SerialException) as exc:
            self.logger.warning("serial port %s: %s; no console history until a client reopens it", self.port.portstr, exc)
            self._hung_up = True

    def _read(self) -> bytes | None:
        """Bytes from the port (``b""`` if none yet), or ``None`` when asked to stop."""
        if self.fd is None:
            data = self.port.read(1)  # waits at most POLL_INTERVAL
            waiting = self.port.in_waiting if data else 0
            return data + (self.port.read(min(waiting, READ_CHUNK)) if waiting else b"")
        ready, _, _ = select.select([self.fd, self._wake_read], [], [])
        if self._wake_read in ready:
            return None
        try:
            data = os.read(self.fd, READ_CHUNK)
        except BlockingIOError:
            return b""
        if not data:
            raise OSError(errno.EIO, "the other end closed it")
        return data

    def _keep(self, data: bytes) -> None:
        if self.record is not None:
            self.record(data)
        with self._lock:
            self._kept += data
            if len(self._kept) > self.limit:
                del self._kept[: len(self._kept) - self.limit]

    def stop(self, timeout: float = 5.0) -> tuple[serial.SerialBase | None, bytes]:
        """End the thread; the port (``None`` when it hung up, and then closed) and the kept bytes."""
        self._stopping.set()
        os.write(self._wake_write, b"x")
        self._thread.join(timeout)
        os.close(self._wake_read)
        os.close(self._wake_write)
        if self._thread.is_alive():
            raise DriverError(f"PySerial: the reader of {self.port.portstr} did not stop within {timeout:g} s")
        with self._lock:
            kept = bytes(self._kept)
        if self._hung_up:
            self.port.close()
            return None, kept
        return self.port, kept


@dataclass(kw_only=True)
class PySerial(Driver):
    """A serial console: any pyserial URL, exported as the byte stream ``connect``.

    ``url`` is a device path (``/dev/ttyUSB0``) or a pyserial URL (``loop://``,
    ``socket://HOST:PORT``, ``rfc2217://HOST:PORT``, ...). With ``check_present`` the port is
    opened and closed once at construction, so a missing device fails the exporter's start with
    a :class:`ConfigurationError`; turn it off for a device the board creates later (a USB
    gadget console). ``disable_hupcl`` clears HUPCL on the tty, so closing the port does not
    drop DTR and reset boards wired to it.

    By default the port is open only while a client is connected, and what the board prints
    meanwhile is lost. With ``buffer_size`` (bytes, e.g. 65536) the exporter holds the port open
    and keeps reading it between clients: the last ``buffer_size`` bytes go to the next client
    first. With ``record`` (a file path) every byte the board sends is appended to that file,
    whether a client is connected or not (this too holds the port open).
    """

    url: str
    #: Line speed in bits per second (ignored by URLs without a line, such as socket://).
    baudrate: int = DEFAULT_BAUDRATE
    check_present: bool = True
    disable_hupcl: bool = False
    #: Bytes of console output kept between clients for the next one (0: none, the port closes between clients).
    buffer_size: int = 0
    #: File every byte from the board is appended to (holds the port open, like ``buffer_size``).
    record: str | None = None

    URL_HINT: ClassVar[str] = (
        "use a device path such as /dev/ttyUSB0, or loop://, socket://HOST:PORT, rfc2217://HOST:PORT"
    )

    _connections: int = field(default=0, init=False, repr=False, compare=False)
    _idle: IdleReader | None = field(default=None, init=False, repr=False, compare=False)
    _record: ConsoleRecord | None = field(default=None, init=False, repr=False, compare=False)
    _closed: bool = field(default=False, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.baudrate <= 0:
            raise ConfigurationError(f"PySerial: config field 'baudrate' must be positive, got {self.baudrate}")
        if self.buffer_size < 0:
            raise ConfigurationError(
                f"PySerial: config field 'buffer_size' must be 0 (no history) or more, got {self.buffer_size}"
            )
        try:
            serial.serial_for_url(self.url, baudrate=self.baudrate, do_not_open=True)
        except ValueError as exc:
            raise ConfigurationError(
                f"PySerial: {self.url!r} is not a serial URL pyserial knows ({exc}); {self.URL_HINT}"
            ) from None
        if self.check_present:
            port = self._open(ConfigurationError)
            if self.watching:
                self._start_record()
                self._watch(port)
            else:
                port.close()

    @property
    def watching(self) -> bool:
        """Whether the exporter reads the port between clients (for ``buffer_size`` or ``record``)."""
        return self.buffer_size > 0 or self.record is not None

    def _start_record(self) -> None:
        if self.record is not None and self._record is None:
            self._record = ConsoleRecord(self.record)

    def _watch(self, port: serial.SerialBase) -> None:
        try:
            self._idle = IdleReader(port, self.buffer_size, self._record and self._record.write, self.logger)
        except BaseException:
            port.close()
            raise

    @classmethod
    def client(cls) -> str:
        return "jumpstarter_drivers.pyserial.client.PySerialClient"

    @exportstream
    async def connect(self) -> AsyncIterator[SerialStream]:
        """Open the serial port and stream its bytes both ways (with ``buffer_size``, first what the
        board printed since the last client left)."""
        async with self._stream(history=True) as stream:
            yield stream

    def connect_live(self) -> contextlib.AbstractAsyncContextManager[SerialStream]:
        """:meth:`connect` without the history: only what the board prints from now on (for drivers
        beside this one that wait for a prompt, which an old one in the history would fake)."""
        return self._stream(history=False)

    @contextlib.asynccontextmanager
    async def _stream(self, history: bool) -> AsyncIterator[SerialStream]:
        if self._closed:
            raise DriverError(f"PySerial {self.url}: the driver is closed")
        if self.watching:
            self._start_record()
        idle, self._idle = self._idle, None
        port, kept = await anyio.to_thread.run_sync(idle.stop) if idle is not None else (None, b"")
        if port is None:
            port = await anyio.to_thread.run_sync(self._open, DriverError)
        elif self.disable_hupcl:
            clear_hupcl(port)  # someone may have set it while the port was held
        try:
            stream = SerialStream(
                port, self.logger, kept if history else b"", self._record.write if self._record else None
            )
        except BaseException:
            port.close()
            raise
        self._connections += 1
        if self._connections > 1:
            self.logger.warning(
                "serial port %s is open by %d clients; each byte from the board reaches only one of them",
                self.url,
                self._connections,
            )
        try:
            yield stream
        finally:
            self._connections -= 1
            if self.watching and self._idle is None and not self._closed and not stream.hung_up:
                self._watch(stream.detach())
            else:
                await stream.aclose()

    def close(self) -> None:
        """Stop reading the port between clients, close it and the record file."""
        super().close()
        self._closed = True
        idle, self._idle = self._idle, None
        if idle is not None:
            port, _ = idle.stop()
            if port is not None:
                port.close()
        if self._record is not None:
            self._record.close()

    def _open(self, error: type[Exception]) -> serial.SerialBase:
        """Open the port; failures raise ``error`` with what to check."""
        try:
            port = serial.serial_for_url(self.url, baudrate=self.baudrate, do_not_open=True)
            port.open()
        except ValueError as exc:
            raise error(f"PySerial: cannot open {self.url!r}: {exc}; {self.URL_HINT}") from None
        except (serial.SerialException, OSError) as exc:
            raise error(f"PySerial: cannot open serial port {self.url!r}: {exc}; {self._hint(exc)}") from None
        if self.disable_hupcl:
            try:
                clear_hupcl(port)
            except BaseException:
                port.close()
                raise
        return port

    def _hint(self, exc: BaseException) -> str:
        code = getattr(exc, "errno", None)
        if "://" in self.url and not self.url.startswith(("hwgrep://", "spy://", "alt://")):
            return "check that the server behind the URL is running and reachable from the exporter"
        if code == errno.ENOENT:
            return (
                "check that the device is plugged in and the path is right (ls /dev/serial/by-id/), "
                "or set check_present: false if the board creates the device later"
            )
        if code == errno.EACCES:
            return (
                "check the device's permissions: the exporter's user needs read and write access "
                "(often through the dialout group)"
            )
        if code == errno.EBUSY:
            return "another program holds the device; close it (a terminal program, ModemManager, ser2net)"
        return "check that the device exists, is a serial port, and that the exporter's user may open it"


def clear_hupcl(port: serial.SerialBase) -> None:
    """Clear HUPCL on the port's tty so closing it does not hang up the line (drop DTR)."""
    fd = port_fileno(port)
    if fd is None or not os.isatty(fd):
        raise ConfigurationError(
            f"PySerial: disable_hupcl needs a tty, but {port.portstr!r} is not one; "
            "remove disable_hupcl or point url at the serial device"
        )
    attrs = termios.tcgetattr(fd)
    attrs[2] &= ~termios.HUPCL
    termios.tcsetattr(fd, termios.TCSANOW, attrs)
