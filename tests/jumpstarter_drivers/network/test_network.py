"""Forwarding a board's TCP port through the exporter: real HTTP server, real curl, real sockets."""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from jumpstarter_drivers.composite.driver import Composite
from jumpstarter_drivers.core import Session, serve
from jumpstarter_drivers.core.errors import ConfigurationError, DriverError
from jumpstarter_drivers.network import Network, TcpNetwork
from jumpstarter_drivers.network.client import parse_forward

needs_curl = pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed (Debian package curl)")


@pytest.fixture
def web(tmp_path: Path) -> Iterator[tuple[int, bytes]]:
    """A real HTTP server on loopback (the 'board'), serving 2 MiB of random bytes as /blob."""
    data = os.urandom(2 << 20)
    (tmp_path / "blob").write_bytes(data)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1], data
    server.shutdown()
    server.server_close()
    thread.join(5)


def curl(url: str) -> bytes:
    return subprocess.run(["curl", "-sSf", "--max-time", "30", url], capture_output=True, check=True, timeout=60).stdout


def forward_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("forward")]


@needs_curl
def test_curl_through_a_forwarded_port(web) -> None:
    port, data = web
    with serve(Composite(children={"http": TcpNetwork(host="127.0.0.1", port=port)})) as client:
        assert client.http.address() == ("127.0.0.1", port)
        with client.http.forward(port) as (host, local):
            assert host == "127.0.0.1" and local != port
            assert curl(f"http://{host}:{local}/blob") == data
            with ThreadPoolExecutor(4) as pool:
                assert all(got == data for got in pool.map(curl, [f"http://{host}:{local}/blob"] * 4))
        with pytest.raises(OSError), socket.create_connection((host, local), timeout=2):
            pass
    assert not forward_threads(), "the forwarder left threads behind"


@needs_curl
def test_network_node_forwards_each_configured_port_only(web) -> None:
    port, data = web
    with serve(Composite(children={"net": Network(host="127.0.0.1", ports=[port, 1])})) as client:
        assert set(client.net.ports()) == {port, 1}
        with client.net.forward(port) as (host, local):
            assert curl(f"http://{host}:{local}/blob") == data
        with pytest.raises(ConfigurationError, match=f"forwards ports 1, {port}, not 22"), client.net.forward(22):
            pass


def test_a_port_nobody_listens_on_is_a_clear_error() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    with serve(TcpNetwork(host="127.0.0.1", port=closed)) as client:
        with pytest.raises(DriverError, match=f"cannot connect to 127.0.0.1:{closed} on the board"), client.stream():
            pass
        with client.forward() as address, socket.create_connection(address, timeout=5) as conn:
            conn.settimeout(10)
            assert conn.recv(10) == b"", "a refused board connection closes the local one"


def test_connections_per_port_are_bounded(web) -> None:
    port, _ = web
    with (serve(TcpNetwork(host="127.0.0.1", port=port, max_connections=1)) as client, client.stream(),
          pytest.raises(DriverError, match="already has 1 connections open"), client.stream()):
        pass


def test_bad_configuration_and_specs() -> None:
    with pytest.raises(ConfigurationError, match="port 70000 is not a TCP port"):
        TcpNetwork(host="10.0.0.2", port=70000)
    with pytest.raises(ConfigurationError, match="'ports' is empty"):
        Network(host="10.0.0.2", ports=[])
    with pytest.raises(ValueError, match="is not LOCAL:NODE:PORT"):
        parse_forward("8080:board")


@needs_curl
def test_cli_forward_until_interrupted(web) -> None:
    port, data = web
    with Session(root_device=Composite(children={"board": Composite(children={
        "http": TcpNetwork(host="127.0.0.1", port=port)})})) as session, session.serve_unix() as path:
        process = subprocess.Popen(
            [sys.executable, "-m", "jumpstarter_drivers.cli", "--host", str(path), "forward", f"0:board.http:{port}"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        try:
            line = process.stdout.readline()
            assert line.startswith("forwarding 127.0.0.1:"), line + process.stderr.read()
            local = int(line.split()[1].split(":")[1])
            assert curl(f"http://127.0.0.1:{local}/blob") == data
        finally:
            process.send_signal(signal.SIGINT)
            assert process.wait(20) == 0, process.stderr.read()


def test_cli_forward_bad_spec_is_a_usage_error(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "jumpstarter_drivers.cli", "--host", str(tmp_path / "none.sock"), "forward", "8080:board"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert done.returncode == 2 and "is not LOCAL:NODE:PORT" in done.stderr, done.stderr
