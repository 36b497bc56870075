"""A private etcd member run as a child process: the single-host default store, and the tests' store.

>>> import tempfile
>>> with tempfile.TemporaryDirectory() as state, PrivateEtcd(state) as etcd:
...     etcd.endpoint.startswith("127.0.0.1:")
True
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Self

from ..core.errors import ConfigurationError
from ..core.processes import stop_process

logger = logging.getLogger(__name__)

#: Longest a fresh member may take to say it is ready.
START_TIMEOUT = 20.0


def member_command(
    binary: str, name: str, data_dir: Path, client_url: str, peer_url: str, initial_cluster: str
) -> list[str]:
    """The command line of one etcd member of a new cluster (``initial_cluster``: ``NAME=PEER_URL,...``)."""
    return [
        binary,
        "--name",
        name,
        "--data-dir",
        str(data_dir),
        "--listen-client-urls",
        client_url,
        "--advertise-client-urls",
        client_url,
        "--listen-peer-urls",
        peer_url,
        "--initial-advertise-peer-urls",
        peer_url,
        "--initial-cluster",
        initial_cluster,
        "--initial-cluster-state",
        "new",
        "--log-level",
        "error",
        "--logger",
        "zap",
    ]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (the kernel's pick for port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


class PrivateEtcd:
    """One etcd member on loopback ports with its data under ``state_dir/etcd``; a context manager.

    ``endpoint`` is ``127.0.0.1:PORT`` for :class:`~jumpstarter_drivers.controller.store.Store`.
    A member started again on the same directory finds its data (leases survive a restart).
    """

    def __init__(self, state_dir: str | os.PathLike, client_port: int = 0, peer_port: int = 0) -> None:
        self.state_dir = Path(state_dir)
        self.client_port = client_port
        self.peer_port = peer_port
        self.process: subprocess.Popen | None = None

    @property
    def data_dir(self) -> Path:
        return self.state_dir / "etcd"

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    def start(self) -> PrivateEtcd:
        """Start the member and wait until it answers (:data:`START_TIMEOUT`)."""
        binary = shutil.which("etcd")
        if binary is None:
            raise ConfigurationError(
                "the etcd command is needed for a controller without --etcd endpoints; install the Debian package "
                "etcd-server (./run does), or give --etcd HOST:PORT of a running etcd"
            )
        self.client_port = self.client_port or free_port()
        self.peer_port = self.peer_port or free_port()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir.chmod(0o700)
        client_url, peer_url = f"http://{self.endpoint}", f"http://127.0.0.1:{self.peer_port}"
        # setpriv (util-linux) makes etcd get SIGTERM when its starter dies, even by SIGKILL: no orphaned etcd
        setpriv = shutil.which("setpriv")
        command = [
            *([setpriv, "--pdeathsig", "TERM", "--"] if setpriv else []),
            *member_command(binary, "jumpstarter", self.data_dir, client_url, peer_url, f"jumpstarter={peer_url}"),
        ]
        log = open(self.state_dir / "etcd.log", "ab")  # noqa: SIM115 - the child writes to it for its whole life
        # etcd says READY=1 on a systemd notify socket once it serves clients: wait for that datagram.
        private = tempfile.mkdtemp(prefix="jmp-etcd-")  # a short path: unix socket paths are limited to 107 bytes
        notify_path = Path(private) / "notify"
        with contextlib.ExitStack() as cleanup, socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
            cleanup.callback(shutil.rmtree, private, ignore_errors=True)
            notify.bind(str(notify_path))
            try:
                env = {**os.environ, "NOTIFY_SOCKET": str(notify_path)}
                self.process = subprocess.Popen(command, stdout=log, stderr=log, stdin=subprocess.DEVNULL, env=env)
            finally:
                log.close()
            try:
                self._wait_ready(notify)
            except BaseException:
                self.stop()
                raise
        logger.info("private etcd on %s, data in %s", self.endpoint, self.data_dir)
        return self

    def _wait_ready(self, notify: socket.socket) -> None:
        assert self.process is not None
        deadline = time.monotonic() + START_TIMEOUT
        while (left := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select([notify], [], [], min(left, 0.5))
            if ready and b"READY=1" in notify.recv(4096):
                return
            if self.process.poll() is not None:
                raise ConfigurationError(
                    f"etcd exited with status {self.process.returncode} at start; see {self.state_dir / 'etcd.log'}"
                )
        raise ConfigurationError(
            f"etcd did not become ready on {self.endpoint} within {START_TIMEOUT:g} s; "
            f"see {self.state_dir / 'etcd.log'}"
        )

    def stop(self) -> None:
        """Stop the member (SIGTERM, then SIGKILL); its data stays."""
        if self.process is not None:
            stop_process(self.process, timeout=10, name="etcd")
            self.process = None

    def kill(self) -> None:
        """SIGKILL the member at once (tests of a crashed store)."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(10)
            self.process = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
