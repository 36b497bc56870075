"""The serial console driver: a pyserial port exported as a byte stream.

>>> console = PySerial(url="loop://")
>>> console.client()
'jumpstarter_drivers.pyserial.client.PySerialClient'
>>> PySerial(url="nosuch://port")
Traceback (most recent call last):
...
jumpstarter_drivers.core.errors.ConfigurationError: PySerial: 'nosuch://port' is not a serial URL pyserial knows (invalid URL, protocol 'nosuch' not known); use a device path such as /dev/ttyUSB0, or loop://, socket://HOST:PORT, rfc2217://HOST:PORT
"""

from __future__ import annotations

import errno
import logging
import os
import termios
from collections.abc import AsyncIterator
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

    def __init__(self, port: serial.SerialBase, logger: logging.Logger | logging.LoggerAdapter) -> None:
        self.port = port
        self.logger = logger
        self.fd = port_fileno(port)
        if self.fd is not None:
            os.set_blocking(self.fd, False)
            if os.isatty(self.fd):
                # pyserial leaves VMIN=0, where an idle tty reads as b"" (end of file); with VMIN=1 an
                # idle tty raises EAGAIN and b"" means the line hung up.
                attrs = termios.tcgetattr(self.fd)
                attrs[6][termios.VMIN], attrs[6][termios.VTIME] = 1, 0
                termios.tcsetattr(self.fd, termios.TCSANOW, attrs)
        else:
            port.timeout = POLL_INTERVAL
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
        self._eof = self._drained = True
        raise anyio.EndOfStream

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


@dataclass(kw_only=True)
class PySerial(Driver):
    """A serial console: any pyserial URL, exported as the byte stream ``connect``.

    ``url`` is a device path (``/dev/ttyUSB0``) or a pyserial URL (``loop://``,
    ``socket://HOST:PORT``, ``rfc2217://HOST:PORT``, ...). With ``check_present`` the port is
    opened and closed once at construction, so a missing device fails the exporter's start with
    a :class:`ConfigurationError`; turn it off for a device the board creates later (a USB
    gadget console). ``disable_hupcl`` clears HUPCL on the tty, so closing the port does not
    drop DTR and reset boards wired to it.
    """

    url: str
    baudrate: int = DEFAULT_BAUDRATE
    check_present: bool = True
    disable_hupcl: bool = False

    URL_HINT: ClassVar[str] = (
        "use a device path such as /dev/ttyUSB0, or loop://, socket://HOST:PORT, rfc2217://HOST:PORT"
    )

    _connections: int = field(default=0, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.baudrate <= 0:
            raise ConfigurationError(f"PySerial: config field 'baudrate' must be positive, got {self.baudrate}")
        try:
            serial.serial_for_url(self.url, baudrate=self.baudrate, do_not_open=True)
        except ValueError as exc:
            raise ConfigurationError(
                f"PySerial: {self.url!r} is not a serial URL pyserial knows ({exc}); {self.URL_HINT}"
            ) from None
        if self.check_present:
            self._open(ConfigurationError).close()

    @classmethod
    def client(cls) -> str:
        return "jumpstarter_drivers.pyserial.client.PySerialClient"

    @exportstream
    async def connect(self) -> AsyncIterator[SerialStream]:
        """Open the serial port and stream its bytes both ways; the port closes when the client leaves."""
        port = await anyio.to_thread.run_sync(self._open, DriverError)
        try:
            stream = SerialStream(port, self.logger)
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
            await stream.aclose()

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
