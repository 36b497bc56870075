"""The HTTP file server against real clients: requests, curl and raw HTTP/1.1."""

from __future__ import annotations

import contextlib
import http.client
import logging
import os
import resource
import select
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from tests.helpers.drivers import started

from jumpstarter_drivers.core import ConfigurationError, DriverError, serve
from jumpstarter_drivers.http import FileServer, HttpServer, HttpServerClient

needs_curl = pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")


@pytest.fixture
def payload_size() -> int:
    """3 MiB: a download spans many socket buffers and ranges start past the first MiB."""
    return 3 << 20


@pytest.fixture
def server(root: Path) -> Iterator[HttpServer]:
    with started(HttpServer(root_dir=str(root))) as driver:
        yield driver


def test_get_head_and_content_length(server: HttpServer, payload: bytes) -> None:
    url = f"{server.get_url()}/images/payload.bin"
    response = requests.get(url, timeout=10)
    assert response.status_code == 200
    assert response.headers["Content-Length"] == str(len(payload))
    assert response.headers["Accept-Ranges"] == "bytes"
    assert response.content == payload
    head = requests.head(url, timeout=10)
    assert head.status_code == 200 and head.headers["Content-Length"] == str(len(payload)) and head.content == b""


@pytest.mark.parametrize(
    ("header", "first", "last"),
    [
        ("bytes=0-0", 0, 0),
        ("bytes=100-1099", 100, 1099),
        ("bytes=1000-", 1000, (3 << 20) - 1),
        ("bytes=-512", (3 << 20) - 512, (3 << 20) - 1),
        ("bytes=10-99999999", 10, (3 << 20) - 1),
    ],
)
def test_ranges(server: HttpServer, payload: bytes, header: str, first: int, last: int) -> None:
    response = requests.get(f"{server.get_url()}/images/payload.bin", headers={"Range": header}, timeout=10)
    assert response.status_code == 206
    assert response.headers["Content-Range"] == f"bytes {first}-{last}/{len(payload)}"
    assert response.headers["Content-Length"] == str(last - first + 1)
    assert response.content == payload[first : last + 1]


def test_unsatisfiable_range_is_416(server: HttpServer, payload: bytes) -> None:
    response = requests.get(f"{server.get_url()}/images/payload.bin", headers={"Range": "bytes=99999999-"}, timeout=10)
    assert response.status_code == 416
    assert response.headers["Content-Range"] == f"bytes */{len(payload)}"


def test_stale_if_range_gets_the_whole_file(server: HttpServer, payload: bytes) -> None:
    headers = {"Range": "bytes=0-9", "If-Range": "Mon, 01 Jan 2001 00:00:00 GMT"}
    response = requests.get(f"{server.get_url()}/images/payload.bin", headers=headers, timeout=10)
    assert response.status_code == 200 and response.content == payload
    current = requests.head(f"{server.get_url()}/images/payload.bin", timeout=10).headers["Last-Modified"]
    headers["If-Range"] = current
    assert requests.get(f"{server.get_url()}/images/payload.bin", headers=headers, timeout=10).status_code == 206


