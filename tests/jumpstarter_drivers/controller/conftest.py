"""A real shared lab on loopback: a private etcd, controller replicas, `jumpstarter serve` exporters."""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from jumpstarter_drivers.cli.certs import write_self_signed
from jumpstarter_drivers.controller import config as config_files
from jumpstarter_drivers.controller import tokens
from jumpstarter_drivers.controller.config import Access
from jumpstarter_drivers.controller.etcd_process import PrivateEtcd
from jumpstarter_drivers.controller.server import ControllerServer, ControllerSettings, running
from jumpstarter_drivers.controller.store import Store
from jumpstarter_drivers.core import loop
from jumpstarter_drivers.core.processes import stop_process

EXPORT = {"power": {"type": "MockPower"}}


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[PrivateEtcd]:
    """A running etcd member (``etcd.endpoint``), stopped after the test."""
    with PrivateEtcd(tmp_path / "state") as member:
        yield member


async def _with_store(endpoint: str, action) -> object:
    async with Store([endpoint]) as store:
        return await action(store)


class Lab:
    """One etcd, replicas served in this process, exporters as `jumpstarter serve` child processes."""

    def __init__(self, etcd: PrivateEtcd, directory: Path, tls: tuple[Path, Path]) -> None:
        self.etcd = etcd
        self.directory = directory
        self.cert, self.key = tls
        self.replicas: list[ControllerServer] = []
        self.exporters: dict[str, subprocess.Popen] = {}
        self.processes: list[subprocess.Popen] = []
        self.process_endpoints: list[str] = []
        self._stack = contextlib.ExitStack()

    def replica(self, etcd: list[str] | None = None, **options) -> ControllerServer:
        settings = ControllerSettings(
            etcd=etcd or [self.etcd.endpoint], tls_cert=self.cert, tls_key=self.key, **options
        )
        replica = self._stack.enter_context(running(settings))
        self.replicas.append(replica)
        return replica

    def replica_process(self, name: str) -> tuple[subprocess.Popen, str]:
        """A replica as a `jumpstarter controller` child process (for kill -9); its endpoint."""
        state = self.directory / f"replica-{name}"
        command = [
            sys.executable,
            "-m",
            "jumpstarter_drivers.cli",
            "controller",
            "--listen",
            "127.0.0.1:0",
            "--etcd",
            self.etcd.endpoint,
            "--state-dir",
            str(state),
            "--tls-cert",
            str(self.cert),
            "--tls-key",
            str(self.key),
        ]
        log = open(self.directory / f"replica-{name}.log", "wb")  # noqa: SIM115 - closed below
        try:
            process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log)
        finally:
            log.close()
        self.processes.append(process)
        ready, _, _ = select.select([process.stdout], [], [], 30)
        assert ready, f"replica {name} did not print its endpoint within 30 s"
        endpoint = process.stdout.readline().decode().strip()
        assert endpoint, (self.directory / f"replica-{name}.log").read_text()
        self.process_endpoints.append(endpoint)
        return process, endpoint

    @property
    def endpoints(self) -> str:
        return ",".join([replica.endpoint for replica in self.replicas] + self.process_endpoints)

    def store(self, action) -> object:
        return loop.run(_with_store(self.etcd.endpoint, action))

    def token(self, kind: str, name: str, labels: dict[str, str] | None = None, max_priority: int = 0) -> str:
        return self.store(lambda store: tokens.issue(store, kind, name, labels=labels, max_priority=max_priority))

    def client(self, name: str, max_priority: int = 0) -> Access:
        content = config_files.document(
            "Client", name, self.endpoints, self.token("client", name, max_priority=max_priority),
            self.cert.read_bytes(), False,
        )
        return Access.from_document(content, "Client", name)

    def client_file(self, name: str) -> Path:
        content = config_files.document(
            "Client", name, self.endpoints, self.token("client", name), self.cert.read_bytes(), False
        )
        return config_files.write(self.directory / f"client-{name}.yaml", content)

    def exporter_file(self, name: str, labels: dict[str, str], export: dict | None = None) -> Path:
        content = config_files.document(
            "Exporter", name, self.endpoints, self.token("exporter", name), self.cert.read_bytes(), False
        )
        content["metadata"]["labels"] = labels
        content["export"] = export or EXPORT
        path = self.directory / f"exporter-{name}.yaml"
        path.write_text(yaml.safe_dump(content))
        return path

    def serve(
        self,
        name: str,
        labels: dict[str, str],
        export: dict | None = None,
        env: dict[str, str] | None = None,
        args: tuple[str, ...] = (),
    ) -> subprocess.Popen:
        """Start `jumpstarter serve FILE --controller [ARGS]` for exporter ``name``; return once it is online."""
        path = self.exporter_file(name, labels, export)
        log = open(self.directory / f"exporter-{name}.log", "wb")  # noqa: SIM115 - closed below
        try:
            process = subprocess.Popen(
                [sys.executable, "-m", "jumpstarter_drivers.cli", "serve", str(path), "--controller", self.endpoints,
                 *args],
                stdout=log,
                stderr=log,
                env={**os.environ, "GRPC_VERBOSITY": "NONE", **(env or {})},
            )
        finally:
            log.close()
        self.exporters[name] = process
        self.wait_online(name)
        return process

    def wait_online(self, name: str, online: bool = True, timeout: float = 30.0) -> None:
        """Return once exporter ``name`` is online and available (or offline), watched in etcd."""

        def reached(state) -> bool:
            if not online:
                return name not in state.online
            exporter = state.exporters.get(name)
            return name in state.online and exporter is not None and exporter.value.get("status") == 2

        self.wait_for(reached, timeout)

    def wait_for(self, reached, timeout: float = 30.0) -> float:
        """Seconds until ``reached(state)`` holds for the lab's state in etcd (TimeoutError past ``timeout``)."""

        async def wait(store: Store) -> float:
            start = time.monotonic()
            async with asyncio.timeout(timeout):
                while not reached(state := await store.snapshot()):
                    changes = store.changes("lab/", start_revision=state.revision + 1)
                    await anext(changes)
                    await changes.aclose()
            return time.monotonic() - start

        return self.store(wait)

    def log(self, name: str) -> str:
        return (self.directory / f"exporter-{name}.log").read_text(errors="replace")

    def close(self) -> None:
        for name, process in self.exporters.items():
            stop_process(process, name=f"exporter {name}")
        for process in self.processes:
            stop_process(process, name="controller replica")
            if process.stdout is not None:
                process.stdout.close()
        self._stack.close()


