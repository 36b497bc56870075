"""The router's relay port: our tunnels' byte path, its pairing with Stream sides, and hostile peers."""

from __future__ import annotations

import hashlib
import os
import socket
import ssl
import threading
import time

import pytest

from jumpstarter_drivers.controller import relay as relay_module
from jumpstarter_drivers.controller import tokens
from jumpstarter_drivers.controller.client import leased
from jumpstarter_drivers.core.access import connect

STORAGE = {"storage": {"type": "Storage", "config": {"root_dir": "ROOT"}}}


def _export(root) -> dict:
    return {"power": {"type": "MockPower"}, "storage": {"type": "Storage", "config": {"root_dir": str(root)}}}


def _round_trip(lease_socket: str, tmp_path, size: int = 3 << 20) -> None:
    """A driver call, an upload and its download through the lease: all intact."""
    source = tmp_path / "source.bin"
    source.write_bytes(os.urandom(size))
    copy = tmp_path / "copy.bin"
    with connect(lease_socket) as client:
        client.power.on()
        client.storage.write_from_path("upload.bin", source)
        client.storage.read_into_path("upload.bin", copy)
        client.power.off()
    assert hashlib.sha256(copy.read_bytes()).digest() == hashlib.sha256(source.read_bytes()).digest()


def _relay_connection(lab, replica=None) -> ssl.SSLSocket:
    replica = replica or lab.replicas[0]
    context = ssl.create_default_context(cafile=str(lab.cert))
    raw = socket.create_connection(("127.0.0.1", replica.router.relay_port), timeout=10)
    return context.wrap_socket(raw, server_hostname="127.0.0.1")


def _until(condition, timeout: float) -> None:
    """Return once ``condition()`` holds (polled: the router's counters change on its own loop); fails past ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"still not so after {timeout:g} s"
        time.sleep(0.02)


def _answer(connection: socket.socket) -> bytes:
    data = b""
    while b"\n" not in data:
        chunk = connection.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def test_our_tunnels_go_through_the_relay_port(lab, tmp_path) -> None:
    """Both ends of a tunnel (the client's and the exporter's) come through the relay, not Stream."""
    lab.serve("board-1", {"board": "rpi4"}, _export(tmp_path / "storage"))
    router = lab.replicas[0].router
    assert router.relay_port
    with leased(lab.client("alice"), "board=rpi4", duration=60, wait=30) as lease:
        before = router.relayed, router.paired
        _round_trip(lease.socket, tmp_path)
    assert (router.relayed - before[0], router.paired - before[1]) == (2, 1)


@pytest.mark.parametrize("stream_side", ["exporter", "client"])
def test_a_relay_side_pairs_with_a_stream_side(lab, tmp_path, monkeypatch, stream_side) -> None:
    """Jumpstarter's own peers only know Stream: a relay side on the other end is bridged, bytes intact."""
    env = {"JMP_ROUTER_RELAY": "off"} if stream_side == "exporter" else None
    lab.serve("board-1", {"board": "rpi4"}, _export(tmp_path / "storage"), env=env)
    if stream_side == "client":
        monkeypatch.setenv("JMP_ROUTER_RELAY", "off")  # after the exporter started: only this process
    router = lab.replicas[0].router
    with leased(lab.client("alice"), "board=rpi4", duration=60, wait=30) as lease:
        before = router.relayed, router.paired
        _round_trip(lease.socket, tmp_path)
    assert (router.relayed - before[0], router.paired - before[1]) == (1, 1)


def test_without_a_relay_port_tunnels_use_stream(bare_lab, tmp_path) -> None:
    """A router that has no relay (an upstream one answers Where with UNIMPLEMENTED) is used through Stream."""
    replica = bare_lab.replica(relay=False)
    bare_lab.serve("board-1", {"board": "rpi4"}, _export(tmp_path / "storage"))
    with leased(bare_lab.client("alice"), "board=rpi4", duration=60, wait=30) as lease:
        _round_trip(lease.socket, tmp_path)
    assert replica.router.relay_port == 0
    assert (replica.router.relayed, replica.router.paired) == (0, 1)


