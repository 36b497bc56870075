"""The PySerial driver on its own: configuration checks, HUPCL, and the stream on the event loop."""

from __future__ import annotations

import socket
import termios
import threading

import anyio
import pytest
from tests.helpers.net import free_port

from jumpstarter_drivers.core.errors import ConfigurationError
from jumpstarter_drivers.pyserial import PySerial


def test_missing_device_names_it_and_what_to_check() -> None:
    with pytest.raises(ConfigurationError) as info:
        PySerial(url="/dev/ttyUSB-nosuch")
    message = str(info.value)
    assert "'/dev/ttyUSB-nosuch'" in message
    assert "plugged in" in message and "check_present: false" in message


def test_unknown_url_scheme() -> None:
    with pytest.raises(ConfigurationError, match=r"'serial://x' is not a serial URL.*loop://"):
        PySerial(url="serial://x", check_present=False)


def test_unreachable_socket_url() -> None:
    url = f"socket://127.0.0.1:{free_port()}"
    with pytest.raises(ConfigurationError, match=rf"{url}.*server behind the URL is running"):
        PySerial(url=url)


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({"baudrate": 0}, "'baudrate' must be positive"),
        ({"baudrate": "fast"}, "'baudrate' expects int"),
        ({"check_present": "yes"}, "'check_present' expects bool"),
    ],
)
def test_bad_config(config: dict, expected: str) -> None:
    with pytest.raises(ConfigurationError, match=expected):
        PySerial(url="loop://", **config)


def test_check_present_false_constructs_without_the_device() -> None:
    console = PySerial(url="/dev/ttyUSB-nosuch", check_present=False)
    assert console.url == "/dev/ttyUSB-nosuch"


def test_disable_hupcl_needs_a_tty() -> None:
    with pytest.raises(ConfigurationError, match="disable_hupcl needs a tty.*'loop://'"):
        PySerial(url="loop://", disable_hupcl=True)


def hupcl(board) -> bool:
    return bool(termios.tcgetattr(board.slave)[2] & termios.HUPCL)


def set_hupcl(board) -> None:
    attrs = termios.tcgetattr(board.slave)
    attrs[2] |= termios.HUPCL
    termios.tcsetattr(board.slave, termios.TCSANOW, attrs)


@pytest.mark.parametrize("disable", [True, False])
def test_disable_hupcl(board, disable: bool) -> None:
    set_hupcl(board)
    console = PySerial(url=board.path, disable_hupcl=disable)
    assert hupcl(board) is not disable  # the presence check opened the port already
    set_hupcl(board)

    async def main() -> None:
        async with console.connect() as stream:
            assert hupcl(board) is not disable
            await stream.send(b"x")
        assert board.read_exactly(1) == b"x"

    anyio.run(main)


async def receive_while_loop_runs(console: PySerial, board_write) -> None:
    """A receive waiting for the board must leave the loop free: another task feeds the board."""
    ticks = 0
    async with console.connect() as stream:

        async def board_side() -> None:
            nonlocal ticks
            for _ in range(5):
                await anyio.sleep(0.01)
                ticks += 1
            board_write(b"hello")

        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(board_side)
                data = b""
                while len(data) < 5:
                    data += await stream.receive()
    assert (data, ticks) == (b"hello", 5)


def test_fd_receive_does_not_block_the_loop(board) -> None:
    anyio.run(receive_while_loop_runs, PySerial(url=board.path), board.write)


def test_thread_receive_does_not_block_the_loop() -> None:
    async def main() -> None:
        console = PySerial(url="loop://")
        async with console.connect() as stream:
            await stream.send(b"warm")  # loop:// ports are per connection; echo through this one
            assert await stream.receive() == b"warm"

            ticks = 0

            async def board_side() -> None:
                nonlocal ticks
                for _ in range(5):
                    await anyio.sleep(0.01)
                    ticks += 1
                await stream.send(b"hello")

            with anyio.fail_after(5):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(board_side)
                    data = b""
                    while len(data) < 5:
                        data += await stream.receive()
            assert (data, ticks) == (b"hello", 5)

    anyio.run(main)


