"""`jumpstarter serve`: unix and TCP+TLS with a passphrase, clean stop on signals, one-line errors."""

from __future__ import annotations

import contextlib
import signal
import socket
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from jumpstarter_drivers.cli.certs import write_self_signed
from jumpstarter_drivers.cli.process import ServeFailed, ServeProcess
from jumpstarter_drivers.core.access import connect
from jumpstarter_drivers.core.errors import ExporterUnreachable, Unauthenticated
from jumpstarter_drivers.power import PowerReading

from .conftest import PASSPHRASE


def tls_options(tls_files: tuple[Path, Path], passphrase_file: Path) -> list[str]:
    cert, key = tls_files
    return ["--listen", "127.0.0.1:0", "--tls-cert", str(cert), "--tls-key", str(key),
            "--passphrase-file", str(passphrase_file)]


def port_of(address: str) -> int:
    return int(address.rpartition(":")[2])


def test_serve_on_a_private_unix_socket(lab_file: Path) -> None:
    with ServeProcess(lab_file) as lab:
        socket_path = Path(lab.address)
        assert socket_path.is_socket()
        assert socket_path.parent.stat().st_mode & 0o077 == 0, "the socket's directory is the user's alone"
        with connect(lab.address) as client:
            client.power.on()
            assert list(client.power.read())[-1] == PowerReading(voltage=5.0, current=2.0)
            client.board.power.off()
        assert lab.stop() == 0
    assert not socket_path.exists()


def test_serve_on_a_given_unix_socket(lab_file: Path, tmp_path: Path) -> None:
    path = tmp_path / "lab.sock"
    with socket.socket(socket.AF_UNIX) as killed_exporter:
        killed_exporter.bind(str(path))  # a stale socket file, as a killed exporter leaves it
    with ServeProcess(lab_file, "--unix", str(path)) as lab:
        assert lab.address == str(path)
        with connect(path) as client:
            client.power.on()


def test_serve_unix_with_a_passphrase(lab_file: Path, passphrase_file: Path) -> None:
    with ServeProcess(lab_file, "--passphrase-file", str(passphrase_file)) as lab:
        with pytest.raises(Unauthenticated, match="missing passphrase"):
            connect(lab.address, passphrase="")
        with connect(lab.address, passphrase=PASSPHRASE) as client:
            client.power.on()


def test_serve_tcp_tls_with_passphrase(lab_file: Path, tls_files: tuple[Path, Path], passphrase_file: Path) -> None:
    cert, _ = tls_files
    with ServeProcess(lab_file, *tls_options(tls_files, passphrase_file)) as lab:
        assert lab.address.startswith("127.0.0.1:") and port_of(lab.address) > 0
        with connect(lab.address, ca=str(cert), passphrase=PASSPHRASE) as client:
            client.power.on()
            assert [str(r) for r in client.power.read()][-1] == "voltage=5.0 V  current=2.0 A  apparent_power=10.0 VA"
        with pytest.raises(Unauthenticated, match="missing passphrase"):
            connect(lab.address, ca=str(cert), passphrase="")
        with pytest.raises(Unauthenticated, match="wrong passphrase"):
            connect(lab.address, ca=str(cert), passphrase=PASSPHRASE + "!")
        with pytest.raises(ExporterUnreachable):
            connect(lab.address, passphrase=PASSPHRASE, timeout=2)  # the system's CAs do not know our certificate
        with pytest.raises(ExporterUnreachable):
            connect(lab.address, insecure=True, passphrase=PASSPHRASE, timeout=2)  # plaintext to a TLS port


