"""A real shared lab on loopback: a private etcd, controller replicas, `jumpstarter serve` exporters."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
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
from jumpstarter_drivers.controller.store import ONLINE, Store
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
        self._stack = contextlib.ExitStack()

    def replica(self) -> ControllerServer:
        settings = ControllerSettings(etcd=[self.etcd.endpoint], tls_cert=self.cert, tls_key=self.key)
        replica = self._stack.enter_context(running(settings))
        self.replicas.append(replica)
        return replica

    @property
    def endpoints(self) -> str:
        return ",".join(replica.endpoint for replica in self.replicas)

    def store(self, action) -> object:
        return loop.run(_with_store(self.etcd.endpoint, action))

    def token(self, kind: str, name: str, labels: dict[str, str] | None = None) -> str:
        return self.store(lambda store: tokens.issue(store, kind, name, labels=labels))

    def client(self, name: str) -> Access:
        content = config_files.document(
            "Client", name, self.endpoints, self.token("client", name), self.cert.read_bytes(), False
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

    def serve(self, name: str, labels: dict[str, str], export: dict | None = None) -> subprocess.Popen:
        """Start `jumpstarter serve FILE --controller` for exporter ``name``; return once it is online."""
        path = self.exporter_file(name, labels, export)
        log = open(self.directory / f"exporter-{name}.log", "wb")  # noqa: SIM115 - closed below
        try:
            process = subprocess.Popen(
                [sys.executable, "-m", "jumpstarter_drivers.cli", "serve", str(path), "--controller", self.endpoints],
                stdout=log,
                stderr=log,
                env={**os.environ, "GRPC_VERBOSITY": "NONE"},
            )
        finally:
            log.close()
        self.exporters[name] = process
        self.wait_online(name)
        return process

    def wait_online(self, name: str, online: bool = True, timeout: float = 30.0) -> None:
        """Return once exporter ``name`` is online (or offline), watched in etcd."""

        async def wait(store: Store) -> None:
            state = await store.snapshot()
            if (
                name in state.online
                and state.exporters.get(name, None) is not None
                and state.exporters[name].value.get("status") == 2
            ) == online:
                return
            async with asyncio.timeout(timeout):
                async for _ in store.changes("lab/"):
                    state = await store.snapshot()
                    ready = name in state.online and state.exporters[name].value.get("status") == 2
                    if ready == online or (not online and name not in state.online):
                        return

        self.store(wait)

    def log(self, name: str) -> str:
        return (self.directory / f"exporter-{name}.log").read_text(errors="replace")

    def close(self) -> None:
        for name, process in self.exporters.items():
            stop_process(process, name=f"exporter {name}")
        self._stack.close()


@pytest.fixture(scope="session")
def tls_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return write_self_signed(tmp_path_factory.mktemp("tls"), ["localhost", "127.0.0.1"])


@pytest.fixture
def lab(etcd: PrivateEtcd, tmp_path: Path, tls_pair: tuple[Path, Path]) -> Iterator[Lab]:
    """A lab with one controller replica (TLS); add exporters with ``lab.serve(name, labels)``."""
    lab = Lab(etcd, tmp_path, tls_pair)
    lab.replica()
    try:
        yield lab
    finally:
        lab.close()


__all__ = ["ONLINE", "Lab"]