def test_send_eof_drains_then_ends(board) -> None:
    async def main() -> None:
        async with PySerial(url=board.path).connect() as stream:
            await stream.send(b"last words")
            board.write(b"pending")
            with anyio.fail_after(5):
                await anyio.wait_readable(stream.fd)
                await stream.send_eof()
                assert await stream.receive() == b"pending"
                with pytest.raises(anyio.EndOfStream):
                    await stream.receive()
            with pytest.raises(anyio.ClosedResourceError, match="send_eof"):
                await stream.send(b"more")
        assert board.read_exactly(10) == b"last words"

    anyio.run(main)


def test_send_eof_wakes_a_waiting_receive(board) -> None:
    async def main() -> None:
        async with PySerial(url=board.path).connect() as stream:
            with anyio.fail_after(5):
                async with anyio.create_task_group() as tg:

                    async def reader() -> None:
                        with pytest.raises(anyio.EndOfStream):
                            await stream.receive()

                    tg.start_soon(reader)
                    await anyio.wait_all_tasks_blocked()
                    await stream.send_eof()

    anyio.run(main)


def test_board_hang_up_ends_the_stream(board) -> None:
    async def main() -> None:
        async with PySerial(url=board.path).connect() as stream:
            board.write(b"bye")
            assert await stream.receive() == b"bye"
            board.hang_up()
            with anyio.fail_after(5), pytest.raises(anyio.EndOfStream):
                await stream.receive()

    anyio.run(main)


def test_closing_releases_the_port(board) -> None:
    async def main() -> None:
        console = PySerial(url=board.path)
        assert board.driver_fds() == []
        async with console.connect():
            assert len(board.driver_fds()) == 1
        assert board.driver_fds() == []

    anyio.run(main)


@pytest.mark.parametrize("path", ["descriptor", "thread"])
def test_cancelled_receive_closes_the_port(board, path: str) -> None:
    async def main() -> None:
        console = PySerial(url=board.path if path == "descriptor" else "loop://")
        with anyio.fail_after(5), anyio.CancelScope() as scope:
            async with console.connect() as stream:
                port = stream.port
                reading = threading.Event()
                read = port.read

                def signalling_read(*args: object) -> bytes:
                    reading.set()
                    return read(*args)

                port.read = signalling_read
                async with anyio.create_task_group() as tg:
                    tg.start_soon(stream.receive)
                    if path == "thread":  # the read waits in a worker thread, re-entered every 50 ms
                        assert await anyio.to_thread.run_sync(reading.wait, 5), "the port read never started"
                    else:
                        await anyio.wait_all_tasks_blocked()
                    scope.cancel()
        assert scope.cancelled_caught
        assert not port.is_open

    anyio.run(main)


def test_socket_url_uses_the_descriptor() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.settimeout(5)
        url = f"socket://127.0.0.1:{server.getsockname()[1]}"

        async def main() -> None:
            async with PySerial(url=url, check_present=False).connect() as stream:
                assert stream.fd is not None
                peer, _ = server.accept()
                with peer:
                    peer.settimeout(5)
                    peer.sendall(b"from the server")
                    with anyio.fail_after(5):
                        data = b""
                        while len(data) < 15:
                            data += await stream.receive()
                    assert data == b"from the server"
                    await stream.send(b"to the server")
                    assert peer.recv(100) == b"to the server"
                    peer.shutdown(socket.SHUT_WR)
                    with anyio.fail_after(5), pytest.raises(anyio.EndOfStream):
                        await stream.receive()

        anyio.run(main)


def test_loop_stream_has_no_descriptor() -> None:
    async def main() -> None:
        async with PySerial(url="loop://").connect() as stream:
            assert stream.fd is None

    anyio.run(main)
