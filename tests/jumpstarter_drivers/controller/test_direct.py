"""The exporter's direct port, in this process: a session served on a unix socket, the port before it."""

from __future__ import annotations

import logging
import os
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from jumpstarter_drivers.controller import direct as direct_module
from jumpstarter_drivers.controller.client import leased
from jumpstarter_drivers.controller.direct import DirectPort, parse_direct
from jumpstarter_drivers.core import access, loop
from jumpstarter_drivers.core.access import connect
from jumpstarter_drivers.core.errors import ConfigurationError, DriverError, ExporterUnreachable
from jumpstarter_drivers.core.session import Session
from jumpstarter_drivers.power import MockPower


@pytest.fixture(autouse=True)
def _forget_unreachable() -> Iterator[None]:
    yield
    access._unreachable.clear()  # a test's dead endpoint is not skipped by the next test


@pytest.fixture
def served() -> Iterator[tuple[Session, Path, DirectPort]]:
    """A MockPower session on a unix socket and a started direct port before it (no lease yet)."""
    with Session(root_device=MockPower()) as session, session.serve_unix() as path:
        port = DirectPort(str(path), "127.0.0.1", 0, "127.0.0.1")
        loop.run(port.start())
        try:
            yield session, path, port
        finally:
            loop.run(port.stop(), timeout=15)


def _grant(session: Session, port: DirectPort, lease: str) -> object:
    endpoint = loop.run(_on_loop(port.grant, lease))
    session.alternative_endpoints = [endpoint]
    return endpoint


async def _on_loop(function, *args):
    return function(*args)


def _tls(port: DirectPort, endpoint, with_certificate: bool = True, timeout: float = 10) -> ssl.SSLSocket:
    """A TLS connection to the port trusting its certificate, with the endpoint's client certificate."""
    context = ssl.create_default_context(cadata=endpoint.certificate)
    context.set_alpn_protocols(["h2"])
    if with_certificate:
        with tempfile.TemporaryDirectory() as directory:
            (Path(directory) / "cert.pem").write_text(endpoint.client_certificate)
            (Path(directory) / "key.pem").write_text(endpoint.client_private_key)
            context.load_cert_chain(Path(directory) / "cert.pem", Path(directory) / "key.pem")
    raw = socket.create_connection(("127.0.0.1", port.port), timeout=timeout)
    secured = context.wrap_socket(raw, server_hostname="127.0.0.1")
    secured.settimeout(timeout)
    return secured


def _refused(connection: socket.socket) -> bool:
    """Whether the port closes ``connection`` within its timeout, after what it sent before (a session's
    HTTP/2 greeting, say); TLS 1.3 reports a refused client certificate at the first read."""
    try:
        while connection.recv(65536):
            pass
    except (ssl.SSLError, ConnectionError):
        return True
    except TimeoutError:
        return False
    return True


def test_a_client_told_of_a_direct_endpoint_moves_to_it(served) -> None:
    session, path, port = served
    _grant(session, port, "lease-1")
    with connect(path) as client:
        assert client.connection.address.startswith(f"127.0.0.1:{port.port} (direct")
        client.on()
        assert client.read() is not None
    assert port.served >= 1


def test_without_a_grant_the_port_closes_connections_before_tls(served) -> None:
    session, path, port = served
    endpoint = _grant(session, port, "lease-1")
    loop.run(_on_loop(port.revoke))
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        _tls(port, endpoint)
    session.alternative_endpoints = [endpoint]
    with connect(path) as client:  # the offer does not answer: the client stays on the unix socket
        assert client.connection.address == str(path)
        client.on()


def test_a_certificate_of_an_earlier_lease_is_refused(served) -> None:
    session, _, port = served
    earlier = _grant(session, port, "lease-1")
    held = _tls(port, earlier)
    _grant(session, port, "lease-2")
    assert _refused(held), "a connection of the earlier lease survived its end"
    assert _refused(_tls(port, earlier)), "the earlier lease's certificate still opens the port"


