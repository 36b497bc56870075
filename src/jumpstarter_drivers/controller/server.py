"""One controller replica: the gRPC server with the controller, client and router services, and the scheduler.

>>> import tempfile
>>> from jumpstarter_drivers.controller.etcd_process import PrivateEtcd
>>> with tempfile.TemporaryDirectory() as state, PrivateEtcd(state) as etcd:
...     with running(ControllerSettings(etcd=[etcd.endpoint], insecure=True)) as replica:
...         replica.endpoint.startswith("127.0.0.1:")
True
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
from jumpstarter_protocol.jumpstarter.client.v1 import client_pb2_grpc
from jumpstarter_protocol.jumpstarter.v1 import jumpstarter_pb2_grpc

from ..core import loop
from ..core.errors import ConfigurationError
from ..core.session import server_credentials
from . import relay
from .router import Router
from .scheduler import Scheduler
from .services import ClientService, ControllerService, Lab
from .store import Store

logger = logging.getLogger(__name__)

#: Largest message a peer may send (router frames included); bounds memory per call.
MAX_MESSAGE = 4 << 20
#: Seconds a connection may take to finish its TLS and HTTP/2 handshake.
HANDSHAKE_TIMEOUT = 10
SERVER_OPTIONS = (
    ("grpc.max_receive_message_length", MAX_MESSAGE),
    ("grpc.max_send_message_length", MAX_MESSAGE),
    ("grpc.max_concurrent_streams", 256),
    # ping every peer each 5 s; one that does not answer within 5 s is cut (a vanished exporter's host)
    ("grpc.keepalive_time_ms", 5000),
    ("grpc.keepalive_timeout_ms", 5000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 1000),
    ("grpc.http2.max_ping_strikes", 0),
    ("grpc.so_reuseport", 0),
    # a peer that starts a TLS handshake and stalls is cut after this long
    ("grpc.server_handshake_timeout_ms", HANDSHAKE_TIMEOUT * 1000),
)


@dataclass
class ControllerSettings:
    """How one replica runs: where it listens, which etcd it uses, its TLS pair."""

    etcd: list[str]
    listen: str = "127.0.0.1:0"
    tls_cert: str | os.PathLike | None = None
    tls_key: str | os.PathLike | None = None
    insecure: bool = False
    #: ``HOST:PORT`` clients and exporters reach this replica's router at (default: from ``listen``).
    advertise: str | None = None
    #: Serve the router's relay port (:mod:`.relay`) for this toolkit's clients and exporters.
    relay: bool = True
    #: ``HOST:PORT`` of the relay (default: the ``listen`` host, any free port).
    relay_listen: str | None = None
    #: Reconcile every this many seconds instead of on etcd events (only to measure a polling baseline).
    reconcile_every: float | None = None


class ControllerServer:
    """A replica; ``await start()`` then ``await stop()`` on one event loop."""

    def __init__(self, settings: ControllerSettings) -> None:
        if not settings.insecure and not (settings.tls_cert and settings.tls_key):
            raise ConfigurationError("the controller needs a TLS certificate and key, or insecure=True for plaintext")
        self.settings = settings
        self.store = Store(settings.etcd)
        self.scheduler = Scheduler(self.store, poll=settings.reconcile_every)
        self.port = 0
        self._server: grpc.aio.Server | None = None
        self._relay: asyncio.Server | None = None
        self._scheduling: asyncio.Task | None = None

    @property
    def endpoint(self) -> str:
        """``HOST:PORT`` of this replica as clients and exporters reach it."""
        if self.settings.advertise:
            return self.settings.advertise
        host = self.settings.listen.rpartition(":")[0]
        if host in ("0.0.0.0", "[::]", ""):
            host = socket.gethostname()
        return f"{host}:{self.port}"

    async def start(self) -> None:
        await self.store.__aenter__()
        server = grpc.aio.server(options=SERVER_OPTIONS)
        try:
            if self.settings.insecure:
                self.port = server.add_insecure_port(self.settings.listen)
            else:
                cert, key = self.settings.tls_cert, self.settings.tls_key
                credentials = server_credentials(cert, key)  # type: ignore[arg-type]
                self.port = server.add_secure_port(self.settings.listen, credentials)
        except RuntimeError as exc:
            await self.store.close()
            raise OSError(f"cannot listen on {self.settings.listen}: {exc}") from exc
        lab = Lab(self.store, self.endpoint, self.scheduler)
        jumpstarter_pb2_grpc.add_ControllerServiceServicer_to_server(ControllerService(lab), server)
        client_pb2_grpc.add_ClientServiceServicer_to_server(ClientService(lab), server)
        self.router = Router(self.store)
        if self.settings.relay:
            try:
                await self._start_relay()
            except (OSError, ConfigurationError):
                await self.store.close()
                raise
        server.add_generic_rpc_handlers(self.router.handlers())
        await server.start()
        self._server = server
        self._scheduling = asyncio.create_task(self.scheduler.run(), name="scheduler")
        logger.info("controller replica on %s, etcd %s", self.endpoint, ", ".join(self.settings.etcd))

    async def _start_relay(self) -> None:
        address = self.settings.relay_listen or f"{self.settings.listen.rpartition(':')[0]}:0"
        host, _, port = address.rpartition(":")
        host = host.strip("[]") or None
        if host in ("0.0.0.0", "::"):
            host = None
        try:
            number = int(port)
        except ValueError:
            raise ConfigurationError(f"relay address {address!r}: give HOST:PORT") from None
        context = None
        if not self.settings.insecure:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            try:
                context.load_cert_chain(self.settings.tls_cert, self.settings.tls_key)  # type: ignore[arg-type]
            except (OSError, ssl.SSLError) as exc:
                raise ConfigurationError(f"cannot load the TLS certificate and key for the relay: {exc}") from None
        try:
            self._relay = await relay.serve(self.router, host, number, context)
        except OSError as exc:
            raise OSError(f"cannot listen on {address} for the relay: {exc.strerror or exc}") from exc
        self.router.relay_port = self._relay.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._relay is not None:
            self.router.close_relays()
            await relay.close(self._relay)
            self._relay = None
        if self._scheduling is not None:
            self._scheduling.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._scheduling
            self._scheduling = None
        if self._server is not None:
            await self._server.stop(grace=1.0)
            self._server = None
        await self.store.close()


@contextlib.contextmanager
def running(settings: ControllerSettings) -> Iterator[ControllerServer]:
    """A replica served on the process's background loop for the duration of the block."""
    replica = ControllerServer(settings)
    loop.run(replica.start())
    try:
        yield replica
    finally:
        loop.run(replica.stop())


def ensure_tls(state_dir: Path, hosts: list[str]) -> tuple[Path, Path]:
    """The replica's certificate and key under ``state_dir/tls``, made (self-signed) on first use."""
    from ..cli.certs import write_self_signed

    directory = state_dir / "tls"
    cert, key = directory / "cert.pem", directory / "key.pem"
    if not (cert.is_file() and key.is_file()):
        write_self_signed(directory, hosts, days=3650)
    return cert, key