@needs_curl
def test_curl_download_and_resume(server: HttpServer, payload: bytes, tmp_path: Path) -> None:
    url = f"{server.get_url()}/images/payload.bin"
    out = tmp_path / "rootfs.img"
    out.write_bytes(payload[:1_000_000])  # an interrupted download
    result = subprocess.run(
        ["curl", "-sS", "-f", "-C", "-", "-o", str(out), url], check=False, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    assert out.read_bytes() == payload
    result = subprocess.run(["curl", "-sS", "-f", "-r", "5-14", url], check=False, capture_output=True, timeout=30)
    assert result.returncode == 0 and result.stdout == payload[5:15]


def test_missing_files_and_directories_are_404(server: HttpServer, payload: bytes) -> None:
    for path in ("/missing", "/images", "/images/"):
        response = requests.get(server.get_url() + path, timeout=10)
        assert response.status_code == 404
        assert response.headers["Content-Length"] == str(len(response.content))


def test_a_name_too_long_is_404_not_a_traceback(
    server: HttpServer, payload: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    """The kernel refuses a name over 255 bytes (ENAMETOOLONG): no such file, and nothing worth an ERROR log."""
    for path in ("/" + "x" * 300, "/images/" + "x" * 300 + "/file"):
        assert _raw_get(server.get_port(), path) == 404
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], "an error was logged"


def _raw_get(port: int, path: str) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def test_traversal_is_refused(server: HttpServer, root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "secret").write_bytes(b"secret")
    (root / "escape").symlink_to(tmp_path / "secret")
    for path in ("/../secret", "/images/../../secret", "/%2e%2e/secret", "/..%2fsecret", "/escape", "/x%00y"):
        assert _raw_get(server.get_port(), path) == 403, path
    assert any("refused path" in r.getMessage() for r in caplog.records if r.levelname == "WARNING")


@needs_curl
def test_curl_path_as_is_traversal(server: HttpServer) -> None:
    result = subprocess.run(
        ["curl", "-s", "--path-as-is", "-o", "/dev/null", "-w", "%{http_code}", f"{server.get_url()}/../../etc/passwd"],
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.stdout == "403"


def test_keep_alive_serves_several_requests_on_one_connection(server: HttpServer, payload: bytes) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", server.get_port(), timeout=10)
    try:
        for first in (0, 4096, 1 << 20):
            connection.request("GET", "/images/payload.bin", headers={"Range": f"bytes={first}-{first + 99}"})
            response = connection.getresponse()
            assert response.status == 206 and response.read() == payload[first : first + 100]
        connection.request("GET", "/nope")
        response = connection.getresponse()
        assert response.status == 404 and response.read()
        connection.request("GET", "/images/payload.bin")
        assert connection.getresponse().read() == payload
    finally:
        connection.close()


def test_sparse_file_larger_than_memory_budget(server: HttpServer, root: Path) -> None:
    # A 6 GiB sparse file: served with sendfile, so neither side holds it; check the tail via a range.
    big = root / "huge.img"
    with big.open("wb") as file:
        file.truncate(6 << 30)
        file.seek((6 << 30) - 4)
        file.write(b"tail")
    head = requests.head(f"{server.get_url()}/huge.img", timeout=10)
    assert head.headers["Content-Length"] == str(6 << 30)
    response = requests.get(f"{server.get_url()}/huge.img", headers={"Range": "bytes=-8"}, timeout=10)
    assert response.status_code == 206 and response.content == b"\0\0\0\0tail"
    assert response.headers["Content-Range"] == f"bytes {(6 << 30) - 8}-{(6 << 30) - 1}/{6 << 30}"


def test_client_put_file_returns_a_working_url(root: Path, tmp_path: Path) -> None:
    source = tmp_path / "kernel"
    source.write_bytes(os.urandom(100_000))
    with serve(HttpServer(root_dir=str(root))) as client:
        assert isinstance(client, HttpServerClient)
        with pytest.raises(DriverError, match="the HTTP server is not running; call start"):
            client.get_url()
        client.start()
        url = client.put_file("boards/a b/kernel", source)
        assert url == f"http://127.0.0.1:{client.get_port()}/boards/a%20b/kernel"
        assert requests.get(url, timeout=10).content == source.read_bytes()
        assert client.storage.list("boards", recursive=True) == ["boards/a b/kernel"]
        client.stop()
        with pytest.raises(requests.ConnectionError):
            requests.get(url, timeout=10)


def test_stop_cuts_a_download_in_progress(root: Path, caplog: pytest.LogCaptureFixture) -> None:
    with (root / "huge.img").open("wb") as file:
        file.truncate(4 << 30)
    server = FileServer(root=root)
    server.start()
    with socket.create_connection(("127.0.0.1", server.bound_port), timeout=10) as sock:
        sock.sendall(b"GET /huge.img HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.1 200")  # the rest waits on our socket buffer
        caplog.set_level(logging.INFO, logger=server.log.name)
        server.stop(timeout=5)
        assert not server.running
        stop_messages = [r.getMessage() for r in caplog.records if r.name == server.log.name]
        assert not any("still running" in m for m in stop_messages), "the connection's thread outlived stop()"
        received = 0
        while data := sock.recv(1 << 20):
            received += len(data)
        assert received < 4 << 30


# what an unauthenticated peer can hold ----------------------------------------------------------


def _closed_by_server(sock: socket.socket, drips: int, pause: float) -> bytes | None:
    """Send one header byte every ``pause`` s (slowloris); what the server answered on closing, or None."""
    for _ in range(drips):
        readable, _, _ = select.select([sock], [], [], pause)
        if readable:
            answer = b""
            with contextlib.suppress(ConnectionResetError):
                while chunk := sock.recv(4096):
                    answer += chunk
            return answer
        try:
            sock.send(b"X")
        except (BrokenPipeError, ConnectionResetError):
            return b""
    return None


def test_a_slowloris_connection_is_cut_after_header_timeout(root: Path) -> None:
    """A byte every 0.2 s keeps a per-read timeout happy for ever; the whole header has a deadline."""
    server = FileServer(root=root, header_timeout=1)
    server.start()
    try:
        with socket.create_connection(("127.0.0.1", server.bound_port), timeout=10) as sock:
            sock.sendall(b"GET /images/payload.bin HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            assert _closed_by_server(sock, drips=60, pause=0.2) is not None, "still open after 12 s of dripping"
    finally:
        server.stop()


def test_an_idle_keep_alive_connection_is_closed(root: Path, payload: bytes) -> None:
    server = FileServer(root=root, header_timeout=1)
    server.start()
    try:
        with socket.create_connection(("127.0.0.1", server.bound_port), timeout=10) as sock:
            sock.sendall(b"HEAD /images/payload.bin HTTP/1.1\r\nHost: x\r\n\r\n")
            assert sock.recv(4096).startswith(b"HTTP/1.1 200")
            sock.settimeout(15)  # generous: the server closes after about 1 s
            assert sock.recv(4096) == b""
    finally:
        server.stop()


def test_a_request_with_headers_over_the_budget_is_not_served(root: Path, payload: bytes) -> None:
    """200 kB of headers, well within the standard library's limits (100 lines of 64 KiB), but over 64 KiB."""
    server = FileServer(root=root)
    server.start()
    try:
        with socket.create_connection(("127.0.0.1", server.bound_port), timeout=10) as sock:
            filler = b"".join(b"X-Filler-%d: " % n + b"y" * 50_000 + b"\r\n" for n in range(4))
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                sock.sendall(b"HEAD /images/payload.bin HTTP/1.1\r\nHost: x\r\n" + filler + b"\r\n")
            try:
                answer = sock.recv(4096)
            except ConnectionResetError:
                answer = b""
            assert answer == b"", answer[:100]
    finally:
        server.stop()


def _open_slow(port: int, count: int) -> list[socket.socket]:
    socks = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
        socks.append(sock)
    return socks


def _board_get(port: int, path: str) -> tuple[int, bytes]:
    """A GET from 127.0.0.2, as a board elsewhere on the lab network."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10, source_address=("127.0.0.2", 0))
    try:
        connection.request("GET", path)
        reply = connection.getresponse()
        return reply.status, reply.read()
    finally:
        connection.close()


def test_connections_per_host_are_capped_and_a_board_still_gets_its_file(root: Path, payload: bytes) -> None:
    server = FileServer(root=root, header_timeout=120)
    server.start()
    socks = _open_slow(server.bound_port, 50)
    try:
        deadline, refused = time.monotonic() + 30, []
        while len(refused) < 50 - 16 and time.monotonic() < deadline:
            refused = select.select(socks, [], [], 0.5)[0]
        answers = {sock.recv(4096).split(b"\r\n")[0] for sock in refused}
        assert (len(refused), answers) == (50 - 16, {b"HTTP/1.1 503 Service Unavailable"})
        assert server.refused == 50 - 16
        assert _board_get(server.bound_port, "/images/payload.bin") == (200, payload)
    finally:
        for sock in socks:
            sock.close()
        server.stop()


ATTACKER = """
import socket, sys, time
port, count = int(sys.argv[1]), int(sys.argv[2])
held, failed, deadline = [], 0, time.monotonic() + 20
while len(held) + failed < count and time.monotonic() < deadline:
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=2)
        sock.sendall(b"GET / HTTP/1.1\\r\\nHost: x\\r\\n")
        held.append(sock)
    except OSError:
        failed += 1
print(len(held), failed, flush=True)
sys.stdin.readline()
"""


def test_a_flood_under_an_fd_limit_leaves_the_session_and_boards_served(root: Path, payload: bytes) -> None:
    """600 slow connections from another process while only 200 fds are free: GETs and gRPC calls still work."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with serve(HttpServer(root_dir=str(root))) as client:
        client.start()
        port = int(client.get_url().rsplit(":", 1)[1])
        resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 200, hard))
        attacker = subprocess.Popen(
            [sys.executable, "-c", ATTACKER, str(port), "600"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        try:
            assert select.select([attacker.stdout], [], [], 60)[0], "the attacker did not finish within 60 s"
            held, failed = map(int, attacker.stdout.readline().split())
            assert held + failed == 600
            assert client.get_url().endswith(f":{port}")
            assert _board_get(port, "/images/payload.bin") == (200, payload)
        finally:
            attacker.stdin.close()
            attacker.wait(10)
            attacker.stdout.close()
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
            client.stop()


def test_bad_bounds_fail_at_construction(root: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"HttpServer: config field 'max_connections' is 0; give a bound > 0"):
        HttpServer(root_dir=str(root), max_connections=0)


def test_a_reply_nobody_reads_is_cut_after_send_timeout(root: Path) -> None:
    with (root / "big.img").open("wb") as file:
        file.truncate(256 << 20)
    server = FileServer(root=root, send_timeout=1)
    server.start()
    try:
        with socket.create_connection(("127.0.0.1", server.bound_port), timeout=10) as sock:
            sock.sendall(b"GET /big.img HTTP/1.1\r\nHost: x\r\n\r\n")
            assert sock.recv(100).startswith(b"HTTP/1.1 200")  # then we read nothing
            deadline = time.monotonic() + 30  # generous: the server gives up after about 1 s
            while len(server._server.connections) and time.monotonic() < deadline:
                time.sleep(0.05)  # polling a count with a deadline
            assert not len(server._server.connections), "the unread reply still holds its connection after 30 s"
            received = 0
            with contextlib.suppress(ConnectionResetError):
                while data := sock.recv(1 << 20):
                    received += len(data)
            assert received < 256 << 20
    finally:
        server.stop()


def test_a_reply_read_a_little_at_a_time_is_cut_after_its_deadline(root: Path) -> None:
    """A peer reading 512 bytes every 10 ms never lets send_timeout expire; the reply has a deadline
    of send_timeout plus its size at min_send_rate (here 1 + 64 MiB / 32 MiB/s = 3 s)."""
    with (root / "big.img").open("wb") as file:
        file.truncate(64 << 20)
    server = FileServer(root=root, send_timeout=1, min_send_rate=32 << 20)
    server.start()
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.settimeout(10)
            sock.connect(("127.0.0.1", server.bound_port))
            sock.sendall(b"GET /big.img HTTP/1.1\r\nHost: x\r\n\r\n")
            received, closed, give_up = 0, False, time.monotonic() + 20  # generous: cut after about 3 s
            while not closed and time.monotonic() < give_up:
                try:
                    data = sock.recv(512)
                except ConnectionResetError:
                    data = b""
                received += len(data)
                closed = not data
                time.sleep(0.01)  # the pace of the slow reader, not a synchronisation
            assert closed, f"still sending after 20 s ({received} bytes read)"
            assert received < 64 << 20
    finally:
        server.stop()


def test_min_send_rate_must_be_positive(root: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"HttpServer: config field 'min_send_rate' is 0; give a bound > 0"):
        HttpServer(root_dir=str(root), min_send_rate=0)


def test_a_start_that_cannot_make_its_thread_leaves_nothing_open(root: Path) -> None:
    """No thread for serve_forever (a stack no memory can hold): the socket is closed, and stop() returns."""
    server = FileServer(root=root)
    before = sorted(os.listdir("/proc/self/fd"))
    default = threading.stack_size(1 << 42)
    try:
        with pytest.raises(RuntimeError, match="can't start new thread"):
            server.start()
    finally:
        threading.stack_size(default)
    assert sorted(os.listdir("/proc/self/fd")) == before, "the listening socket of the failed start is still open"
    assert server.bound_port == 0
    stopping = threading.Thread(target=server.stop, name="stop-after-failed-start", daemon=True)
    stopping.start()
    stopping.join(30)  # generous: it returns at once unless it waits for a serve_forever that never ran
    assert not stopping.is_alive(), "stop() waits for a server loop that never started"
    server.start()
    try:
        assert _raw_get(server.bound_port, "/missing") == 404
    finally:
        server.stop()
