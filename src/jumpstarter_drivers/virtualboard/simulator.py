"""A board that behaves like U-Boot on its serial console, in pure Python.

:class:`VirtualUBoot` runs one power-on lifetime of a board on a :class:`Uart` (the board's
end of a pseudo-terminal): boot banner, autoboot countdown a key interrupts, the ``=> ``
prompt and a subset of U-Boot's commands. Network loads are real TFTP downloads
(``tftpboot`` with ``serverip`` and ``tftpdstp``), the block device is a file, and
``booti``/``bootm`` of a loaded kernel start a busybox-like shell (:mod:`.shell`).

>>> mem = Memory(base=0x40000000, size=0x1000000)
>>> mem.write(0x40000010, b"abc")
>>> mem.read(0x4000000f, 5)
b'\\x00abc\\x00'
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import select
import shlex
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

logger = logging.getLogger(__name__)

BLOCK_SIZE = 512
PROMPT = b"=> "
AUTOBOOT = "Hit any key to stop autoboot: "


class PoweredOff(Exception):
    """Raised inside the simulator when its power is switched off; unwinds the board's code."""


class Memory:
    """Sparse RAM: ``size`` bytes from ``base``, allocated in 1 MiB pages on first write."""

    PAGE = 1 << 20

    def __init__(self, base: int, size: int) -> None:
        self.base, self.size = base, size
        self._pages: dict[int, bytearray] = {}

    def check(self, addr: int, length: int) -> None:
        """Raise ``ValueError`` when ``[addr, addr+length)`` is not RAM."""
        if addr < self.base or addr + length > self.base + self.size:
            raise ValueError(f"address range {addr:#x}+{length:#x} is outside RAM {self.base:#x}..{self.base + self.size:#x}")

    def write(self, addr: int, data: bytes) -> None:
        self.check(addr, len(data))
        offset, view = addr - self.base, memoryview(data)
        while view:
            page, start = divmod(offset, self.PAGE)
            n = min(len(view), self.PAGE - start)
            buf = self._pages.setdefault(page, bytearray(self.PAGE))
            buf[start : start + n] = view[:n]
            view, offset = view[n:], offset + n

    def read(self, addr: int, length: int) -> bytes:
        self.check(addr, length)
        offset, out = addr - self.base, bytearray()
        while len(out) < length:
            page, start = divmod(offset, self.PAGE)
            n = min(length - len(out), self.PAGE - start)
            buf = self._pages.get(page)
            out += buf[start : start + n] if buf is not None else bytes(n)
            offset += n
        return bytes(out)


