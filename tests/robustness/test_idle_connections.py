"""Connections that never authenticate are bounded in time and number: a real exporter process
with a lowered fd limit, a thousand idle peers, and a legitimate client that still gets in."""

from __future__ import annotations

import contextlib
import resource
import socket
import ssl
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from jumpstarter_drivers.cli.certs import write_self_signed
from jumpstarter_drivers.core.access import connect

PASSPHRASE = "s3cret"
#: The exporter's fd limit: the idle peers alone would take every descriptor without a bound.
FD_LIMIT = 1024
PEERS = 1050
#: The bounds the exporter is started with (seconds); short, so the test does not wait for the defaults.
HANDSHAKE = 2.0
IDLE = 2.0

EXPORTER = textwrap.dedent(
    """
    import resource, sys
    from jumpstarter_drivers import Session
    from jumpstarter_drivers.power import MockPower

    resource.setrlimit(resource.RLIMIT_NOFILE, ({limit}, {limit}))
    cert, key, handshake, idle, most = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
    session = Session(
        root_device=MockPower(), handshake_timeout=handshake, idle_timeout=idle, max_connections=int(most) or None
    )
    with session, session.serve_tcp(tls_cert=cert, tls_key=key, passphrase="{passphrase}") as port:
        print(port, session.max_connections, flush=True)
        sys.stdin.read()
    """
)


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return write_self_signed(tmp_path_factory.mktemp("tls"), ["127.0.0.1"])


@contextlib.contextmanager
def exporter_process(
    directory: Path, tls_files: tuple[Path, Path], handshake: float = HANDSHAKE, idle: float = IDLE, most: int = 0
) -> Iterator[tuple[int, int]]:
    """``(port, connection bound)`` of an exporter process limited to :data:`FD_LIMIT` descriptors
    (``most`` connections, 0: the default bound)."""
    script = directory / "exporter.py"
    script.write_text(EXPORTER.format(limit=FD_LIMIT, passphrase=PASSPHRASE))
    cert, key = tls_files
    process = subprocess.Popen(
        [sys.executable, str(script), str(cert), str(key), str(handshake), str(idle), str(most)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        port, bound = process.stdout.readline().split()
        yield int(port), int(bound)
    finally:
        process.stdin.close()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
    assert process.returncode == 0


@pytest.fixture
def exporter(tmp_path: Path, tls_files: tuple[Path, Path]) -> Iterator[tuple[int, int]]:
    """An exporter process with short bounds (:data:`HANDSHAKE`, :data:`IDLE`)."""
    with exporter_process(tmp_path, tls_files) as served:
        yield served


@pytest.fixture
def enough_fds() -> None:
    """This test process holds every idle peer's socket: make room for them."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 4 * PEERS:
        pytest.skip(f"the test needs {4 * PEERS} descriptors; the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 4 * PEERS), hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def tls_peer(port: int) -> socket.socket:
    """A peer that completes TLS and then says nothing (no HTTP/2, no passphrase)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["h2"])
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    raw.settimeout(1)  # an exporter out of descriptors never answers: hold the socket and move on
    try:
        return context.wrap_socket(raw, server_hostname="127.0.0.1")
    except (OSError, ssl.SSLError):
        return raw  # refused over the bound: closed by the exporter, still held here


class ChannelPeer:
    """A gRPC channel that connects (TLS and HTTP/2) on a connection of its own and sends no call;
    with ``watch``, :attr:`dropped` is set when the exporter drops the connection."""

    def __init__(self, port: int, ca: str, watch: bool = False) -> None:
        credentials = grpc.ssl_channel_credentials(Path(ca).read_bytes())
        options = [("grpc.use_local_subchannel_pool", 1)]
        self.channel = grpc.secure_channel(f"127.0.0.1:{port}", credentials, options=options)
        self.ready = grpc.channel_ready_future(self.channel)
        self.dropped = threading.Event()
        self._seen: list[grpc.ChannelConnectivity] = []
        self._watching = watch  # a watch costs a thread per channel: only where the drop is awaited
        if watch:
            self.channel.subscribe(self._watch)

    def _watch(self, state: grpc.ChannelConnectivity) -> None:
        self._seen.append(state)
        if grpc.ChannelConnectivity.READY in self._seen and state != grpc.ChannelConnectivity.READY:
            self.dropped.set()

    def close(self) -> None:
        self.ready.cancel()
        if self._watching:
            self.channel.unsubscribe(self._watch)
        self.channel.close()


def raw_peer(port: int) -> socket.socket:
    """A peer that connects and never starts TLS."""
    return socket.create_connection(("127.0.0.1", port), timeout=10)


def closed_by_exporter(peer: socket.socket, timeout: float) -> bool:
    """Whether the exporter closes ``peer`` within ``timeout`` (what it sends meanwhile is read and dropped)."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        peer.settimeout(left)
        try:
            if peer.recv(4096) == b"":
                return True
        except TimeoutError:
            return False
        except (OSError, ssl.SSLError):
            return True
    return False


@pytest.mark.usefixtures("enough_fds")
def test_a_legitimate_client_gets_in_past_idle_peers(exporter, tls_files):
    port, bound = exporter
    assert bound < FD_LIMIT
    cert = str(tls_files[0])
    with contextlib.ExitStack() as held:
        channels = []
        for _ in range(PEERS):
            channels.append(ChannelPeer(port, cert))
            held.callback(channels[-1].close)
        deadline = time.monotonic() + 15  # over the bound some are refused and keep trying: no wait for those
        for channel in channels:
            with contextlib.suppress(grpc.FutureTimeoutError):
                channel.ready.result(timeout=max(deadline - time.monotonic(), 0.01))
        held.enter_context(raw_peer(port))
        held.enter_context(tls_peer(port))
        with connect(f"127.0.0.1:{port}", ca=cert, passphrase=PASSPHRASE, timeout=5 * (HANDSHAKE + IDLE)) as client:
            client.on()


def test_a_peer_that_never_starts_tls_is_dropped(exporter):
    with raw_peer(exporter[0]) as silent:
        assert closed_by_exporter(silent, 10 * HANDSHAKE)


def test_a_peer_silent_after_tls_is_dropped(exporter):
    with tls_peer(exporter[0]) as after_tls:
        assert closed_by_exporter(after_tls, 10 * HANDSHAKE)


def test_a_channel_that_sends_no_call_is_dropped(exporter, tls_files):
    peer = ChannelPeer(exporter[0], str(tls_files[0]), watch=True)
    try:
        peer.ready.result(timeout=30)
        assert peer.dropped.wait(10 * IDLE)
    finally:
        peer.close()


def test_connections_beyond_the_bound_are_closed_at_once(tmp_path, tls_files):
    most = 8
    with exporter_process(tmp_path, tls_files, handshake=60, most=most) as (port, bound), contextlib.ExitStack() as held:
        assert bound == most
        peers = [held.enter_context(raw_peer(port)) for _ in range(3 * most)]
        closed = [closed_by_exporter(peer, 0.2) for peer in peers]
    assert closed.count(False) == most, closed
