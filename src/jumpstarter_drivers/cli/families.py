"""Commands of the bundled driver families whose clients have no ``cli()`` of their own
(``jumpstarter power on``, ``jumpstarter serial pipe``, ...).

Builders are registered by client class path, so a family that is not installed costs nothing.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import select
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any, BinaryIO

import click

from ..core.client import ByteStream
from .drivers import command_builder, summary


@command_builder("jumpstarter_drivers.power.client.PowerClient")
def power_commands(client: Any) -> click.Group:
    """``on``, ``off``, ``cycle`` and ``read`` for a power switch."""
    group = click.Group(help=summary(client))

    @group.command()
    def on() -> None:
        """Switch the power on."""
        client.on()

    @group.command()
    def off() -> None:
        """Switch the power off."""
        client.off()

    @group.command()
    @click.option(
        "--wait", default=2.0, show_default=True, type=click.FloatRange(min=0), help="Seconds between off and on."
    )
    def cycle(wait: float) -> None:
        """Switch the power off, wait, and switch it on again."""
        client.cycle(wait)

    @group.command()
    @click.option(
        "-n", "--count", type=click.IntRange(min=1), help="Stop after COUNT readings (default: when the device stops)."
    )
    def read(count: int | None) -> None:
        """Print power readings, one per line, as the device sends them."""
        readings = client.read()
        try:
            for reading in itertools.islice(readings, count):
                click.echo(str(reading))
        finally:
            readings.close()

    return group


@command_builder("jumpstarter_drivers.power.client.VirtualPowerClient")
def virtual_power_commands(client: Any) -> click.Group:
    """The power commands, where ``off`` can also destroy the virtual machine."""
    group = power_commands(client)

    @click.command()
    @click.option("--destroy", is_flag=True, help="Also discard the machine's state.")
    def off(destroy: bool) -> None:
        """Switch the power off."""
        client.off(destroy)

    group.add_command(off)
    return group


@command_builder("jumpstarter_drivers.energenie.client.EnerGenieClient")
def energenie_commands(client: Any) -> click.Group:
    """The power commands, and ``state``: whether the socket is on, as the strip says."""
    group = power_commands(client)

    @group.command()
    def state() -> None:
        """Whether the slot's socket is on, as the strip reports it (prints on or off)."""
        click.echo("on" if client.state() else "off")

    return group


#: Seconds ``jumpstarter serial pipe`` waits for the console to fall quiet after stdin ended.
PIPE_LINGER = 1.0

#: Ctrl-]: ends ``jumpstarter serial console``.
CONSOLE_ESCAPE = b"\x1d"


def copy_stdio(
    stream: ByteStream,
    stdin_fd: int,
    stdout: BinaryIO,
    *,
    linger: float | None = None,
    escape: bytes | None = None,
) -> None:
    """Copy ``stdin_fd`` to ``stream`` and ``stream`` to ``stdout`` until the stream ends.

    Typing ``escape`` stops at once. When stdin ends nothing more is sent, and the copy stops
    once the stream has been quiet for ``linger`` seconds (never when ``None``).
    """
    stdin_done = threading.Event()
    escaped = threading.Event()
    finished = threading.Event()

    def forward_stdin() -> None:
        try:
            while not finished.is_set():
                ready, _, _ = select.select([stdin_fd], [], [], 0.2)
                if not ready:
                    continue
                data = os.read(stdin_fd, 65536)
                if escape is not None and escape in data:
                    escaped.set()
                    data = data[: data.index(escape)]
                if data:
                    stream.send(data)
                if not data or escaped.is_set():
                    return
        finally:
            stdin_done.set()

    reader = threading.Thread(target=forward_stdin, name="jumpstarter-stdin", daemon=True)
    reader.start()
    try:
        quiet_since: float | None = None
        while not escaped.is_set():
            try:
                data = stream.receive(timeout=0.2)
            except TimeoutError:
                if stdin_done.is_set() and linger is not None:
                    quiet_since = quiet_since or time.monotonic()
                    if time.monotonic() - quiet_since >= linger:
                        return
                continue
            if not data:
                return
            quiet_since = None
            stdout.write(data)
            stdout.flush()
    finally:
        finished.set()
        reader.join(5)


@contextlib.contextmanager
def raw_terminal(fd: int) -> Iterator[None]:
    """Put the terminal on ``fd`` in raw mode while inside (keys go to the board as typed)."""
    import termios
    import tty

    saved = termios.tcgetattr(fd)
    try:
        tty.setraw(fd)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


@contextlib.contextmanager
def logs_on_terminal(logger_name: str, level: int = logging.INFO) -> Iterator[None]:
    """While inside, show ``logger_name``'s records on stderr when it is a terminal (the exporter's
    steps and progress during a flash, say); off a terminal nothing changes."""
    if sys.stderr is None or not sys.stderr.isatty():
        yield
        return
    logger = logging.getLogger(logger_name)
    handler = logging.StreamHandler(sys.stderr)
    handler.setLevel(level)
    handler.setFormatter(logging.Formatter("%(message)s"))
    previous = logger.level
    logger.addHandler(handler)
    if logger.getEffectiveLevel() > level:
        logger.setLevel(level)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)


def terminal_fd() -> int:
    """The descriptor of stdin when it is a terminal; a usage error saying what to use otherwise."""
    try:
        fd = sys.stdin.fileno()
    except (AttributeError, OSError):  # io.UnsupportedOperation: stdin is no file (a test runner's)
        fd = -1
    if fd < 0 or not os.isatty(fd):
        raise click.UsageError(
            "console needs a terminal on stdin (it runs in raw mode and leaves on Ctrl-]); "
            "without one use `jumpstarter serial pipe` to copy stdin and stdout"
        )
    return fd


def attach_terminal(stream: ByteStream, fd: int) -> None:
    """Connect the terminal on ``fd`` to ``stream`` in raw mode until Ctrl-] or the stream ends."""
    with raw_terminal(fd):
        click.echo("connected; Ctrl-] leaves\r", err=True)
        copy_stdio(stream, fd, sys.stdout.buffer, escape=CONSOLE_ESCAPE)
    click.echo("\r\ndisconnected", err=True)


@command_builder("jumpstarter_drivers.pyserial.client.PySerialClient")
def serial_commands(client: Any) -> click.Group:
    """``pipe`` and ``console`` for a serial console."""
    group = click.Group(help=summary(client))

    @group.command()
    @click.option(
        "--linger",
        type=click.FloatRange(min=0),
        default=PIPE_LINGER,
        show_default=True,
        help="After stdin ends, exit once the console was quiet this many seconds.",
    )
    @click.option("--follow", is_flag=True, help="Keep printing the console after stdin ends, until Ctrl-C.")
    def pipe(linger: float, follow: bool) -> None:
        """Copy stdin to the console and the console to stdout, until stdin ends and the console is quiet."""
        with client.stream() as stream:
            copy_stdio(stream, sys.stdin.fileno(), sys.stdout.buffer, linger=None if follow else linger)

    @group.command()
    def console() -> None:
        """Attach this terminal to the console; Ctrl-] leaves."""
        fd = terminal_fd()
        with client.stream() as stream:
            attach_terminal(stream, fd)

    return group
