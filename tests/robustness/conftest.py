"""An exporter in its own process (`jumpstarter serve`) hosting the abused :class:`Target`."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from jumpstarter_drivers.cli.certs import write_self_signed
from jumpstarter_drivers.cli.process import ServeProcess
from jumpstarter_drivers.core.access import connect
from jumpstarter_drivers.core.client import DriverClient

ROOT = Path(__file__).resolve().parents[2]
LAB = "export:\n  target: {type: tests.robustness.lab_drivers.Target}\n"


@pytest.fixture(scope="module")
def lab_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("robust") / "lab.yaml"
    path.write_text(LAB)
    return path


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return write_self_signed(tmp_path_factory.mktemp("tls"), ["127.0.0.1"])


@pytest.fixture(scope="module")
def serve_lab(lab_file: Path) -> Callable[..., ServeProcess]:
    """``serve_lab(*options)``: a ServeProcess of the lab (use it as a context manager)."""
    python_path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)

    def make(*options: str) -> ServeProcess:
        return ServeProcess(lab_file, "--log-level", "warning", *options, env={"PYTHONPATH": python_path})

    return make


@pytest.fixture(scope="module")
def exporter(serve_lab: Callable[..., ServeProcess]) -> Iterator[ServeProcess]:
    """The lab served on a private unix socket for the whole module."""
    with serve_lab() as served:
        yield served
        assert served.process is not None and served.process.poll() is None, "the exporter died:\n" + served.log()


@pytest.fixture
def client(exporter: ServeProcess) -> Iterator[DriverClient]:
    """A client of the Target node."""
    with connect(exporter.address) as root:
        yield root.target


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Poll ``predicate`` until true; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.02)  # polling a condition with a deadline


def state(client: DriverClient) -> dict:
    return client.call("state")


def idle(client: DriverClient) -> bool:
    """Nothing of the Target is held by anyone."""
    now = state(client)
    return not now["port_busy"] and now["streaming"] == 0 and now["uploading"] == 0
