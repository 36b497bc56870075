"""Fixtures of the CLI tests: a lab file, TLS files, a passphrase file, and a way to run `jumpstarter`."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from jumpstarter_drivers.cli.certs import write_self_signed
from jumpstarter_drivers.cli.process import ServeProcess
from jumpstarter_testing.lab import VIRTUAL_LAB

LAB = """\
export:
  power:
    type: MockPower
    description: bench supply
  serial:
    type: PySerial
    config: {url: "loop://"}
  board:
    description: the board on the desk
    children:
      power: {type: SyncMockPower}
"""

PASSPHRASE = "correct horse battery staple"

Run = Callable[..., subprocess.CompletedProcess]


@pytest.fixture(scope="session")
def lab_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A lab with a power supply, a loop-back serial console and a board with its own power."""
    path = tmp_path_factory.mktemp("lab") / "lab.yaml"
    path.write_text(LAB)
    return path


@pytest.fixture(scope="module")
def virtual_lab() -> Iterator[ServeProcess]:
    """The built-in virtual lab, served by `jumpstarter serve` on a unix socket."""
    with ServeProcess(VIRTUAL_LAB) as served:
        yield served


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and localhost, and its key."""
    return write_self_signed(tmp_path_factory.mktemp("tls"), ["127.0.0.1", "localhost"])


@pytest.fixture(scope="session")
def passphrase_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A file holding :data:`PASSPHRASE`."""
    path = tmp_path_factory.mktemp("secret") / "passphrase"
    path.write_text(PASSPHRASE + "\n")
    return path


@pytest.fixture
def jumpstarter() -> Run:
    """Run ``jumpstarter ARGS...`` in a child process; returns the completed process (text output).

    ``env`` entries are added to (``None`` removes them from) this process's environment.
    """

    def run(*args: str, env: dict[str, str | None] | None = None, input: str | None = None, timeout: float = 60):
        environ = dict(os.environ)
        environ.pop("GRPC_VERBOSITY", None)  # the command's own default is under test
        for name, value in (env or {}).items():
            if value is None:
                environ.pop(name, None)
            else:
                environ[name] = value
        return subprocess.run(
            [sys.executable, "-m", "jumpstarter_drivers.cli", *args],
            env=environ, input=input, capture_output=True, text=True, timeout=timeout, check=False,
        )

    return run
