"""Jumpstarter 0.9.0 and this toolkit drive each other over TCP, with TLS or plaintext, and a passphrase."""

from __future__ import annotations

import base64
import contextlib
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import grpc
import pytest
from anyio.from_thread import start_blocking_portal

from jumpstarter_drivers.cli.certs import write_self_signed
from jumpstarter_drivers.cli.process import ServeProcess
from jumpstarter_drivers.core.access import connect
from jumpstarter_drivers.core.errors import Unauthenticated
from jumpstarter_drivers.core.processes import stop_process
from jumpstarter_drivers.core.session import Session
from jumpstarter_drivers.power import MockPower, PowerClient, PowerReading

jumpstarter_client = pytest.importorskip("jumpstarter.client.client", reason="jumpstarter==0.9.0 is not installed")
TLSConfig = pytest.importorskip("jumpstarter.config.tls").TLSConfigV1Alpha1
pytest.importorskip("jumpstarter_driver_power.driver", reason="jumpstarter-driver-power==0.9.0 is not installed")

# Jumpstarter 0.9.0's session calls context.abort() without awaiting it when checking its status.
pytestmark = pytest.mark.filterwarnings("ignore:coroutine .*abort. was never awaited:RuntimeWarning")

PASSPHRASE = "shared lab secret"
STANDALONE = Path(__file__).with_name("jumpstarter_standalone.py")
READINGS = [(0.0, 0.0), (5.0, 2.0)]


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return write_self_signed(tmp_path_factory.mktemp("tls"), ["127.0.0.1"])


@contextlib.contextmanager
def jumpstarter_client_at(address: str, *, ca: Path | None, passphrase: str) -> Iterator[object]:
    """Jumpstarter's own client of the session at ``address`` (TLS trusting ``ca``, or plaintext)."""
    tls = {"insecure": True} if ca is None else {"tls_config": TLSConfig(ca=base64.b64encode(ca.read_bytes()).decode())}
    with start_blocking_portal() as portal, ExitStack() as stack:
        connecting = jumpstarter_client.client_from_path(
            address, portal, stack, allow=["jumpstarter_driver_power.*"], unsafe=False, passphrase=passphrase, **tls
        )
        with portal.wrap_async_context_manager(connecting) as client:
            yield client


def drive_with_jumpstarter(power: object) -> list[tuple[float, float]]:
    assert type(power).__module__ == "jumpstarter_driver_power.client", type(power)
    power.on()
    power.off()
    return [(r.voltage, r.current) for r in power.read()]


@pytest.mark.parametrize("use_tls", [True, False], ids=["tls", "plaintext"])
def test_jumpstarter_client_drives_our_session_over_tcp(tls_files: tuple[Path, Path], use_tls: bool) -> None:
    cert, key = tls_files
    tls = {"tls_cert": cert, "tls_key": key} if use_tls else {"insecure": True}
    with Session(root_device=MockPower()) as session, session.serve_tcp(passphrase=PASSPHRASE, **tls) as port:
        address = f"127.0.0.1:{port}"
        with jumpstarter_client_at(address, ca=cert if use_tls else None, passphrase=PASSPHRASE) as power:
            assert drive_with_jumpstarter(power) == READINGS
        with pytest.raises(grpc.aio.AioRpcError) as refused, jumpstarter_client_at(
            address, ca=cert if use_tls else None, passphrase="not it"
        ):
            pass
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_jumpstarter_client_drives_our_serve_listen(tls_files: tuple[Path, Path], tmp_path: Path) -> None:
    cert, key = tls_files
    lab = tmp_path / "lab.yaml"
    lab.write_text("export:\n  power: {type: jumpstarter_driver_power.driver.MockPower}\n")
    secret = tmp_path / "passphrase"
    secret.write_text(PASSPHRASE)
    options = ["--listen", "127.0.0.1:0", "--tls-cert", str(cert), "--tls-key", str(key),
               "--passphrase-file", str(secret)]
    with ServeProcess(lab, *options) as served, jumpstarter_client_at(
        served.address, ca=cert, passphrase=PASSPHRASE
    ) as root:
        assert drive_with_jumpstarter(root.children["power"]) == READINGS


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def jumpstarter_standalone(tls_files: tuple[Path, Path] | None) -> Iterator[str]:
    """Jumpstarter's standalone exporter in a child process; yields its address once it accepts connections."""
    port = free_port()
    tls = [str(tls_files[0]), str(tls_files[1])] if tls_files else []
    # stderr goes to a file: a pipe nobody reads while the exporter runs could fill and stall it.
    with tempfile.TemporaryFile() as stderr:
        exporter = subprocess.Popen([sys.executable, str(STANDALONE), str(port), PASSPHRASE, *tls], stderr=stderr)
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    if exporter.poll() is not None:
                        stderr.seek(0)
                        pytest.fail(f"Jumpstarter's exporter exited: {stderr.read().decode(errors='replace')}")
                    assert time.monotonic() < deadline, "Jumpstarter's exporter did not listen within 30 s"
                    time.sleep(0.05)  # polling for the listener, with a deadline
            yield f"127.0.0.1:{port}"
        finally:
            stop_process(exporter)


@pytest.mark.parametrize("use_tls", [True, False], ids=["tls", "plaintext"])
def test_our_client_drives_jumpstarters_standalone_exporter(tls_files: tuple[Path, Path], use_tls: bool) -> None:
    cert, _ = tls_files
    options = {"ca": str(cert)} if use_tls else {"insecure": True}
    with jumpstarter_standalone(tls_files if use_tls else None) as address:
        with connect(address, passphrase=PASSPHRASE, **options) as power:
            assert isinstance(power, PowerClient), "Jumpstarter's client path maps to ours"
            power.on()
            power.off()
            assert list(power.read()) == [PowerReading(voltage=v, current=c) for v, c in READINGS]
        with pytest.raises(Unauthenticated, match="invalid or missing passphrase"):
            connect(address, passphrase="not it", **options)
        with pytest.raises(Unauthenticated):
            connect(address, passphrase="", **options)