def test_an_unreachable_relay_port_falls_back_to_stream(lab, tmp_path, caplog) -> None:
    """A relay port that refuses connections (a firewall, say) costs a warning, not the tunnel."""
    router = lab.replicas[0].router
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        router.relay_port = closed.getsockname()[1]  # Where now names a port nothing listens on
    lab.serve("board-1", {"board": "rpi4"}, _export(tmp_path / "storage"))
    with leased(lab.client("alice"), "board=rpi4", duration=60, wait=30) as lease:
        _round_trip(lease.socket, tmp_path)
    assert (router.relayed, router.paired) == (0, 1)
    assert "unreachable" in caplog.text and "tunnelling through gRPC" in caplog.text


@pytest.mark.parametrize(
    ("first", "answer"),
    [
        (b"GET / HTTP/1.1\r\n\r\n", b"error INVALID_ARGUMENT: expected 'JMP-RELAY/1 <router token>'"),
        (b"JMP-RELAY/1 made.up\n", b"error UNAUTHENTICATED: unknown, used or expired router token; Dial again"),
        (b"JMP-RELAY/1\n", b"error INVALID_ARGUMENT"),
        (b"x" * 3000, b"error INVALID_ARGUMENT: first line longer than 1024 bytes"),
    ],
    ids=["http", "unknown-token", "no-token", "endless-line"],
)
def test_the_relay_port_answers_bad_input_with_a_clear_error(lab, tmp_path, first, answer) -> None:
    lab.serve("board-1", {"board": "rpi4"}, _export(tmp_path / "storage"))
    with _relay_connection(lab) as connection:
        connection.sendall(first)
        assert _answer(connection).startswith(answer)
        assert connection.recv(100) == b""  # and closed
    with leased(lab.client("alice"), "board=rpi4", duration=60, wait=30) as lease:
        _round_trip(lease.socket, tmp_path, size=1 << 20)


def test_garbage_instead_of_tls_is_cut_and_the_relay_keeps_serving(lab, tmp_path) -> None:
    lab.serve("board-1", {"board": "rpi4"}, _export(tmp_path / "storage"))
    with socket.create_connection(("127.0.0.1", lab.replicas[0].router.relay_port), timeout=10) as raw:
        raw.sendall(os.urandom(4096))
        with pytest.raises(ConnectionResetError):
            while raw.recv(4096):
                pass
            raise ConnectionResetError  # a clean close is as good
    with leased(lab.client("alice"), "board=rpi4", duration=60, wait=30) as lease:
        _round_trip(lease.socket, tmp_path, size=1 << 20)


def test_a_silent_connection_is_cut_after_the_first_line_timeout(lab, monkeypatch) -> None:
    monkeypatch.setattr(relay_module, "PREAMBLE_TIMEOUT", 0.5)
    with _relay_connection(lab) as connection:
        start = time.monotonic()
        assert _answer(connection).startswith(b"error DEADLINE_EXCEEDED: no 'JMP-RELAY/1 <router token>' line")
        assert time.monotonic() - start < 5
    assert lab.replicas[0].router.relay_pending == 0


def test_connections_without_a_first_line_are_bounded(lab, tmp_path, monkeypatch) -> None:
    """Past MAX_PENDING silent connections, new ones are closed at once; a tunnel still gets through after."""
    monkeypatch.setattr(relay_module, "MAX_PENDING", 3)
    lab.serve("board-1", {"board": "rpi4"}, _export(tmp_path / "storage"))
    router = lab.replicas[0].router
    silent = [_relay_connection(lab) for _ in range(3)]
    try:
        _until(lambda: router.relay_pending >= 3, 10)
        assert router.relay_pending == 3
        with pytest.raises((ConnectionError, ssl.SSLError, OSError)):
            extra = _relay_connection(lab)  # the server aborts it: the handshake or the first read fails
            extra.sendall(b"JMP-RELAY/1 a.b\n")
            if not extra.recv(100):
                raise ConnectionResetError
    finally:
        for connection in silent:
            connection.close()
    _until(lambda: router.relay_pending == 0, 10)
    with leased(lab.client("alice"), "board=rpi4", duration=60, wait=30) as lease:
        before = router.relayed
        _round_trip(lease.socket, tmp_path, size=1 << 20)
        assert router.relayed - before == 2


