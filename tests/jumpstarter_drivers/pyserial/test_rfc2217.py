"""RFC 2217 consoles against a real ser2net (Debian package ``ser2net``) serving a pty."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator

import pytest
from tests.helpers.net import free_port

from jumpstarter_drivers.core import serve
from jumpstarter_drivers.core.errors import ConfigurationError
from jumpstarter_drivers.core.processes import stop_process
from jumpstarter_drivers.pyserial import PySerial

SER2NET = shutil.which("ser2net", path=os.environ.get("PATH", "") + os.pathsep + "/usr/sbin")

pytestmark = [
    pytest.mark.skipif(SER2NET is None, reason="ser2net is not installed (Debian: apt-get install ser2net)"),
    pytest.mark.filterwarnings(
        r"ignore:set(Name|Daemon)\(\) is deprecated:DeprecationWarning"
    ),  # pyserial 3.5 RFC 2217
]

CONFIG = """\
%YAML 1.1
---
connection: &console
  accepter: telnet(rfc2217),tcp,127.0.0.1,{port}
  connector: serialdev,{device},115200n81,local
  options:
    kickolduser: true
"""


@pytest.fixture
def rfc2217_url(board, tmp_path) -> Iterator[str]:
    """ser2net in the foreground, serving ``board`` over telnet with RFC 2217; yields the pyserial URL.

    A pty has no modem lines, so ser2net cannot acknowledge DTR/RTS changes; ``ign_set_control``
    tells pyserial not to wait for those acknowledgements.
    """
    port = free_port()
    config = tmp_path / "ser2net.yaml"
    config.write_text(CONFIG.format(port=port, device=board.path))
    server = subprocess.Popen(
        [SER2NET, "-n", "-u", "-P", str(tmp_path / "ser2net.pid"), "-c", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            if server.poll() is not None:
                pytest.fail(f"ser2net exited with {server.returncode}: {server.stdout.read().decode()}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"ser2net did not listen on 127.0.0.1:{port} within 10 s")
                time.sleep(0.02)
        yield f"rfc2217://127.0.0.1:{port}?ign_set_control"
    finally:
        stop_process(server)
        server.stdout.close()


def test_rfc2217_round_trip_binary(rfc2217_url, board) -> None:
    data = bytes(range(256)) * 64  # includes 0xFF, the telnet IAC byte, many times over
    with serve(PySerial(url=rfc2217_url)) as console, console.stream() as stream:
        stream.send(data)
        assert board.read_exactly(len(data), timeout=10) == data
        board.write(data)
        assert stream.read_exactly(len(data), timeout=10) == data


def test_rfc2217_pexpect(rfc2217_url, shell) -> None:
    with serve(PySerial(url=rfc2217_url, check_present=False)) as console, console.pexpect(timeout=10) as session:
        session.sendline("")
        session.expect_exact(shell.PROMPT)
        session.sendline("uname -a")
        session.expect(rb"Linux (\S+)")
        assert session.match.group(1) == b"fakeboard"


def test_rfc2217_server_down_is_a_configuration_error() -> None:
    url = f"rfc2217://127.0.0.1:{free_port()}"
    with pytest.raises(ConfigurationError, match=rf"{url}.*server behind the URL is running"):
        PySerial(url=url)