@pytest.fixture(scope="session")
def tls_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return write_self_signed(tmp_path_factory.mktemp("tls"), ["localhost", "127.0.0.1"])


@pytest.fixture
def bare_lab(etcd: PrivateEtcd, tmp_path: Path, tls_pair: tuple[Path, Path]) -> Iterator[Lab]:
    """A lab without replicas yet: add them with ``replica()`` or ``replica_process()``."""
    lab = Lab(etcd, tmp_path, tls_pair)
    try:
        yield lab
    finally:
        lab.close()


@pytest.fixture
def lab(bare_lab: Lab) -> Lab:
    """A lab with one controller replica (TLS); add exporters with ``lab.serve(name, labels)``."""
    bare_lab.replica()
    return bare_lab


@pytest.fixture
def etcd_cluster(tmp_path: Path) -> Iterator[list[subprocess.Popen]]:
    """Three etcd members on loopback ports (``.endpoints`` on the list); killed after the test."""
    import shutil

    from jumpstarter_drivers.controller.etcd_process import free_port, member_command

    names = ["m0", "m1", "m2"]
    clients = {name: free_port() for name in names}
    peers = {name: free_port() for name in names}
    initial = ",".join(f"{name}=http://127.0.0.1:{peers[name]}" for name in names)
    members = []
    for name in names:
        client_url, peer_url = f"http://127.0.0.1:{clients[name]}", f"http://127.0.0.1:{peers[name]}"
        command = member_command(shutil.which("etcd"), name, tmp_path / name, client_url, peer_url, initial)
        members.append(subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    endpoints = [f"127.0.0.1:{clients[name]}" for name in names]

    async def healthy() -> None:
        async with Store(endpoints) as store, asyncio.timeout(30):
            while True:
                try:
                    await store.put_exporter("probe", {})
                    return
                except Exception:  # noqa: BLE001 - the cluster is still electing its leader
                    await asyncio.sleep(0.1)

    try:
        loop.run(healthy(), timeout=40)
        yield members, endpoints
    finally:
        for member in members:
            stop_process(member)