def test_a_relay_tunnel_is_cut_when_its_lease_ends(lab, tmp_path) -> None:
    """Releasing the lease ends the tunnel from the router's side too: the exporter's end is closed."""
    lab.serve("board-1", {"board": "rpi4"}, _export(tmp_path / "storage"))
    router = lab.replicas[0].router
    with leased(lab.client("alice"), "board=rpi4", duration=60, wait=30) as lease, connect(lease.socket) as client:
        client.power.on()
        assert len(router.relays) == 2
    _until(lambda: not router.relays, 10)


def test_stalled_tls_handshakes_are_bounded_and_cut(lab, tmp_path, monkeypatch) -> None:
    """Connections that never finish TLS count against MAX_CONNECTIONS and are cut after the handshake timeout."""
    monkeypatch.setattr(relay_module, "MAX_CONNECTIONS", 3)
    monkeypatch.setattr(relay_module, "HANDSHAKE_TIMEOUT", 1.0)
    lab.serve("board-1", {"board": "rpi4"}, _export(tmp_path / "storage"))
    router = lab.replicas[0].router
    port = router.relay_port
    stalled = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(3)]
    try:
        _until(lambda: len(router.relays) >= 3, 10)
        assert len(router.relays) == 3
        with socket.create_connection(("127.0.0.1", port), timeout=10) as extra:
            assert extra.recv(100) == b""  # closed at once, before any TLS
        start = time.monotonic()
        for connection in stalled:
            assert connection.recv(100) == b""  # cut by the handshake timeout
        assert time.monotonic() - start < 5
    finally:
        for connection in stalled:
            connection.close()
    _until(lambda: not router.relays, 5)
    with leased(lab.client("alice"), "board=rpi4", duration=60, wait=30) as lease:
        _round_trip(lease.socket, tmp_path, size=1 << 20)


def test_a_stalled_reader_bounds_what_the_router_holds(lab) -> None:
    """One side writes and the other never reads: the router queues at most about WRITE_HIGH for it,
    stops reading the writer, and every byte still arrives once the reader reads."""
    router = lab.replicas[0].router
    stream, secret = "stalled" + "0" * 25, "a-secret"
    dial = {"endpoint": lab.replicas[0].endpoint, "token": f"{stream}.{secret}", "client": "test"}
    lab.store(lambda store: store.add_dial("no-such-lease", stream, dial, tokens.digest(secret)))
    writer, reader = _relay_connection(lab), _relay_connection(lab)
    with writer, reader:
        for connection in (writer, reader):
            connection.sendall(relay_module.PREAMBLE + f"{stream}.{secret}".encode() + b"\n")
        assert _answer(writer) == _answer(reader) == b"ok\n"
        writer.setblocking(False)
        chunk, sent, idle_since = os.urandom(64 << 10), 0, time.monotonic()
        while time.monotonic() - idle_since < 2 and sent < 512 << 20:
            try:
                sent += writer.send(chunk)
                idle_since = time.monotonic()
            except (BlockingIOError, ssl.SSLWantWriteError):
                time.sleep(0.01)
        assert sent < 64 << 20, f"{sent} bytes went in while nobody read"
        queued = [relay.transport.get_write_buffer_size() for relay in router.relays if relay.transport]
        assert max(queued) <= relay_module.WRITE_HIGH + (256 << 10)
        received = 0
        reader.settimeout(10)
        while received < sent:
            received += len(reader.recv(1 << 20))
        assert received == sent


def test_a_client_leaving_mid_upload_frees_both_ends_of_its_tunnel(lab, tmp_path) -> None:
    lab.serve("board-1", {"board": "rpi4"}, _export(tmp_path / "storage"))
    router = lab.replicas[0].router
    source = tmp_path / "big.bin"
    source.write_bytes(os.urandom(96 << 20))
    with leased(lab.client("alice"), "board=rpi4", duration=60, wait=30) as lease:
        client = connect(lease.socket)
        client.power.on()
        failures: list[BaseException] = []

        def upload() -> None:
            try:
                client.storage.write_from_path("big.bin", source)
            except BaseException as exc:  # noqa: BLE001 - whatever the cut raises is the point
                failures.append(exc)

        thread = threading.Thread(target=upload)
        thread.start()
        _until(lambda: (tmp_path / "storage").exists() and any((tmp_path / "storage").iterdir()), 10)
        client.close()
        thread.join(30)
        assert not thread.is_alive()
        _until(lambda: not router.relays, 10)
        _round_trip(lease.socket, tmp_path, size=1 << 20)  # the lease still serves a new connection
