"""The serial console end to end: driver in a real session, client over gRPC, board on a pty."""

from __future__ import annotations

import logging
import os
import select
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time

import pexpect
import pytest

from jumpstarter_drivers.core import Driver, Session, connect, serve
from jumpstarter_drivers.core.client import AllowList
from jumpstarter_drivers.core.errors import DriverError
from jumpstarter_drivers.pyserial import CONSOLE_LOGGER, PySerial, PySerialClient, flush_consoles

ALL_BYTES = bytes(range(256))
BIG = 4 << 20


def pattern(size: int) -> bytes:
    return (ALL_BYTES * (size // 256 + 1))[:size]


@pytest.fixture
def console(board):
    """The client of a PySerial on ``board``, named ``serial`` under a root node."""
    with serve(Driver(children={"serial": PySerial(url=board.path)})) as root:
        yield root.serial


def test_client_class_and_jumpstarter_name(board) -> None:
    session = Session(root_device=PySerial(url=board.path))
    labels = session.report().reports[0].labels
    assert labels["jumpstarter.dev/client"] == "jumpstarter_driver_pyserial.client.PySerialClient"
    assert labels["jumpstarter-toolkit/client"] == "jumpstarter_drivers.pyserial.client.PySerialClient"


def test_bytes_both_ways(console, board) -> None:
    assert isinstance(console, PySerialClient)
    with console.stream() as stream:
        stream.send(b"to the board\n")
        assert board.read_exactly(13) == b"to the board\n"
        board.write(b"from the board\r\n")
        assert stream.read_exactly(16, timeout=5) == b"from the board\r\n"


def test_binary_safe_both_ways(console, board) -> None:
    with console.stream() as stream:
        stream.send(ALL_BYTES)
        assert board.read_exactly(256) == ALL_BYTES
        board.write(ALL_BYTES)
        assert stream.read_exactly(256, timeout=5) == ALL_BYTES


def test_large_transfer_board_to_client(console, board) -> None:
    data = pattern(BIG)
    with console.stream() as stream:
        writer = threading.Thread(target=board.write, args=(data,), daemon=True)
        writer.start()
        assert stream.read_exactly(BIG, timeout=10) == data
        writer.join(5)


def test_large_transfer_client_to_board(console, board) -> None:
    data = pattern(BIG)
    received: list[bytes] = []
    with console.stream() as stream:
        reader = threading.Thread(target=lambda: received.append(board.read_exactly(BIG, timeout=10)), daemon=True)
        reader.start()
        stream.send(data)
        reader.join(15)
    assert received == [data]


def test_loop_url_echoes() -> None:
    with serve(PySerial(url="loop://")) as console, console.stream() as stream:
        stream.send(b"hello loop")
        assert stream.read_exactly(10, timeout=5) == b"hello loop"
        data = pattern(256 << 10)
        sender = threading.Thread(target=stream.send, args=(data,), daemon=True)
        sender.start()
        assert stream.read_exactly(len(data), timeout=10) == data
        sender.join(5)


def test_socket_url() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.settimeout(5)
        url = f"socket://127.0.0.1:{server.getsockname()[1]}"
        with serve(PySerial(url=url, check_present=False)) as console, console.stream() as stream:
            peer, _ = server.accept()
            with peer:
                peer.settimeout(5)
                stream.send(ALL_BYTES)
                received = b""
                while len(received) < 256:
                    received += peer.recv(4096)
                assert received == ALL_BYTES
                peer.sendall(b"reply")
                assert stream.read_exactly(5, timeout=5) == b"reply"


def test_connect_to_missing_device_is_a_driver_error() -> None:
    console = PySerial(url="/dev/ttyUSB-nosuch", check_present=False)
    match = "'/dev/ttyUSB-nosuch'.*plugged in"
    with serve(console) as client, pytest.raises(DriverError, match=match), client.stream():
        pytest.fail("the stream opened without the device")


def test_pexpect_against_a_shell(console, shell, board) -> None:
    with console.pexpect(timeout=5) as session:
        session.sendline("")
        session.expect(shell.PROMPT)
        session.sendline("echo hello board")
        session.expect(rb"echo hello board\r\n(.*)\r\n")
        assert session.match.group(1) == b"hello board"
        session.expect_exact(shell.PROMPT)
        session.sendline("uname -a")
        index = session.expect([b"FreeBSD", rb"Linux (\S+)"])
        assert (index, session.match.group(1)) == (1, b"fakeboard")
        assert session.before == b"uname -a\r\n"
        session.expect_exact(shell.PROMPT)
        session.sendline("reboot")
        session.expect("not found")
        assert session.after == b"not found"
        session.expect_exact(shell.PROMPT)
        with pytest.raises(pexpect.TIMEOUT):
            session.expect("never printed", timeout=0.2)
        session.sendline("cat 95000")  # 1000 times the printable ASCII characters
        session.expect_exact(b"}~\r\n" + shell.PROMPT)
        assert len(session.before) == len(b"cat 95000\r\n") + 95000 - 2
        session.sendline("poweroff")
        session.expect("Power down")
        shell.join(5)
        board.hang_up()
        with pytest.raises(pexpect.EOF):
            session.expect(shell.PROMPT)
        assert not session.isalive()


def test_pexpect_text_mode(console, shell) -> None:
    with console.pexpect(timeout=5, encoding="utf-8") as session:
        session.sendline("echo grüße")
        session.expect("grüße\r\n")
        assert isinstance(session.before, str)
        session.sendcontrol("c")
        session.expect_exact(shell.PROMPT.decode())


def test_console_capture_is_logged_by_line(console, shell, caplog) -> None:
    caplog.set_level(logging.INFO, logger=CONSOLE_LOGGER)
    with console.pexpect(timeout=5) as session:
        session.sendline("echo captured line")
        session.expect_exact(b"captured line\r\n" + shell.PROMPT)
    records = [r for r in caplog.records if r.name.startswith(CONSOLE_LOGGER)]
    assert [r.getMessage() for r in records] == ["echo captured line", "captured line", "fakeboard:~# "]
    assert {(r.name, r.console, r.levelno) for r in records} == {(f"{CONSOLE_LOGGER}.serial", "serial", logging.INFO)}


def test_an_unfinished_line_is_logged_when_answered_or_flushed(console, shell, caplog) -> None:
    """A prompt has no newline: it is logged when the test answers it, or when the plugin flushes
    the consoles at the end of a test phase, stamped with the time it arrived."""
    caplog.set_level(logging.INFO, logger=CONSOLE_LOGGER)

    def logged() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name.startswith(CONSOLE_LOGGER)]

    with console.pexpect(timeout=5) as session:
        session.sendline("echo one")
        session.expect_exact(b"one\r\n" + shell.PROMPT)
        seen = time.time()
        assert logged() == ["echo one", "one"]
        flush_consoles()
        assert logged() == ["echo one", "one", "fakeboard:~# "]
        assert caplog.records[-1].created <= seen, "stamped when it arrived, not when it was flushed"
        assert caplog.records[-1].driver_uuid == str(console.uuid)
        session.sendline("echo two")
        session.expect_exact(b"two\r\n" + shell.PROMPT)
        session.sendline("echo three")
        assert logged()[3:] == ["echo two", "two", "fakeboard:~# "], "the prompt is logged once answered"
        session.expect_exact(b"three\r\n" + shell.PROMPT)
    assert logged()[6:] == ["echo three", "three", "fakeboard:~# "]


def test_raw_stream_is_not_captured(console, board, caplog) -> None:
    caplog.set_level(logging.INFO, logger=CONSOLE_LOGGER)
    with console.stream() as stream:
        board.write(b"raw bytes\r\n")
        assert stream.read_exactly(11, timeout=5) == b"raw bytes\r\n"
    assert [r for r in caplog.records if r.name.startswith(CONSOLE_LOGGER)] == []


def test_open_and_close_without_with(console, shell, board, wait_until) -> None:
    session = console.open(timeout=5)
    session.sendline("echo jumpstarter style")
    session.expect("jumpstarter style")
    stream = console.open_stream()
    assert len(board.driver_fds()) == 2
    console.close()
    assert session.closed
    with pytest.raises(ValueError, match="closed"):
        session.sendline("too late")
    wait_until(lambda: board.driver_fds() == [], "the console's port is closed")
    with pytest.raises(ValueError, match="send_eof"):
        stream.send(b"too late")


def test_port_released_when_the_console_closes(console, board, wait_until) -> None:
    with console.stream() as stream:
        stream.send(b"x")
        assert board.read_exactly(1) == b"x"
        assert len(board.driver_fds()) == 1
    wait_until(lambda: board.driver_fds() == [], "the port is closed")


def test_send_eof_ends_the_console(console, board, wait_until) -> None:
    with console.stream() as stream:
        stream.send(b"bye")
        stream.send_eof()
        assert stream.receive(timeout=5) == b""
        wait_until(lambda: board.driver_fds() == [], "the port is closed")
        assert board.read_exactly(3) == b"bye"


CLIENT = textwrap.dedent(
    """
    import sys
    from jumpstarter_drivers.core import connect
    with connect(sys.argv[1], allow="UNSAFE") as root, root.stream() as stream:
        stream.send(b"client up")
        print("ready", flush=True)
        sys.stdin.read()
    """
)


def test_port_released_after_the_client_is_killed(board, wait_until) -> None:
    with Session(root_device=PySerial(url=board.path)) as session, session.serve_unix() as path:
        client = subprocess.Popen(
            [sys.executable, "-c", CLIENT, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        try:
            assert select.select([client.stdout], [], [], 30)[0], "the client process did not start within 30 s"
            assert client.stdout.readline() == b"ready\n"
            assert board.read_exactly(9, timeout=10) == b"client up"
            assert len(board.driver_fds()) == 1
            client.send_signal(signal.SIGKILL)
            client.wait(10)
        finally:
            if client.poll() is None:
                client.kill()
                client.wait(10)
            client.stdin.close()
            client.stdout.close()
        wait_until(lambda: board.driver_fds() == [], "the killed client's port is closed")
        with connect(path, allow=AllowList(unsafe=True)) as console, console.stream() as stream:
            stream.send(b"again")
            assert board.read_exactly(5) == b"again"
            board.write(b"welcome back")
            assert stream.read_exactly(12, timeout=5) == b"welcome back"


def test_two_clients_warn(board, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="driver.PySerial")
    with serve(PySerial(url=board.path)) as console, console.stream(), console.stream() as second:
        second.send(b"2")
        assert board.read_exactly(1) == b"2"
    assert any("open by 2 clients" in r.getMessage() for r in caplog.records)


def test_pexpect_sees_exporter_side_end_as_eof(board) -> None:
    with serve(PySerial(url=board.path)) as console, console.pexpect(timeout=5) as session:
        board.write(b"last line\r\n")
        session.expect("last line")
        board.hang_up()
        with pytest.raises(pexpect.EOF):
            session.expect("more")


def test_rejects_unknown_control_character(console) -> None:
    with console.pexpect(timeout=5) as session, pytest.raises(ValueError, match="no control character"):
        session.sendcontrol("1")


@pytest.mark.skipif(not os.path.exists("/proc/self/fd"), reason="needs /proc to see open descriptors")
def test_fixture_sees_descriptors(board) -> None:
    fd = os.open(board.path, os.O_RDWR | os.O_NOCTTY)
    try:
        assert board.driver_fds() == [fd]
    finally:
        os.close(fd)


def test_expect_timeout_shows_patterns_wait_and_what_was_received(console, board) -> None:
    with console.pexpect(timeout=5) as session:
        board.write(b"abc\r\nboot: \xff partial")
        with pytest.raises(pexpect.TIMEOUT) as caught:
            session.expect([b"login:", rb"never \d+"], timeout=1.0)
        message = str(caught.value)
        assert "'login:'" in message and "'never \\\\d+'" in message
        assert "within 1 s" in message or "within 1.0 s" in message
        assert "abc\nboot: \ufffd partial" in message
        assert "object at 0x" not in message and "searcher" not in message
        with pytest.raises(pexpect.TIMEOUT, match=r"(?s)no 'prompt# ' within 0.3 s.*abc"):
            session.expect_exact("prompt# ", timeout=0.3)


def test_expect_end_of_console_shows_what_was_received(console, board) -> None:
    with console.pexpect(timeout=5) as session:
        board.write(b"last words\r\n")
        session.expect("last")
        board.hang_up()
        with pytest.raises(pexpect.EOF, match=r"(?s)the console ended before 'login:'.* words"):
            session.expect("login:")
