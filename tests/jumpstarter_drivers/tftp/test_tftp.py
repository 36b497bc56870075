"""The TFTP server against real clients: curl, tftp-hpa and tftpy; plus protocol-level checks."""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import socket
import struct
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.helpers.drivers import started

from jumpstarter_drivers.core import ConfigurationError, serve
from jumpstarter_drivers.tftp import Tftp, TftpClient, TftpServer
from jumpstarter_drivers.tftp.server import ErrorCode, error_packet

needs_curl = pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
needs_hpa = pytest.mark.skipif(shutil.which("tftp") is None, reason="tftp-hpa (Debian tftp-hpa) is not installed")


@pytest.fixture
def tftp(root: Path) -> Iterator[Tftp]:
    with started(Tftp(root_dir=str(root))) as driver:
        yield driver


def curl(url: str, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["curl", "-sS", "--max-time", "20", *extra, "-o", str(out), url], check=False, capture_output=True, text=True
    )


def hpa(port: int, *command: str, mode: str = "binary", cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["tftp", "-m", mode, "127.0.0.1", str(port), "-c", *command],
        check=False,
        capture_output=True,
        text=True,
        timeout=20,
        cwd=cwd,
    )


@needs_curl
@pytest.mark.parametrize("blksize", [None, 512, 1468, 8192])
def test_curl_downloads_byte_for_byte(tftp: Tftp, payload: bytes, tmp_path: Path, blksize: int | None) -> None:
    extra = ("--tftp-blksize", str(blksize)) if blksize else ()
    result = curl(f"tftp://127.0.0.1:{tftp.get_port()}/images/payload.bin", tmp_path / "out", *extra)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out").read_bytes() == payload


@needs_curl
def test_file_size_multiple_of_blksize_and_empty_file(tftp: Tftp, root: Path, tmp_path: Path) -> None:
    exact = os.urandom(512 * 7)
    (root / "exact").write_bytes(exact)
    (root / "empty").write_bytes(b"")
    assert curl(f"tftp://127.0.0.1:{tftp.get_port()}/exact", tmp_path / "exact").returncode == 0
    assert (tmp_path / "exact").read_bytes() == exact
    assert curl(f"tftp://127.0.0.1:{tftp.get_port()}/empty", tmp_path / "empty").returncode == 0
    assert (tmp_path / "empty").read_bytes() == b""


@needs_curl
def test_block_numbers_roll_over(tftp: Tftp, root: Path, tmp_path: Path) -> None:
    # 65536 * 8 bytes: block numbers pass 65535 and wrap to 0 with the smallest block size.
    data = os.urandom(8 * 65536 + 100)
    (root / "long").write_bytes(data)
    result = curl(f"tftp://127.0.0.1:{tftp.get_port()}/long", tmp_path / "long", "--tftp-blksize", "8")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "long").read_bytes() == data


@needs_hpa
def test_tftp_hpa_binary_and_netascii(tftp: Tftp, root: Path, payload: bytes, tmp_path: Path) -> None:
    result = hpa(tftp.get_port(), "get", "images/payload.bin", str(tmp_path / "kernel"))
    assert result.returncode == 0 and not result.stdout and not result.stderr, result
    assert (tmp_path / "kernel").read_bytes() == payload

    text = b"line one\nline two\r\nbare cr\r end\n" * 500
    (root / "images" / "script.txt").write_bytes(text)
    result = hpa(tftp.get_port(), "get", "/images/script.txt", str(tmp_path / "script.txt"), mode="netascii")
    assert result.returncode == 0 and not result.stdout, result
    assert (tmp_path / "script.txt").read_bytes() == text


def test_tftpy_client_with_options(tftp: Tftp, payload: bytes, tmp_path: Path) -> None:
    import tftpy

    sizes: list[int] = []
    client = tftpy.TftpClient("127.0.0.1", tftp.get_port(), options={"blksize": 1024, "tsize": 0})
    client.download(
        "images/payload.bin", str(tmp_path / "kernel"), packethook=lambda p: sizes.append(len(getattr(p, "data", b"")))
    )
    assert (tmp_path / "kernel").read_bytes() == payload
    assert max(sizes) == 1024


@needs_hpa
def test_write_requests_are_refused(tftp: Tftp, root: Path, tmp_path: Path) -> None:
    (tmp_path / "upload").write_bytes(b"should not land")
    result = hpa(tftp.get_port(), "put", str(tmp_path / "upload"), "upload", cwd=tmp_path)
    assert "Error code 2: this TFTP server is read-only" in result.stdout + result.stderr
    assert not (root / "upload").exists()