class Uart:
    """The board's end of the serial line: the master side of a pseudo-terminal.

    Writes wait at most ``write_timeout`` for a reader, then drop bytes (as a UART with nobody
    listening does). Reads raise :class:`PoweredOff` once ``stop`` is set.
    """

    def __init__(self, fd: int, stop: threading.Event, wake_fd: int, write_timeout: float = 2.0) -> None:
        self.fd, self.stop, self.wake_fd, self.write_timeout = fd, stop, wake_fd, write_timeout
        self.pending = b""

    def write(self, data: bytes | str) -> None:
        if isinstance(data, str):
            data = data.replace("\r\n", "\n").replace("\n", "\r\n").encode()
        view = memoryview(data)
        deadline = time.monotonic() + self.write_timeout
        while view:
            if self.stop.is_set():
                raise PoweredOff
            try:
                n = os.write(self.fd, view)
                view = view[n:]
                deadline = time.monotonic() + self.write_timeout
                continue
            except BlockingIOError:
                pass
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                logger.debug("serial output dropped: nobody reads the console (%d bytes)", len(view))
                return
            select.select([self.wake_fd], [self.fd], [], min(remaining, 0.2))

    def read(self, timeout: float | None) -> bytes:
        """Bytes typed on the console, ``b""`` after ``timeout`` seconds without any."""
        if self.pending:
            data, self.pending = self.pending, b""
            return data
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self.stop.is_set():
                raise PoweredOff
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready, _, _ = select.select([self.fd, self.wake_fd], [], [], wait)
            if self.stop.is_set():
                raise PoweredOff
            if self.fd in ready:
                try:
                    data = os.read(self.fd, 4096)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:  # EIO: no slave open; treat as silence until one opens
                    data = b""
                if data:
                    return data
            if deadline is not None and time.monotonic() >= deadline:
                return b""

    def unread(self, data: bytes) -> None:
        self.pending = data + self.pending

    def read_line(self, echo: bool = True) -> str:
        """One line typed at a prompt (backspace edits it), echoed unless ``echo`` is false."""
        line = bytearray()
        while True:
            data = self.read(None)
            for i, byte in enumerate(data):
                if byte in (0x0D, 0x0A):
                    rest = data[i + 1 :]
                    if byte == 0x0D and rest[:1] == b"\n":
                        rest = rest[1:]
                    self.unread(rest)
                    if echo:
                        self.write(b"\r\n")
                    return line.decode(errors="replace")
                if byte in (0x08, 0x7F):
                    if line:
                        line.pop()
                        if echo:
                            self.write(b"\b \b")
                elif byte == 0x03:
                    line.clear()
                    if echo:
                        self.write(b"<INTERRUPT>\r\n")
                    return ""
                elif byte >= 0x20:
                    line.append(byte)
                    if echo:
                        self.write(bytes([byte]))


@dataclass
class BlockDevice:
    """A disk backed by a file of ``size`` bytes (512-byte blocks)."""

    path: Path
    size: int

    def ensure(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "ab") as f:
            if f.tell() < self.size:
                f.truncate(self.size)

    @property
    def blocks(self) -> int:
        return self.size // BLOCK_SIZE

    def write(self, offset: int, data: bytes) -> None:
        with open(self.path, "r+b") as f:
            f.seek(offset)
            f.write(data)

    def read(self, offset: int, length: int) -> bytes:
        with open(self.path, "rb") as f:
            f.seek(offset)
            return f.read(length).ljust(length, b"\x00")


@dataclass
class Faults:
    """Failures a test asks the board for. ``panic_on`` is a command name (``tftpboot``,
    ``booti``, ...) or ``"boot"`` (while booting); ``tftp_timeout_once`` makes the next
    ``tftpboot`` time out once, as a lossy network would; ``hang_boot_once`` makes the next
    power-on stop after the banner, as a board with a flaky reset does; ``kernel_message`` is a
    line Linux prints in the middle of every command."""

    panic_on: str | None = None
    panic_message: str = "Synchronous Abort handler, esr 0x96000010"
    tftp_timeout_once: bool = False
    hang_boot_once: bool = False
    #: Printed by Linux before each command's output, as a kernel logging to the console does.
    kernel_message: str | None = None


@dataclass
class Loaded:
    addr: int
    size: int
    name: str


