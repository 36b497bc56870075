"""The Linux side of the virtual board: a login and a small busybox-like shell.

Enough of busybox for flashing and for a shell client: pipelines of ``wget``/``curl`` (real HTTP
downloads), ``dd``, ``head -c``, ``sha256sum``, ``cat``, ``base64 [-d]``, ``wc -c``, ``printf``,
``rm``, ``uname``, ``stty [-]echo``, ``ls -l /sys/class/block``, ``readlink``, ``sync``, ``echo``, ``$?``,
``$(command)``, ``set -o pipefail`` and redirections (``>``, ``>>``, ``<``) to files in RAM (lost at power off,
as a tmpfs is); a command reading its standard input reads what is typed on the console until
Ctrl-D. Block device writes land in the board's disk file, the same one U-Boot's
``mmc``/``virtio`` commands use.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import shlex
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from .simulator import split_commands

if TYPE_CHECKING:
    from .simulator import VirtualUBoot

CHUNK = 1 << 20
#: Longest command line busybox's line editing takes (``FEATURE_EDITING_MAX_LEN``).
MAX_LINE = 1023
Stream = Iterator[bytes]


class ShellExit(Exception):
    """``exit``/``reboot``: leave the shell."""


class CommandFailed(Exception):
    """A pipeline stage failed; carries its exit status."""

    def __init__(self, status: int) -> None:
        self.status = status


class BusyboxShell:
    """One boot of Linux on the virtual board."""

    def __init__(self, board: VirtualUBoot) -> None:
        self.board, self.uart = board, board.uart
        self.status = 0
        self.pipefail = False
        #: Files in RAM by absolute path (what ``>`` writes and commands read).
        self.files: dict[str, bytes] = {}
        #: Whether the terminal echoes what a command reads from it (``stty -echo`` turns it off).
        self.echo = True
        #: Where a pipeline's output goes: the console, or what ``$(command)`` captures.
        self.stdout: Callable[[bytes], object] = self.uart.write
        if board.block_interface == "mmc":
            self.device = "mmcblk0"
            self.sysfs = f"../../devices/platform/soc/{board.sysfs_address}.mmc/mmc_host/mmc0/mmc0:0001/block/mmcblk0"
        else:
            self.device = "vda"
            self.sysfs = f"../../devices/platform/{board.sysfs_address}.virtio_mmio/virtio1/block/vda"

    def run(self) -> None:
        self.uart.write(
            "[    0.000000] Booting Linux on physical CPU 0x0000000000 [0x411fd070]\n"
            "[    0.000000] Linux version 6.1.0-virtual (virtual board)\n"
            f"[    0.500000] {self.device}: {self.board.disk.size >> 20} MiB\n"
            "[    1.000000] Run /init as init process\n"
        )
        if self.board.faults.panic_on == "linux":
            self.panic()
        self.uart.write("\nWelcome to the flasher\n")
        self.login()
        try:
            while True:
                self.uart.write("# ")
                line = self.uart.read_line()[:MAX_LINE]  # busybox's line editing drops the rest
                if self.board.faults.kernel_message:
                    self.uart.write(f"[   42.000000] {self.board.faults.kernel_message}\n")
                if line.strip():
                    self.execute(line)
        except ShellExit:
            self.uart.write("[   99.000000] reboot: Power down\n")
        while True:
            self.uart.read(None)

    def login(self) -> None:
        while True:
            self.uart.write(f"{self.board.hostname} login: ")
            user = self.uart.read_line().strip()
            self.uart.write("Password: ")
            password = self.uart.read_line(echo=False)
            self.uart.write("\n")
            if user == self.board.username and password == self.board.password:
                return
            self.uart.write("Login incorrect\n")

    def panic(self) -> None:
        self.uart.write("[    2.000000] Kernel panic - not syncing: Attempted to kill init! exitcode=0x0000000b\n"
                        "[    2.000000] ---[ end Kernel panic - not syncing: Attempted to kill init! ]---\n")
        while True:
            self.uart.read(None)

    # command lines ------------------------------------------------------------------------

    def execute(self, line: str) -> None:
        for connector, command in split_commands(line):
            if connector == "&&" and self.status != 0 or connector == "||" and self.status == 0:
                continue
            command = substitute(command.replace("$?", str(self.status)), self._capture)
            self.status = self.pipeline([shlex.split(stage) for stage in command.split("|")])

    def pipeline(self, stages: list[list[str]]) -> int:
        statuses: list[int] = []
        stream: Stream | None = None
        try:
            stages[0], source, (target, append) = _redirections(stages[0])
            if len(stages) > 1:
                stages[-1], _, (target, append) = _redirections(stages[-1])
        except ValueError as exc:
            self.uart.write(f"-sh: {exc}\n")
            return 2
        stream = self._source("sh", source) if source is not None else self._typed()
        for argv in stages:
            if not argv:
                return 2
            if self.board.faults.panic_on == argv[0]:
                self.panic()
            handler = getattr(self, f"cmd_{argv[0].replace('-', '_')}", None)
            if handler is None:
                self.uart.write(f"-sh: {argv[0]}: not found\n")
                return 127
            stream = self._guard(handler(argv[1:], stream), statuses)
        if target is not None:
            data = b"".join(stream or ())
            self.files[target] = (self.files.get(target, b"") if append else b"") + data
        else:
            for chunk in stream or ():
                self.stdout(chunk)
        if self.pipefail:
            return next((s for s in reversed(statuses) if s), 0)
        return statuses[-1] if statuses else 0

    def _capture(self, command: str) -> str:
        """What ``command`` prints (for ``$(command)``)."""
        out: list[bytes] = []
        saved, self.stdout = self.stdout, out.append
        try:
            self.execute(command)
        finally:
            self.stdout = saved
        return b"".join(out).decode(errors="replace")

    @staticmethod
    def _guard(stream: Stream, statuses: list[int]) -> Stream:
        index = len(statuses)
        statuses.append(0)
        try:
            yield from stream
        except CommandFailed as failed:
            statuses[index] = failed.status

    def _typed(self) -> Stream:
        """A command's standard input from the console: lines typed until Ctrl-D at a line's start
        (read only if the command reads its input, as a terminal does)."""
        line = bytearray()
        while True:
            data = self.uart.read(None)
            for i, byte in enumerate(data):
                if byte == 0x04 and not line:
                    self.uart.unread(data[i + 1 :])
                    return
                byte = 0x0A if byte == 0x0D else byte  # icrnl
                line.append(byte)
                if self.echo:
                    self.uart.write(bytes([byte]))
                if byte == 0x0A:
                    yield bytes(line)
                    line.clear()

    def _path(self, path: str) -> bool:
        return path in (f"/dev/{self.device}",)

    def _source(self, command: str, path: str) -> Stream:
        """The contents of the disk device or a file in RAM; a missing one fails as busybox does."""
        if self._path(path):
            return self._read_disk(self.board.disk.size)
        if path in self.files:
            return iter([self.files[path]])
        self.uart.write(f"{command}: can't open '{path}': No such file or directory\n")
        raise CommandFailed(1)

    # commands (each a generator of stdout chunks) -----------------------------------------

    def cmd_echo(self, args: list[str], stdin: Stream | None) -> Stream:
        yield (" ".join(args) + "\n").encode()

    def cmd_true(self, args: list[str], stdin: Stream | None) -> Stream:
        yield from ()

    def cmd_false(self, args: list[str], stdin: Stream | None) -> Stream:
        raise CommandFailed(1)
        yield b""  # pragma: no cover - makes this a generator

    def cmd_set(self, args: list[str], stdin: Stream | None) -> Stream:
        if args[:2] == ["-o", "pipefail"]:
            self.pipefail = True
        yield from ()

    def cmd_sync(self, args: list[str], stdin: Stream | None) -> Stream:
        yield from ()

    def cmd_exit(self, args: list[str], stdin: Stream | None) -> Stream:
        raise ShellExit
        yield b""  # pragma: no cover

    def cmd_reboot(self, args: list[str], stdin: Stream | None) -> Stream:
        self.uart.write("[   99.000000] reboot: Restarting system\n")
        self.board.run(self.uart)
        yield b""

    def cmd_ls(self, args: list[str], stdin: Stream | None) -> Stream:
        paths = [a for a in args if not a.startswith("-")]
        if paths and paths[0].rstrip("/") == "/sys/class/block":
            yield f"lrwxrwxrwx    1 root     root             0 Jan  1 00:00 {self.device} -> {self.sysfs}\n".encode()
            return
        self.uart.write(f"ls: {paths[0] if paths else '.'}: No such file or directory\n")
        raise CommandFailed(1)

    def cmd_readlink(self, args: list[str], stdin: Stream | None) -> Stream:
        paths = [a for a in args if not a.startswith("-")]
        if paths and paths[0] == f"/sys/class/block/{self.device}":
            yield ("/sys/" + self.sysfs.removeprefix("../../") + "\n").encode()
            return
        raise CommandFailed(1)

    def _fetch(self, url: str, quiet: bool) -> Stream:
        try:
            response = urllib.request.urlopen(url, timeout=self.board.http_timeout)
        except (urllib.error.URLError, OSError) as exc:
            self.uart.write(f"wget: can't connect to remote host: {getattr(exc, 'reason', exc)}\n")
            raise CommandFailed(1) from None
        with response:
            total = int(response.headers.get("Content-Length") or 0)
            done, shown, started = 0, -1, time.monotonic()
            if not quiet:
                self.uart.write(f"Connecting to {urllib.request.urlparse(url).netloc}\nwriting to stdout\n")
            while chunk := response.read(CHUNK):
                if self.uart.stop.is_set():
                    return
                done += len(chunk)
                percent = done * 100 // total if total else 0
                if not quiet and percent // 5 != shown // 5:
                    shown = percent
                    rate = done / max(time.monotonic() - started, 1e-3) / (1 << 20)
                    self.uart.write(f"\r-{percent:>20d}% |{'*' * (percent // 4):<25}| {done / (1 << 20):5.1f}M "
                                    f"{rate:5.1f}M/s")
                yield chunk
            if not quiet:
                self.uart.write("\nwritten to stdout\n")
            if total and done != total:
                self.uart.write(f"wget: short read: {done} of {total} bytes\n")
                raise CommandFailed(1)

    def cmd_wget(self, args: list[str], stdin: Stream | None) -> Stream:
        urls = [a for a in args if a.startswith(("http://", "https://"))]
        if "-O" not in args or args[args.index("-O") + 1] != "-" or not urls:
            self.uart.write("wget: this board supports 'wget [-q] -O - URL' only\n")
            raise CommandFailed(1)
        yield from self._fetch(urls[0], quiet="-q" in args)

    def cmd_curl(self, args: list[str], stdin: Stream | None) -> Stream:
        urls = [a for a in args if a.startswith(("http://", "https://"))]
        if not urls:
            self.uart.write("curl: no URL specified!\n")
            raise CommandFailed(2)
        yield from self._fetch(urls[0], quiet="-s" in args or "--silent" in args)

    def _options(self, args: list[str]) -> dict[str, str]:
        return dict(a.split("=", 1) for a in args if "=" in a)

    def cmd_dd(self, args: list[str], stdin: Stream | None) -> Stream:
        opts = self._options(args)
        bs = _size(opts.get("bs", "512"))
        disk = self.board.disk
        if "of" in opts:
            if not self._path(opts["of"]):
                self.uart.write(f"dd: can't open '{opts['of']}': No such file or directory\n")
                raise CommandFailed(1)
            offset = _size(opts.get("seek", "0")) * bs
            for chunk in stdin or ():
                if offset + len(chunk) > disk.size:
                    self.uart.write(f"dd: error writing '{opts['of']}': No space left on device\n")
                    raise CommandFailed(1)
                disk.write(offset, chunk)
                offset += len(chunk)
            self.uart.write(f"{offset // bs}+{1 if offset % bs else 0} records out\n")
            return
        if "if" in opts:
            if not self._path(opts["if"]):
                self.uart.write(f"dd: can't open '{opts['if']}': No such file or directory\n")
                raise CommandFailed(1)
            length = _size(opts["count"]) * bs if "count" in opts else disk.size
            yield from self._read_disk(min(length, disk.size))
            return
        self.uart.write("dd: give if= or of=\n")
        raise CommandFailed(1)

    def _read_disk(self, length: int) -> Stream:
        for offset in range(0, length, CHUNK):
            yield self.board.disk.read(offset, min(CHUNK, length - offset))

    def cmd_head(self, args: list[str], stdin: Stream | None) -> Stream:
        if len(args) < 2 or args[0] != "-c":
            self.uart.write("head: this board supports 'head -c BYTES [FILE]' only\n")
            raise CommandFailed(1)
        length = _size(args[1])
        if len(args) > 2:
            stdin = self._source("head", args[2])
        for chunk in stdin or ():
            if length <= 0:
                return
            yield chunk[:length]
            length -= len(chunk)

    def cmd_sha256sum(self, args: list[str], stdin: Stream | None) -> Stream:
        digest = hashlib.sha256()
        if args:
            stdin = self._source("sha256sum", args[0])
        for chunk in stdin or ():
            digest.update(chunk)
        yield f"{digest.hexdigest()}  {args[0] if args else '-'}\n".encode()

    def cmd_cat(self, args: list[str], stdin: Stream | None) -> Stream:
        for path in args:
            yield from self._source("cat", path)
        if not args:
            yield from stdin or ()

    def cmd_printf(self, args: list[str], stdin: Stream | None) -> Stream:
        if args[:1] != ["%s"]:
            self.uart.write("printf: this board supports 'printf %s ARG...' only\n")
            raise CommandFailed(1)
        yield "".join(args[1:]).encode()

    def cmd_base64(self, args: list[str], stdin: Stream | None) -> Stream:
        decode = "-d" in args
        paths = [a for a in args if not a.startswith("-")]
        data = b"".join(self._source("base64", paths[0]) if paths else stdin or ())
        if decode:
            try:
                yield base64.b64decode(b"".join(data.split()), validate=True)
            except binascii.Error:
                self.uart.write("base64: invalid input\n")
                raise CommandFailed(1) from None
            return
        encoded = base64.b64encode(data)
        yield b"".join(encoded[i : i + 76] + b"\n" for i in range(0, len(encoded), 76))

    def cmd_wc(self, args: list[str], stdin: Stream | None) -> Stream:
        paths = [a for a in args if not a.startswith("-")]
        if "-c" not in args:
            self.uart.write("wc: this board supports 'wc -c [FILE]' only\n")
            raise CommandFailed(1)
        size = sum(len(chunk) for chunk in (self._source("wc", paths[0]) if paths else stdin or ()))
        yield f"{size} {paths[0] if paths else ''}".rstrip().encode() + b"\n"

    def cmd_rm(self, args: list[str], stdin: Stream | None) -> Stream:
        missing = [p for p in args if not p.startswith("-") and self.files.pop(p, None) is None]
        if missing and "-f" not in args:
            self.uart.write(f"rm: can't remove '{missing[0]}': No such file or directory\n")
            raise CommandFailed(1)
        yield from ()

    def cmd_stty(self, args: list[str], stdin: Stream | None) -> Stream:
        if args not in (["-echo"], ["echo"]):
            self.uart.write("stty: this board supports 'stty echo' and 'stty -echo' only\n")
            raise CommandFailed(1)
        self.echo = args == ["echo"]
        yield from ()

    def cmd_uname(self, args: list[str], stdin: Stream | None) -> Stream:
        release = "6.1.0-virtual"
        yield (f"Linux {self.board.hostname} {release} #1 SMP aarch64 GNU/Linux" if "-a" in args else
               release if "-r" in args else "Linux").encode() + b"\n"


def _redirections(argv: list[str]) -> tuple[list[str], str | None, tuple[str | None, bool]]:
    """Split ``<``, ``>`` and ``>>`` off a command: ``(argv, input file, (output file, append))``.

    >>> _redirections(["printf", "%s", "QUJD", ">>", "/tmp/f"])
    (['printf', '%s', 'QUJD'], None, ('/tmp/f', True))
    >>> _redirections(["wc", "-c", "</tmp/f"])
    (['wc', '-c'], '/tmp/f', (None, False))
    """
    rest: list[str] = []
    source: str | None = None
    target: tuple[str | None, bool] = (None, False)
    words = iter(argv)
    for word in words:
        operator = next((op for op in (">>", ">", "<") if word.startswith(op)), None)
        if operator is None:
            rest.append(word)
            continue
        path = word[len(operator):] or next(words, "")
        if not path:
            raise ValueError(f"syntax error: no file after {operator}")
        if operator == "<":
            source = path
        else:
            target = (path, operator == ">>")
    return rest, source, target


def substitute(line: str, run: Callable[[str], str]) -> str:
    """Replace each ``$(command)`` outside single quotes with what ``run(command)`` prints, less trailing newlines.

    >>> substitute('echo $(a) "$(b)"', str.upper)
    'echo A "B"'
    >>> substitute("echo '$(a)'", str.upper)
    "echo '$(a)'"
    """
    out, quote, i = "", "", 0
    while i < len(line):
        ch = line[i]
        if quote != "'" and line.startswith("$(", i) and (end := line.find(")", i + 2)) != -1:
            out += run(line[i + 2 : end]).rstrip("\n")
            i = end + 1
            continue
        if quote and ch == quote:
            quote = ""
        elif not quote and ch in "'\"":
            quote = ch
        out += ch
        i += 1
    return out


def _size(text: str) -> int:
    """Busybox size suffixes.

    >>> _size("4M"), _size("512"), _size("1k")
    (4194304, 512, 1024)
    """
    units = {"k": 1 << 10, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    if text and text[-1] in units:
        return int(text[:-1]) * units[text[-1]]
    return int(text)