def test_tftpy_upload_is_refused(tftp: Tftp, root: Path, tmp_path: Path) -> None:
    import tftpy

    (tmp_path / "upload").write_bytes(b"x")
    client = tftpy.TftpClient("127.0.0.1", tftp.get_port())
    with pytest.raises(tftpy.TftpException, match="errorcode = 2"):
        client.upload("upload", str(tmp_path / "upload"), timeout=2, retries=1)
    assert not (root / "upload").exists()


@needs_hpa
def test_paths_outside_the_root_are_refused(tftp: Tftp, root: Path, tmp_path: Path) -> None:
    (tmp_path / "secret").write_bytes(b"secret")
    (root / "escape").symlink_to(tmp_path / "secret")
    for name in ("../secret", "images/../../secret", "escape"):
        result = hpa(tftp.get_port(), "get", name, str(tmp_path / "got"))
        assert "Error code 2" in result.stdout + result.stderr and "outside the TFTP root" in result.stdout, result
        assert not (tmp_path / "got").exists() or (tmp_path / "got").read_bytes() != b"secret"
    result = hpa(tftp.get_port(), "get", "images/missing", str(tmp_path / "missing"))
    assert "Error code 1: images/missing: file not found" in result.stdout + result.stderr


def test_a_name_too_long_is_file_not_found(tftp: Tftp, payload: bytes) -> None:
    """The kernel refuses a name over 255 bytes (ENAMETOOLONG): the peer is told, not left waiting."""
    name = "images/" + "x" * 300
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(10)
        sock.sendto(_request(name), ("127.0.0.1", tftp.get_port()))
        assert sock.recv(70000) == error_packet(ErrorCode.FILE_NOT_FOUND, f"{name}: file not found")


def test_client_put_file_returns_the_name_a_board_asks_for(root: Path, tmp_path: Path) -> None:
    source = tmp_path / "zImage"
    source.write_bytes(os.urandom(70_000))
    with serve(Tftp(root_dir=str(root))) as client:
        assert isinstance(client, TftpClient)
        client.start()
        assert client.put_file("images/zImage", source) == "images/zImage"
        assert _fetch(client.get_port(), "images/zImage") == source.read_bytes()


# protocol-level checks with a raw socket (windowsize: no installed client speaks RFC 7440) -------


def _request(name: str, **options: int) -> bytes:
    fields = [name, "octet"] + [x for k, v in options.items() for x in (k, str(v))]
    return struct.pack("!H", 1) + b"".join(f.encode() + b"\0" for f in fields)


def _fetch(port: int, name: str, ack_every: int = 1, **options: int) -> bytes:
    """Download with a minimal client that ACKs every ``ack_every`` blocks (its window)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5)
        sock.sendto(_request(name, **options), ("127.0.0.1", port))
        blksize, data, expected = options.get("blksize", 512), [], 1
        packet, server = sock.recvfrom(70000)
        if packet[:2] == b"\x00\x06":
            sock.sendto(struct.pack("!HH", 4, 0), server)
            packet, server = sock.recvfrom(70000)
        while True:
            opcode, block = struct.unpack("!HH", packet[:4])
            assert opcode == 3, packet
            if block == expected & 0xFFFF:
                data.append(packet[4:])
                last = len(packet) - 4 < blksize
                if last or expected % ack_every == 0:
                    sock.sendto(struct.pack("!HH", 4, block), server)
                if last:
                    return b"".join(data)
                expected += 1
            packet = sock.recvfrom(70000)[0]


def test_windowsize_option(tftp: Tftp, payload: bytes) -> None:
    assert _fetch(tftp.get_port(), "images/payload.bin", ack_every=8, windowsize=8, blksize=1024) == payload


def test_window_resent_from_the_last_acknowledged_block(tftp: Tftp, payload: bytes) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5)
        sock.sendto(_request("images/payload.bin", windowsize=4, tsize=0), ("127.0.0.1", tftp.get_port()))
        oack, server = sock.recvfrom(70000)
        fields = oack[2:].split(b"\0")[:-1]
        assert oack[:2] == b"\x00\x06" and dict(zip(fields[::2], fields[1::2], strict=True)) == {
            b"windowsize": b"4",
            b"tsize": str(len(payload)).encode(),
        }
        sock.sendto(struct.pack("!HH", 4, 0), server)
        blocks = [struct.unpack("!HH", sock.recv(70000)[:4])[1] for _ in range(4)]
        assert blocks == [1, 2, 3, 4]
        sock.sendto(struct.pack("!HH", 4, 2), server)  # blocks 3 and 4 "lost"
        blocks = [struct.unpack("!HH", sock.recv(70000)[:4])[1] for _ in range(4)]
        assert blocks == [3, 4, 5, 6]
        sock.sendto(struct.pack("!HHH", 5, 0, 0), server)  # cancel


def test_unanswered_data_is_retransmitted(root: Path, payload: bytes) -> None:
    server = TftpServer(root=root, timeout=0.2, retries=2)
    server.start()
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(5)
            sock.sendto(_request("images/payload.bin"), ("127.0.0.1", server.bound_port))
            first, again = sock.recv(70000), sock.recv(70000)
            assert first == again and first[:4] == b"\x00\x03\x00\x01"
    finally:
        server.stop()


def test_stop_ends_transfers_in_progress(root: Path, payload: bytes) -> None:
    server = TftpServer(root=root, timeout=30)
    server.start()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5)
        sock.sendto(_request("images/payload.bin"), ("127.0.0.1", server.bound_port))
        assert sock.recv(70000)[:4] == b"\x00\x03\x00\x01"  # a transfer thread now waits for our ACK
        assert server._active_transfers()
        server.stop(timeout=5)
    assert not server.running and not server._active_transfers()


def test_malformed_and_unexpected_packets_get_errors(tftp: Tftp) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5)
        for packet, message in (
            (b"\x00\x01no-terminator", b"malformed request"),
            (b"\x00\x04\x00\x01", b"expected a read request"),
            (b"\x00\x01file\x00mail\x00", b"unsupported mode 'mail'"),
        ):
            sock.sendto(packet, ("127.0.0.1", tftp.get_port()))
            reply = sock.recv(70000)
            assert reply[:4] in (b"\x00\x05\x00\x04",) and message in reply, reply


def _flood(port: int, request: bytes, flooding: threading.Event, done: threading.Event) -> None:
    """Send ``request`` to ``port`` again and again until ``done``; ``flooding`` is set after the first."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        while not done.is_set():
            sock.sendto(request, ("127.0.0.1", port))
            flooding.set()


