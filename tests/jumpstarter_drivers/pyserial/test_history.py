"""Console history and recording: what the board prints while no client is connected reaches the
next client (the last ``buffer_size`` bytes), and ``record`` keeps everything in a file."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest

from jumpstarter_drivers import serve
from jumpstarter_drivers.composite.driver import Proxy
from jumpstarter_drivers.core.errors import ConfigurationError
from jumpstarter_drivers.pyserial import PySerial
from jumpstarter_drivers.uboot.driver import connect_live


def recorded(path: Path, size: int) -> Callable[[], bool]:
    """Whether the exporter has read ``size`` bytes from the board (its record says so)."""
    return lambda: path.exists() and path.stat().st_size >= size


def receive_exactly(stream, size: int) -> bytes:
    data = b""
    while len(data) < size:
        data += stream.receive(timeout=5)
    return data


def test_output_before_the_first_client_is_replayed(board, wait_until, tmp_path: Path) -> None:
    log = tmp_path / "console.log"
    with serve(PySerial(url=board.path, buffer_size=1024, record=str(log))) as console:
        banner = b"U-Boot 2024.01\r\nHit any key to stop autoboot\r\n"
        board.write(banner)
        wait_until(recorded(log, len(banner)), "the exporter read what the board printed")
        with console.stream() as stream:
            assert receive_exactly(stream, len(banner)) == banner
            board.write(b"live")
            assert receive_exactly(stream, 4) == b"live"


def test_history_is_bounded_and_keeps_the_latest(board, wait_until, tmp_path: Path) -> None:
    printed = bytes(range(256)) * 12  # 3072 bytes
    log = tmp_path / "console.log"
    with serve(PySerial(url=board.path, buffer_size=1000, record=str(log))) as console:
        board.write(printed)
        wait_until(recorded(log, len(printed)), "the exporter read what the board printed")
        with console.stream() as stream:
            assert receive_exactly(stream, 1000) == printed[-1000:]
            board.write(b"next")
            assert receive_exactly(stream, 4) == b"next", "the older bytes were dropped, not queued"


def test_output_between_clients_reaches_the_next(board, wait_until, tmp_path: Path) -> None:
    log = tmp_path / "console.log"
    with serve(PySerial(url=board.path, buffer_size=1024, record=str(log))) as console:
        with console.stream() as first:
            board.write(b"seen by the first")
            assert receive_exactly(first, 17) == b"seen by the first"
        board.write(b"while nobody looked")
        wait_until(recorded(log, 17 + 19), "the exporter read what the board printed")
        with console.stream() as second:
            assert receive_exactly(second, 19) == b"while nobody looked"


def test_record_keeps_everything_in_order(board, wait_until, tmp_path: Path) -> None:
    record = tmp_path / "console.log"
    with serve(PySerial(url=board.path, record=str(record))) as console:
        board.write(b"before;")
        wait_until(lambda: record.read_bytes() == b"before;", "the record has the early output")
        with console.stream() as stream:
            board.write(b"during;")
            assert receive_exactly(stream, 7) == b"during;", "record alone keeps no history for clients"
        board.write(b"after")
        wait_until(lambda: record.read_bytes().endswith(b"after"), "the record has the late output")
    assert record.read_bytes() == b"before;during;after"


@pytest.mark.parametrize("through", ["driver", "ref"])
def test_without_history_only_new_output(board, wait_until, tmp_path: Path, through: str) -> None:
    """What the U-Boot driver asks for, also through a ``ref``: an old prompt in the history would
    pass for a new one."""

    async def main(console: PySerial) -> None:
        target = console if through == "driver" else Proxy(ref="serial", target=console)
        async with connect_live(target) as stream:
            board.write(b"fresh")
            with anyio.fail_after(5):
                data = b""
                while len(data) < 5:
                    data += await stream.receive()
            assert data == b"fresh"

    log = tmp_path / "console.log"
    console = PySerial(url=board.path, buffer_size=1024, record=str(log))
    try:
        board.write(b"=> stale prompt ")
        wait_until(recorded(log, 16), "the exporter read what the board printed")
        anyio.run(main, console)
    finally:
        console.close()


def _idle_readers() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith("serial-idle")}


def test_close_stops_reading_and_releases_the_port(board, tmp_path: Path) -> None:
    before = _idle_readers()  # a lab of another test (the plugin's, say) may hold its board's console
    console = PySerial(url=board.path, buffer_size=64, record=str(tmp_path / "log"))
    assert len(board.driver_fds()) == 1, "the port is held between clients"
    assert _idle_readers() - before, "no reader keeps the history"
    console.close()
    assert board.driver_fds() == []
    assert not _idle_readers() - before, "the reader outlived close()"


def test_default_holds_nothing_between_clients(board) -> None:
    console = PySerial(url=board.path)
    assert board.driver_fds() == []
    console.close()


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({"buffer_size": -1}, "config field 'buffer_size' must be 0 (no history) or more, got -1"),
        ({"record": "/nonexistent-dir/console.log"}, "cannot open the console record '/nonexistent-dir/console.log'"),
    ],
)
def test_bad_history_config(config: dict, expected: str) -> None:
    with pytest.raises(ConfigurationError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        PySerial(url="loop://", **config)