@dataclass
class VirtualUBoot:
    """U-Boot's console behaviour. One instance keeps the saved environment and disk across
    power cycles; :meth:`run` is one power-on lifetime."""

    disk: BlockDevice
    block_interface: str = "mmc"
    autoboot_delay: int = 2
    ram_base: int = 0x40000000
    ram_size: int = 0x80000000
    ipaddr: str = "127.0.0.1"
    dhcp_serverip: str = "127.0.0.1"
    netmask: str = "255.0.0.0"
    hostname: str = "virtualboard"
    #: Address in the disk controller's sysfs path (``/sys/class/block#<address>`` targets it).
    sysfs_address: str = "4fb0000"
    username: str = "root"
    password: str = "password"
    http_timeout: float = 30.0
    faults: Faults = field(default_factory=Faults)
    saved_env: dict[str, str] = field(default_factory=dict)
    #: Called with (command line, status) after each U-Boot command; tests observe with it.
    on_command: Callable[[str, int], None] | None = None

    def default_env(self) -> dict[str, str]:
        return {
            "bootdelay": str(self.autoboot_delay),
            "baudrate": "115200",
            "bootcmd": "echo Scanning for bootable devices...; echo no bootable device found",
            "loadaddr": f"{self.ram_base + 0x400000:x}",
            "kernel_addr_r": f"{self.ram_base + 0x400000:x}",
            "fdt_addr_r": f"{self.ram_base:x}",
            "ramdisk_addr_r": f"{self.ram_base + 0x4400000:x}",
            "arch": "arm",
            "board": "virtualboard",
            "ethaddr": "52:54:00:12:34:56",
            "stdin": "serial",
            "stdout": "serial",
        }

    # one power-on lifetime ----------------------------------------------------------------

    def run(self, uart: Uart) -> None:
        """Boot, count down, then serve the prompt until power goes off (:class:`PoweredOff`)."""
        self.uart = uart
        self.env = self.default_env() | self.saved_env
        self.mem = Memory(self.ram_base, self.ram_size)
        self.loaded: list[Loaded] = []
        self.status = 0
        self.disk.ensure()
        self.banner()
        if self.faults.panic_on == "boot":
            self.panic()
        if self.faults.hang_boot_once:
            self.faults.hang_boot_once = False
            while True:
                self.uart.read(None)
        if not self.countdown():
            self.execute(self.env.get("bootcmd", ""))
        while True:
            self.uart.write(PROMPT)
            line = self.uart.read_line()
            if line.strip():
                self.execute(line)

    def banner(self) -> None:
        self.uart.write(
            "\nU-Boot 2023.01 (virtual board)\n\nDRAM:  2 GiB\nCore:  virtual board, pure Python\n"
            f"{'MMC:   mmc@4fb0000: 0' if self.block_interface == 'mmc' else 'virtio: 1 block device'}\n"
            "Loading Environment from File... OK\nIn:    serial\nOut:   serial\nErr:   serial\n"
            "Net:   eth0: virtio-net#32\n"
        )

    def countdown(self) -> bool:
        """The autoboot countdown; ``True`` when a key stopped it (the key is consumed)."""
        delay = int(self.env.get("bootdelay", self.autoboot_delay) or 0)
        if delay < 0:
            return True
        self.uart.write(f"{AUTOBOOT}{delay:2d} ")
        for left in range(delay, 0, -1):
            deadline = time.monotonic() + 1.0
            while (remaining := deadline - time.monotonic()) > 0:
                if self.uart.read(remaining):
                    self.uart.write("\b\b\b 0 \n")
                    return True
            self.uart.write(f"\b\b\b{left - 1:2d} ")
        self.uart.write("\n")
        return False

    def panic(self) -> None:
        """Print the configured crash and hang until power off."""
        self.uart.write(f"\n{self.faults.panic_message}\nelr: 0000000040000000 lr : 0000000040000000\n"
                        "Resetting CPU ...\n\n### ERROR ### Please RESET the board ###\n")
        while True:
            self.uart.read(None)

    # the command line ---------------------------------------------------------------------

    def expand(self, text: str) -> str:
        """``$name``, ``${name}`` and ``$?``, except inside single quotes (as hush does)."""

        def value(match: re.Match) -> str:
            name = match.group(1) or match.group(2)
            return str(self.status) if name == "?" else self.env.get(name, "")

        parts = re.split(r"('[^']*')", text)
        return "".join(
            part if part.startswith("'") else re.sub(r"\$\{([A-Za-z0-9_?]+)\}|\$([A-Za-z0-9_]+|\?)", value, part)
            for part in parts
        )

    def execute(self, line: str) -> int:
        """Run a command line: ``;``-separated commands, ``&&``/``||``, ``$var`` expansion."""
        for part in split_commands(line):
            connector, command = part
            if connector == "&&" and self.status != 0 or connector == "||" and self.status == 0:
                continue
            expanded = self.expand(command)
            try:
                argv = shlex.split(expanded)
            except ValueError:
                argv = expanded.split()
            if not argv:
                continue
            self.status = self.command(argv)
            if self.on_command is not None:
                self.on_command(expanded, self.status)
        return self.status

    def command(self, argv: list[str]) -> int:
        name = argv[0]
        if self.faults.panic_on == name:
            self.panic()
        handler = getattr(self, f"cmd_{name.replace('-', '_')}", None)
        if name in ("mmc", "virtio"):
            return self.cmd_block(argv)
        if handler is None:
            self.uart.write(f"Unknown command '{name}' - try 'help'\n")
            return 1
        return handler(argv[1:])

    def cmd_echo(self, args: list[str]) -> int:
        self.uart.write(" ".join(args) + "\n")
        return 0

    def cmd_true(self, args: list[str]) -> int:
        return 0

    def cmd_false(self, args: list[str]) -> int:
        return 1

    def cmd_version(self, args: list[str]) -> int:
        self.uart.write("U-Boot 2023.01 (virtual board)\n")
        return 0

    def cmd_setenv(self, args: list[str]) -> int:
        if not args:
            self.uart.write("setenv - set environment variables\n\nUsage:\nsetenv name value ...\n")
            return 1
        if len(args) == 1:
            self.env.pop(args[0], None)
        else:
            self.env[args[0]] = " ".join(args[1:])
        return 0

    def cmd_printenv(self, args: list[str]) -> int:
        if not args:
            for key in sorted(self.env):
                self.uart.write(f"{key}={self.env[key]}\n")
            self.uart.write(f"\nEnvironment size: {sum(len(k) + len(v) + 2 for k, v in self.env.items())}/65532 bytes\n")
            return 0
        status = 0
        for key in args:
            if key in self.env:
                self.uart.write(f"{key}={self.env[key]}\n")
            else:
                self.uart.write(f'## Error: "{key}" not defined\n')
                status = 1
        return status

    def cmd_saveenv(self, args: list[str]) -> int:
        self.saved_env = {k: v for k, v in self.env.items() if self.default_env().get(k) != v}
        self.uart.write("Saving Environment to File... OK\n")
        return 0

    def cmd_run(self, args: list[str]) -> int:
        status = 0
        for name in args:
            if name not in self.env:
                self.uart.write(f'## Error: "{name}" not defined\n')
                return 1
            status = self.execute(self.env[name])
        return status

    def cmd_boot(self, args: list[str]) -> int:
        return self.execute(self.env.get("bootcmd", ""))

    def cmd_reset(self, args: list[str]) -> int:
        self.uart.write("resetting ...\n")
        self.run(self.uart)
        return 0

    def cmd_dhcp(self, args: list[str]) -> int:
        self.uart.write("BOOTP broadcast 1\nDHCP client bound to address "
                        f"{self.ipaddr} (1 ms)\n")
        self.env.update(ipaddr=self.ipaddr, netmask=self.netmask, serverip=self.dhcp_serverip)
        if args:
            return self.cmd_tftpboot(args)
        return 0

    def cmd_ping(self, args: list[str]) -> int:
        if not args:
            return 1
        self.uart.write(f"host {args[0]} is alive\n")
        return 0

    # network ------------------------------------------------------------------------------

    def cmd_tftpboot(self, args: list[str]) -> int:
        import tftpy

        if len(args) == 1:
            addr, filename = int(self.env.get("loadaddr", "0"), 16), args[0]
        elif len(args) >= 2:
            addr, filename = int(args[0], 16), args[1]
        else:
            self.uart.write("Usage:\ntftpboot [loadAddress] [[hostIPaddr:]bootfilename]\n")
            return 1
        server = self.env.get("serverip")
        if ":" in filename:
            server, filename = filename.split(":", 1)
        if not self.env.get("ipaddr"):
            self.uart.write("*** ERROR: `ipaddr' not set\n")
            return 1
        if not server:
            self.uart.write("*** ERROR: `serverip' not set\n")
            return 1
        port = int(self.env.get("tftpdstp", "69"))
        blksize = int(self.env.get("tftpblocksize", "1468"))
        self.uart.write(f"Using virtio-net device\nTFTP from server {server}; our IP address is {self.env['ipaddr']}\n"
                        f"Filename '{filename}'.\nLoad address: {addr:#x}\nLoading: ")
        if self.faults.tftp_timeout_once:
            self.faults.tftp_timeout_once = False
            self.uart.write("T T T T T T T T T T \nRetry count exceeded; starting again\n")
            return 1
        started = time.monotonic()
        received = 0
        sink = _MemorySink(self.mem, addr)

        def progress(packet: object) -> None:
            nonlocal received
            if self.uart.stop.is_set():
                raise PoweredOff
            data = getattr(packet, "data", None)
            if data:
                before, received = received, received + len(data)
                if received // (512 * 1024) != before // (512 * 1024):
                    self.uart.write("#")

        try:
            client = tftpy.TftpClient(server, port, options={"blksize": blksize})
            client.download(filename, sink, packethook=progress, timeout=2, retries=3)
        except PoweredOff:
            raise
        except ValueError:
            self.uart.write("\nTFTP error: trying to overwrite reserved memory...\n")
            return 1
        except tftpy.TftpShared.TftpTimeout:
            self.uart.write("T T T T T T T T T T \nRetry count exceeded; starting again\n")
            return 1
        except tftpy.TftpShared.TftpException as exc:
            # tftpy keeps the error code and its standard text, not the server's own words.
            code = re.search(r"errorcode = (\d+)", str(exc))
            text = re.search(r"msg = (.*)", str(exc))
            self.uart.write(f"\nTFTP error: '{text.group(1) if text else exc}' ({code.group(1) if code else 0})\n"
                            "Not retrying...\n")
            return 1
        except OSError as exc:
            self.uart.write(f"\nTFTP error: {exc.strerror}\nNot retrying...\n")
            return 1
        elapsed = max(time.monotonic() - started, 1e-3)
        size = sink.size
        self.uart.write(f"\n\t {size / elapsed / (1 << 20):.1f} MiB/s\ndone\nBytes transferred = {size} ({size:x} hex)\n")
        self.env["filesize"] = f"{size:x}"
        self.env["fileaddr"] = f"{addr:x}"
        self.loaded = [entry for entry in self.loaded if entry.addr != addr] + [Loaded(addr, size, filename)]
        return 0

    cmd_tftp = cmd_tftpboot

    # memory -------------------------------------------------------------------------------

    def _range(self, args: list[str], usage: str) -> tuple[int, int] | None:
        if len(args) < 2:
            self.uart.write(f"Usage:\n{usage}\n")
            return None
        addr, length = int(args[0], 16), int(args[1], 16)
        try:
            self.mem.check(addr, length)
        except ValueError as exc:
            self.uart.write(f"{exc}\n")
            return None
        return addr, length

    def cmd_crc32(self, args: list[str]) -> int:
        span = self._range(args, "crc32 address count [addr]")
        if span is None:
            return 1
        addr, length = span
        crc = zlib.crc32(self.mem.read(addr, length))
        self.uart.write(f"crc32 for {addr:08x} ... {addr + length - 1:08x} ==> {crc:08x}\n")
        return 0

    def cmd_md5sum(self, args: list[str]) -> int:
        span = self._range(args, "md5sum address count [[*]digest]")
        if span is None:
            return 1
        addr, length = span
        digest = hashlib.md5(self.mem.read(addr, length)).hexdigest()
        self.uart.write(f"md5 for {addr:08x} ... {addr + length - 1:08x} ==> {digest}\n")
        return 0

    # block device -------------------------------------------------------------------------

    def cmd_block(self, argv: list[str]) -> int:
        iface, args = argv[0], argv[1:]
        if iface != self.block_interface:
            self.uart.write(f"No {iface} device available\n" if iface == "mmc" else "No virtio device found!\n")
            return 1
        if not args:
            self.uart.write(f"Usage:\n{iface} read addr blk# cnt\n{iface} write addr blk# cnt\n")
            return 1
        sub = args[0]
        if sub in ("rescan", "scan", "list", "dev", "info"):
            if sub in ("dev", "info", "list"):
                self.uart.write(f"Device: {iface}@0\nCapacity: {self.disk.size >> 20} MiB\nBlocks: {self.disk.blocks}\n")
            return 0
        if sub in ("read", "write") and len(args) == 4:
            addr, blk, cnt = (int(a, 16) for a in args[1:4])
            label = "MMC" if iface == "mmc" else iface
            self.uart.write(f"\n{label} {sub}: dev # 0, block # {blk}, count {cnt} ... ")
            if blk + cnt > self.disk.blocks:
                self.uart.write(f"0 blocks {sub}: ERROR\n")
                return 1
            try:
                self.mem.check(addr, cnt * BLOCK_SIZE)
            except ValueError:
                self.uart.write(f"0 blocks {sub}: ERROR\n")
                return 1
            if sub == "write":
                self.disk.write(blk * BLOCK_SIZE, self.mem.read(addr, cnt * BLOCK_SIZE))
            else:
                self.mem.write(addr, self.disk.read(blk * BLOCK_SIZE, cnt * BLOCK_SIZE))
                # what was read may be a kernel booti starts (a board booting from its disk)
                self.loaded = [e for e in self.loaded if e.addr != addr] + [Loaded(addr, cnt * BLOCK_SIZE, iface)]
            self.uart.write(f"{cnt} blocks {'written' if sub == 'write' else 'read'}: OK\n")
            return 0
        self.uart.write(f"Usage:\n{iface} read addr blk# cnt\n{iface} write addr blk# cnt\n")
        return 1

    # booting Linux ------------------------------------------------------------------------

    def cmd_booti(self, args: list[str]) -> int:
        if not args:
            self.uart.write("Usage:\nbooti [addr [initrd[:size]] [fdt]]\n")
            return 1
        addr = int(args[0], 16)
        if not any(entry.addr == addr for entry in self.loaded):
            self.uart.write("Bad Linux ARM64 Image magic!\n")
            return 1
        self.uart.write("## Flattened Device Tree blob at %s\n" % (args[2] if len(args) > 2 else "-")
                        + "   Loading Device Tree ... OK\n\nStarting kernel ...\n\n")
        from .shell import BusyboxShell

        BusyboxShell(self).run()
        return 0

    cmd_bootm = cmd_booti