def test_stop_waits_for_transfers_started_while_stopping(root: Path, payload: bytes) -> None:
    """Requests keep arriving while stop() runs: every transfer the listener started has ended when it returns."""
    request = _request("images/payload.bin")
    for _ in range(30):
        server = TftpServer(root=root, timeout=30)
        server.start()
        flooding, done = threading.Event(), threading.Event()
        sender = threading.Thread(target=_flood, args=(server.bound_port, request, flooding, done), daemon=True)
        sender.start()
        try:
            assert flooding.wait(5)
            server.stop(timeout=5)
        finally:
            done.set()
            sender.join(5)
        assert not server._active_transfers()


@pytest.mark.parametrize(
    ("config", "problem"),
    [
        ({"timeout": 0}, "'timeout' is 0"),
        ({"retries": -1}, "'retries' is -1"),
        ({"max_transfers": 0}, "'max_transfers' is 0; give a bound > 0"),
        ({"max_transfers_per_host": 0}, "'max_transfers_per_host' is 0"),
        ({"max_transfer_time": 0}, "'max_transfer_time' is 0"),
    ],
)
def test_bad_retransmission_config_fails_at_construction(root: Path, config: dict, problem: str) -> None:
    """A timeout <= 0 would make a transfer wait for an ACK for ever (poll with a negative timeout)."""
    with pytest.raises(ConfigurationError, match=problem):
        Tftp(root_dir=str(root), **config)


