"""``jumpstarter serve`` in a child process, for scripts and tests that want the lab out of process.

.. code-block:: python

    from jumpstarter_drivers import connect

    with ServeProcess("lab.yaml") as lab, connect(lab.address) as client:
        client.power.on()
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Self

from ..core.errors import ConfigurationError, JumpstarterError


class ServeFailed(JumpstarterError):
    """``jumpstarter serve`` exited or said nothing before it served; the message holds its stderr."""


class ServeProcess:
    """Runs ``jumpstarter serve EXPORTER [OPTIONS]``; :attr:`address` is where it serves.

    Use as a context manager: entering waits (at most ``timeout`` seconds) until the lab serves,
    leaving stops it with SIGTERM and waits for it. Its stderr goes to :attr:`log_path`.
    """

    def __init__(
        self,
        exporter: str | os.PathLike,
        *options: str,
        env: dict[str, str] | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.command = [sys.executable, "-m", "jumpstarter_drivers.cli", "serve", os.fspath(exporter), *options]
        self.env = {**os.environ, **(env or {})}
        self.timeout = timeout
        self.process: subprocess.Popen | None = None
        self.address = ""
        # Open for the child's whole life; closed and removed in __exit__.
        self._log = tempfile.NamedTemporaryFile(prefix="jumpstarter-serve-", suffix=".log", delete=False)  # noqa: SIM115
        self.log_path = Path(self._log.name)

    @property
    def pid(self) -> int:
        """The child's process id."""
        if self.process is None:
            raise ConfigurationError("ServeProcess: not started; use it as a context manager or call start()")
        return self.process.pid

    def log(self) -> str:
        """What the child wrote on stderr so far."""
        return self.log_path.read_text(errors="replace")

    def start(self) -> Self:
        """Start the child and wait until it prints the address it serves on."""
        try:
            self.process = subprocess.Popen(self.command, stdout=subprocess.PIPE, stderr=self._log, env=self.env)
            self.address = self._read_address()
        except BaseException:
            self.stop(signal.SIGKILL)
            self._discard_log()
            raise
        return self

    def _read_address(self) -> str:
        assert self.process is not None and self.process.stdout is not None
        deadline = time.monotonic() + self.timeout
        line = b""
        while not line.endswith(b"\n"):
            remaining = deadline - time.monotonic()
            ready, _, _ = select.select([self.process.stdout], [], [], max(remaining, 0))
            if not ready:
                raise ServeFailed(f"jumpstarter serve did not serve within {self.timeout:g} s: {self.log()}")
            chunk = os.read(self.process.stdout.fileno(), 1)
            if not chunk:
                code = self.process.wait(self.timeout)
                raise ServeFailed(f"jumpstarter serve exited with status {code}: {self.log().strip()}")
            line += chunk
        return line.decode().strip()

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        """Send ``signum`` (unless it already exited) and return its exit status."""
        if self.process is None:
            return 0
        if self.process.poll() is None:
            self.process.send_signal(signum)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout)
            raise ServeFailed(f"jumpstarter serve did not stop within {timeout:g} s of signal {signum}") from None
        finally:
            if self.process.stdout is not None:
                self.process.stdout.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        try:
            self.stop()
        finally:
            self._discard_log()

    def _discard_log(self) -> None:
        self._log.close()
        self.log_path.unlink(missing_ok=True)