@pytest.mark.parametrize("peer", ["garbage", "no client certificate", "another certificate"])
def test_peers_without_the_lease_certificate_are_refused_and_the_port_keeps_serving(served, peer) -> None:
    session, path, port = served
    endpoint = _grant(session, port, "lease-1")
    if peer == "garbage":
        with socket.create_connection(("127.0.0.1", port.port), timeout=10) as raw:
            raw.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * 10)
            raw.settimeout(10)
            assert _refused(raw)
    elif peer == "no client certificate":
        assert _refused(_tls(port, endpoint, with_certificate=False))
    else:
        other = direct_module._certificate("lease other", [])
        forged = type(endpoint)(endpoint=endpoint.endpoint, certificate=endpoint.certificate,
                                client_certificate=other[0].decode(), client_private_key=other[1].decode())
        assert _refused(_tls(port, forged))
    assert port.served == 0
    with connect(path) as client:
        assert "(direct" in client.connection.address
        client.on()


def test_stalled_handshakes_are_bounded_in_number_and_time(served, monkeypatch) -> None:
    session, path, port = served
    monkeypatch.setattr(direct_module, "MAX_CONNECTIONS", 4)
    monkeypatch.setattr(direct_module, "HANDSHAKE_TIMEOUT", 1.0)
    _grant(session, port, "lease-1")
    stalled = [socket.create_connection(("127.0.0.1", port.port), timeout=10) for _ in range(4)]
    time.sleep(0.2)  # let the port count them
    extra = socket.create_connection(("127.0.0.1", port.port), timeout=10)
    extra.settimeout(10)
    assert extra.recv(1) == b"", "a connection over the bound was kept"
    for connection in stalled:
        connection.settimeout(10)
        started = time.monotonic()
        assert connection.recv(1) == b""
        assert time.monotonic() - started < 5, "a stalled handshake outlived its timeout by far"
    with connect(path) as client:
        assert "(direct" in client.connection.address
        client.on()


def test_an_endpoint_that_does_not_answer_costs_one_warning_then_is_skipped(served, caplog) -> None:
    session, path, port = served
    endpoint = _grant(session, port, "lease-1")
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{closed.getsockname()[1]}"
    endpoint.endpoint = dead
    session.alternative_endpoints = [endpoint]
    with caplog.at_level(logging.WARNING, logger="jumpstarter_drivers.core.access"):
        for _ in range(2):
            with connect(path) as client:
                assert client.connection.address == str(path)
                client.on()
    warnings = [record.getMessage() for record in caplog.records if dead in record.getMessage()]
    assert len(warnings) == 1, warnings
    assert "JMP_DIRECT=off" in warnings[0]


def test_an_endpoint_answering_for_another_session_is_not_used(served, caplog) -> None:
    session, _, port = served
    _grant(session, port, "lease-1")
    with Session(root_device=MockPower()) as other, other.serve_unix() as other_path:
        other.alternative_endpoints = list(session.alternative_endpoints)  # points at the first session
        with caplog.at_level(logging.WARNING), connect(other_path) as client:
            assert client.connection.address == str(other_path)
    assert any("another session" in record.getMessage() for record in caplog.records)


def test_jmp_direct_off_keeps_the_client_where_it_is(served, monkeypatch) -> None:
    session, path, port = served
    _grant(session, port, "lease-1")
    monkeypatch.setenv("JMP_DIRECT", "off")
    with connect(path) as client:
        assert client.connection.address == str(path)
    assert port.served == 0


def test_a_direct_connection_cut_at_the_lease_end_fails_calls_instead_of_hanging(served) -> None:
    session, path, port = served
    _grant(session, port, "lease-1")
    with connect(path, keepalive=0.5) as client:
        client.on()
        loop.run(_on_loop(port.revoke))
        started = time.monotonic()
        with pytest.raises((ExporterUnreachable, grpc.RpcError, ConnectionError)):
            client.on()
        assert time.monotonic() - started < 10