@contextlib.contextmanager
def _one_free_fd() -> Iterator[None]:
    """A soft RLIMIT_NOFILE that lets the process open exactly one more file (restored on exit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    open_fds = {int(fd) for fd in os.listdir("/proc/self/fd")}
    free = [n for n in range(soft) if n not in open_fds][:2]
    resource.setrlimit(resource.RLIMIT_NOFILE, (free[1], hard))  # new fds must be below it: only free[0] is
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_start_that_fails_for_want_of_fds_leaves_nothing_open(root: Path) -> None:
    """The listening socket is bound, then its wake-up pair cannot be made (EMFILE): the socket is closed again."""
    server = TftpServer(root=root)
    before = sorted(os.listdir("/proc/self/fd"))
    with _one_free_fd(), pytest.raises(OSError, match="Too many open files"):
        server.start()
    assert sorted(os.listdir("/proc/self/fd")) == before, "a socket of the failed start is still open"
    assert not server.running and server.bound_port == 0
    server.start()
    try:
        assert server.running
    finally:
        server.stop()


def test_a_request_that_gets_no_thread_is_refused_and_the_server_keeps_serving(root: Path, payload: bytes) -> None:
    """No thread for a transfer (a stack no memory can hold): the peer is told, and the next request is served."""
    server = TftpServer(root=root)
    server.start()
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(10)
            default = threading.stack_size(1 << 42)
            try:
                sock.sendto(_request("images/payload.bin"), ("127.0.0.1", server.bound_port))
                refusal = sock.recv(70000)
            finally:
                threading.stack_size(default)
            assert refusal.startswith(error_packet(ErrorCode.NOT_DEFINED, "server busy: no thread")[:-1]), refusal
            assert not server._active_transfers()
            assert _fetch(server.bound_port, "images/payload.bin") == payload
    finally:
        server.stop()


# what an unauthenticated peer can hold ----------------------------------------------------------


def _send_requests(sock: socket.socket, port: int, count: int, **options: int) -> tuple[list[bytes], dict[int, bytes]]:
    """Send ``count`` read requests of the payload; the listening port's replies (refusals), and the first
    packet (OACK or DATA) of each transfer that started, by the transfer's port.

    A transfer resends its first packet every ``timeout`` until acknowledged: a resend is not another
    reply, so a test thread that is late to read (a loaded machine) counts the same. Requests go in
    batches of 50, so the replies never overflow the socket's receive buffer.
    """
    request = _request("images/payload.bin", **options)
    refusals: list[bytes] = []
    transfers: dict[int, bytes] = {}
    for start in range(0, count, 50):
        batch = min(50, count - start)
        for _ in range(batch):
            sock.sendto(request, ("127.0.0.1", port))
        while len(refusals) + len(transfers) < start + batch:
            packet, peer = sock.recvfrom(70000)
            if peer[1] == port:
                refusals.append(packet)
            else:
                transfers.setdefault(peer[1], packet)
    return refusals, transfers


def _board_download(port: int, out: Path) -> bytes:
    """A download by tftpy from another loopback address (127.0.0.2), as a board elsewhere on the lab net."""
    import tftpy

    tftpy.TftpClient("127.0.0.1", port, localip="127.0.0.2").download("images/payload.bin", str(out), timeout=5)
    return out.read_bytes()


def test_never_acknowledged_requests_hold_a_few_transfers_per_host(root: Path, payload: bytes, tmp_path: Path) -> None:
    """200 read requests asking for timeout 255 and never acknowledged: 8 transfers, the rest told "busy"."""
    server = TftpServer(root=root, timeout=5)  # its transfers live 30 s: all of the test, however slow the machine
    server.start()
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(10)
            busy, transfers = _send_requests(sock, server.bound_port, 200, timeout=255, blksize=1468)
            oacks = list(transfers.values())
            assert (len(oacks), len(busy)) == (8, 192)
            assert all(oack[:2] == b"\x00\x06" for oack in oacks) and all(p[:4] == b"\x00\x05\x00\x00" for p in busy)
            assert b"max_transfers_per_host" in busy[0]
            assert all(b"timeout" not in oack for oack in oacks), "a 255 s timeout was acknowledged"
            assert len(server._active_transfers()) == 8
            assert server.refused == 192
            assert _board_download(server.bound_port, tmp_path / "board") == payload
    finally:
        server.stop()
    assert not server._active_transfers()


def test_transfers_are_capped_in_total(root: Path, payload: bytes) -> None:
    server = TftpServer(root=root, timeout=5, max_transfers=4, max_transfers_per_host=100)
    server.start()
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(10)
            busy, transfers = _send_requests(sock, server.bound_port, 10)
            assert len(transfers) == 4
            assert len(busy) == 6 and all(b"(max_transfers)" in packet for packet in busy), busy
    finally:
        server.stop()


def test_a_transfer_ends_after_max_transfer_time(root: Path, payload: bytes) -> None:
    """A peer that never acknowledges is dropped after max_transfer_time, however many retries are left."""
    server = TftpServer(root=root, timeout=0.5, retries=1000, max_transfer_time=1)
    server.start()
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(10)
            sock.sendto(_request("images/payload.bin"), ("127.0.0.1", server.bound_port))
            packets = [sock.recv(70000)]
            while packets[-1][:2] == b"\x00\x03" and len(packets) < 100:
                packets.append(sock.recv(70000))
            assert packets[-1] == error_packet(ErrorCode.NOT_DEFINED, "transfer took longer than 1 s; abandoned")
            assert 2 <= len(packets) <= 10, "the block was resent every 0.5 s until the limit"
    finally:
        server.stop()


def test_a_flood_under_an_fd_limit_leaves_the_session_and_boards_served(
    root: Path, payload: bytes, tmp_path: Path
) -> None:
    """600 unacknowledged requests with a soft limit of 200 free fds: gRPC calls and a board's download still work."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with serve(Tftp(root_dir=str(root), timeout=5)) as client:  # transfers live 30 s, all of the flood
        client.start()
        port = client.get_port()
        resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 200, hard))
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.settimeout(10)
                busy, transfers = _send_requests(sock, port, 600, timeout=255)
                assert (len(transfers), len(busy)) == (8, 600 - 8)
                assert client.get_port() == port
                assert _board_download(port, tmp_path / "board") == payload
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
            client.stop()