def test_passphrase_from_the_environment(
    lab_file: Path, tls_files: tuple[Path, Path], passphrase_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cert, _ = tls_files
    monkeypatch.setenv("JMP_GRPC_PASSPHRASE", PASSPHRASE)
    monkeypatch.setenv("JMP_GRPC_CA", str(cert))
    with ServeProcess(lab_file, *tls_options(tls_files, passphrase_file)) as lab, connect(lab.address) as client:
        client.power.on()


def test_serve_tcp_plaintext_when_both_sides_say_so(lab_file: Path) -> None:
    with ServeProcess(lab_file, "--listen", "127.0.0.1:0", "--insecure") as lab:
        with connect(lab.address, insecure=True) as client:
            client.power.on()
        with pytest.raises(ExporterUnreachable):
            connect(lab.address, timeout=2)  # TLS expected by the client, plaintext served


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_cleanly_and_releases_the_port(lab_file: Path, signum: int) -> None:
    with ServeProcess(lab_file, "--listen", "127.0.0.1:0", "--insecure") as lab:
        port = port_of(lab.address)
        with connect(lab.address, insecure=True) as client:
            client.power.on()
        assert lab.stop(signum) == 0
        log = lab.log()
    assert "Traceback" not in log
    assert "stopped" in log
    with socket.socket() as again:
        # What a restarted exporter does; fails while anything still listens on the port.
        again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        again.bind(("127.0.0.1", port))
        again.listen()


def test_signal_while_a_client_streams(lab_file: Path) -> None:
    with ServeProcess(lab_file) as lab, connect(lab.address) as client, client.serial.stream() as console:
        console.send(b"ping")
        assert console.read_exactly(4, timeout=5) == b"ping"
        assert lab.stop() == 0


def test_log_level_filters_driver_logs(lab_file: Path) -> None:
    with ServeProcess(lab_file, "--log-level", "warning") as lab:
        with connect(lab.address) as client:
            client.power.on()
        lab.stop()
        assert "power on" not in lab.log()
    with ServeProcess(lab_file, "--log-level", "debug") as lab:
        with connect(lab.address) as client:
            client.power.on()
        lab.stop()
        assert "power on" in lab.log()


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


BAD_YAML = "export:\n  power: [\n"
MISSING_DRIVER = "export:\n  power: {type: no_such_package.driver.Power}\n"


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("broken yaml", "not valid YAML"),
        ("missing driver class", "no_such_package.driver.Power"),
        ("missing file", "cannot read exporter configuration"),
        ("port in use", "Address already in use"),
        ("missing tls files", "cannot read the TLS certificate"),
        ("tls file is a directory", "Is a directory"),
        ("tls file not pem", "not a PEM file"),
        ("key of another certificate", "is the private key of"),
        ("listen without tls", "--listen needs --tls-cert and --tls-key"),
        ("tls without listen", "apply to --listen"),
        ("cert without key", "go together"),
        ("unix and listen", "not both"),
        ("bad listen address", "expected HOST:PORT"),
        ("empty passphrase file", "is empty"),
        ("unknown host", "cannot listen on"),
        ("unix path is a file", "is not a socket"),
        ("unix socket in use", "another process serves on this socket"),
    ],
)
def test_serve_errors_are_one_line(
    case: str, expected: str, jumpstarter, lab_file: Path, tls_files: tuple[Path, Path], tmp_path: Path,
    busy_port: int,
) -> None:
    cert, key = tls_files
    broken = tmp_path / "broken.yaml"
    broken.write_text(BAD_YAML)
    missing = tmp_path / "missing.yaml"
    missing.write_text(MISSING_DRIVER)
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("hello\n")
    empty = tmp_path / "empty"
    empty.write_text("\n")
    other_key = write_self_signed(tmp_path / "other", ["127.0.0.1"])[1] if "another" in case else key
    lab = str(lab_file)
    listen = ["--listen", "127.0.0.1:0"]
    live_socket = tmp_path / "live.sock"
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(live_socket))
    listener.listen()
    args = {
        "broken yaml": [str(broken)],
        "missing driver class": [str(missing)],
        "missing file": [str(tmp_path / "nope.yaml")],
        "port in use": [lab, "--listen", f"127.0.0.1:{busy_port}", "--insecure"],
        "missing tls files": [lab, *listen, "--tls-cert", str(tmp_path / "c.pem"), "--tls-key", str(tmp_path / "k.pem")],
        "tls file is a directory": [lab, *listen, "--tls-cert", str(tmp_path), "--tls-key", str(key)],
        "tls file not pem": [lab, *listen, "--tls-cert", str(not_pem), "--tls-key", str(key)],
        "key of another certificate": [lab, *listen, "--tls-cert", str(cert), "--tls-key", str(other_key)],
        "listen without tls": [lab, *listen],
        "tls without listen": [lab, "--tls-cert", str(cert), "--tls-key", str(key)],
        "cert without key": [lab, *listen, "--tls-cert", str(cert)],
        "unix and listen": [lab, *listen, "--insecure", "--unix", str(tmp_path / "s")],
        "bad listen address": [lab, "--listen", "9000", "--insecure"],
        "empty passphrase file": [lab, *listen, "--insecure", "--passphrase-file", str(empty)],
        "unknown host": [lab, "--listen", "no-such-host.invalid:9000", "--insecure"],
        "unix path is a file": [lab, "--unix", str(broken)],
        "unix socket in use": [lab, "--unix", str(live_socket)],
    }[case]
    try:
        result = jumpstarter("serve", *args, timeout=30)
    finally:
        listener.close()
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert expected in lines[0]
    assert result.stdout == ""


def test_serve_process_reports_a_lab_that_does_not_start(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text(BAD_YAML)
    with pytest.raises(ServeFailed, match=r"exited with status 1: Error: .*not valid YAML"), ServeProcess(broken):
        pass


def test_serve_process_that_cannot_start_leaves_no_log_file(lab_file: Path, tmp_path: Path) -> None:
    served = ServeProcess(lab_file)
    served.command[0] = str(tmp_path / "no-such-python")
    with pytest.raises(FileNotFoundError):
        served.start()
    assert not served.log_path.exists()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def http_lab_served(tmp_path: Path, port: int) -> Iterator[ServeProcess]:
    """A lab with an HTTP server on ``port``, started, after one download from it."""
    lab = tmp_path / "lab.yaml"
    lab.write_text(f"export:\n  http: {{type: HttpServer, config: {{root_dir: {tmp_path}, port: {port}}}}}\n")
    (tmp_path / "hello.txt").write_text("hello")
    with ServeProcess(lab) as served:
        with connect(served.address) as client:
            client.http.start()
            url = client.http.get_url()
        with urllib.request.urlopen(f"{url}/hello.txt", timeout=10) as response:
            assert response.read() == b"hello"
        yield served


def test_signal_closes_every_driver(tmp_path: Path) -> None:
    """A driver's own server (HTTP here) is stopped when serve stops: nothing listens on its port."""
    port = free_port()
    with http_lab_served(tmp_path, port) as served:
        assert served.stop() == 0
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