@pytest.mark.parametrize(
    ("listen", "address", "problem"),
    [
        ("7100", None, "give HOST:PORT"),
        ("0.0.0.0:7100", None, "give --direct-address"),
        ("[::]:7100", None, "give --direct-address"),
        ("host:99999", None, "give HOST:PORT"),
    ],
)
def test_bad_direct_options_name_the_fix(listen, address, problem) -> None:
    with pytest.raises(ConfigurationError, match=problem):
        parse_direct(listen, address)


def test_a_wildcard_listen_with_an_address_is_advertised_at_that_address() -> None:
    assert parse_direct("0.0.0.0:7100", "lab-3.example") == ("0.0.0.0", 7100, "lab-3.example")


def _export(root: Path) -> dict:
    return {"power": {"type": "MockPower"}, "storage": {"type": "Storage", "config": {"root_dir": str(root)}}}


def _offer(client) -> object:
    """The direct endpoint the exporter offers the holder of the lease ``client`` is connected through."""
    connection = client.connection
    report = connection.exporter.GetReport(connection.empty(), metadata=connection.metadata, timeout=10)
    (endpoint,) = report.alternative_endpoints
    return endpoint


def _port_of(endpoint) -> DirectPort:
    stand_in = DirectPort("", "127.0.0.1", 0, "127.0.0.1")
    stand_in.port = int(endpoint.endpoint.rpartition(":")[2])
    return stand_in


def test_a_leased_client_reaches_an_exporter_with_a_direct_port_without_the_router(lab, tmp_path) -> None:
    """Through a real controller: the holder moves to the exporter's port; the lease's end closes it to
    that holder, and the next lease gets certificates of its own."""
    lab.serve("board-1", {"board": "rpi4"}, _export(tmp_path / "storage"), args=("--direct", "127.0.0.1:0"))
    source = tmp_path / "source.bin"
    source.write_bytes(os.urandom(3 << 20))
    with leased(lab.client("alice"), "board=rpi4", duration=60, wait=30) as lease:
        client = connect(lease.socket, keepalive=0.5)
        assert "(direct; leased at" in client.connection.address
        client.power.on()
        client.storage.write_from_path("upload.bin", source)
        client.storage.read_into_path("upload.bin", tmp_path / "copy.bin")
        assert (tmp_path / "copy.bin").read_bytes() == source.read_bytes()
        alice = _offer(client)
    try:
        started = time.monotonic()
        with pytest.raises((ExporterUnreachable, grpc.RpcError, ConnectionError, DriverError)):
            client.power.on()  # the lease ended: its direct connection was cut (or its calls refused)
        assert time.monotonic() - started < 10
    finally:
        client.close()
    lab.wait_online("board-1")
    with leased(lab.client("bob"), "board=rpi4", duration=60, wait=30) as lease, connect(lease.socket) as client:
        assert "(direct" in client.connection.address
        bob = _offer(client)
        assert bob.client_certificate != alice.client_certificate
        assert _refused(_tls(_port_of(alice), alice)), "an ended lease's certificate opened the port"
        client.power.off()


def test_serve_refuses_direct_options_that_cannot_work(tmp_path, lab) -> None:
    path = lab.exporter_file("board-1", {"board": "rpi4"})
    jumpstarter = [sys.executable, "-m", "jumpstarter_drivers.cli", "serve", str(path)]
    cases = [
        (["--direct", "127.0.0.1:0"], "give --controller"),
        (["--controller", lab.endpoints, "--direct", "0.0.0.0:0"], "give --direct-address"),
        (["--controller", lab.endpoints, "--direct-address", "lab-3"], "give --direct too"),
    ]
    for extra, problem in cases:
        done = subprocess.run([*jumpstarter, *extra], capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode != 0 and problem in done.stderr, (extra, done.stderr)