class _MemorySink:
    """A file-like object tftpy writes into board memory."""

    def __init__(self, mem: Memory, addr: int) -> None:
        self.mem, self.addr, self.size = mem, addr, 0

    def write(self, data: bytes) -> int:
        self.mem.write(self.addr + self.size, data)
        self.size += len(data)
        return len(data)

    def close(self) -> None:
        """tftpy closes its output; memory stays."""


def split_commands(line: str) -> list[tuple[str, str]]:
    """Split a command line at ``;``, ``&&`` and ``||`` outside quotes.

    >>> split_commands("setenv a 'x;y'; echo $a && echo ok")
    [(';', "setenv a 'x;y'"), (';', 'echo $a'), ('&&', 'echo ok')]
    """
    parts: list[tuple[str, str]] = []
    connector, current, quote, i = ";", "", "", 0
    while i < len(line):
        ch = line[i]
        if quote:
            quote = "" if ch == quote else quote
            current += ch
        elif ch in "'\"":
            quote = ch
            current += ch
        elif ch == ";" or line[i : i + 2] in ("&&", "||"):
            if current.strip():
                parts.append((connector, current.strip()))
            connector = ";" if ch == ";" else line[i : i + 2]
            current = ""
            i += 0 if ch == ";" else 1
        else:
            current += ch
        i += 1
    if current.strip():
        parts.append((connector, current.strip()))
    return parts
