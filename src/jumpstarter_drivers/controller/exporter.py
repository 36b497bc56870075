"""The exporter's end: register a served session with a controller and serve its leases through the router.

Flow, as upstream's exporters do it: ``Register`` (labels and driver reports), ``ReportStatus
(AVAILABLE)``, keep ``Status`` open; when leased, ``LEASE_READY`` and ``Listen(lease)``, and for
each ListenResponse splice a connection to the session's socket through the router; when the
lease ends, cut those connections and report ``AVAILABLE`` again. The session refuses driver
calls while no lease holds it. A lost controller is retried on the next endpoint (failover).
A client's ``EndSession`` (``jmp shell`` sends it when its command exits, then waits to see
``AVAILABLE`` before deleting its lease) makes the exporter ``AVAILABLE`` at once, as upstream's do.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from pathlib import Path
from typing import Any

import grpc
from jumpstarter_protocol.jumpstarter.v1 import jumpstarter_pb2, jumpstarter_pb2_grpc

from ..core import loop
from ..core.status import ExporterStatus
from .config import Access
from .direct import DirectPort
from .tunnel import Channels, splice

logger = logging.getLogger(__name__)

#: Seconds between attempts to reach a controller that failed (doubling up to :data:`MAX_RETRY`).
RETRY = 0.2
MAX_RETRY = 5.0
#: Seconds a unary controller call may take.
CALL_TIMEOUT = 10.0


class ExporterAgent:
    """Keeps ``session`` (served on the unix socket ``socket_path``) registered with the controller.

    With ``direct`` (a started :class:`~.direct.DirectPort`), each lease's holder is also told how
    to reach the session without the router.
    """

    def __init__(self, session: Any, socket_path: str | Path, access: Access, direct: DirectPort | None = None) -> None:
        self.session = session
        self.socket_path = str(socket_path)
        self.access = access
        self.direct = direct
        self.lease: str | None = None
        self.registered = asyncio.Event()
        self._stub: Any = None
        session.on_end_session = self._end_session
        #: Leases served so far, in order (tests check that no two overlapped).
        self.served: list[str] = []

    async def run(self) -> None:
        """Until cancelled: stay registered, failing over between the controller's endpoints."""
        self.session.update_status(ExporterStatus.AVAILABLE)  # no driver calls until a lease holds the session
        delay = RETRY
        index = 0
        while True:
            endpoint = self.access.endpoints[index % len(self.access.endpoints)]
            try:
                await self._serve(endpoint)
                logger.warning("controller %s closed the Status stream; registering again", endpoint)
                delay = RETRY
            except grpc.aio.AioRpcError as exc:
                if exc.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
                    logger.error("controller %s refused this exporter: %s", endpoint, exc.details())
                else:
                    logger.warning("controller %s: %s; retrying", endpoint, exc.details() or exc.code().name)
            self.registered.clear()
            index += 1
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_RETRY)

    async def _serve(self, endpoint: str) -> None:
        metadata = self.access.metadata()
        channel = self.access.channel(endpoint)
        channels = Channels(self.access)
        listening: asyncio.Task | None = None
        try:
            stub = self._stub = jumpstarter_pb2_grpc.ControllerServiceStub(channel)
            report = self.session.report()
            await stub.Register(
                jumpstarter_pb2.RegisterRequest(labels=dict(self.session.labels), reports=report.reports),
                metadata=metadata,
                timeout=CALL_TIMEOUT,
            )
            await self._report(stub, ExporterStatus.AVAILABLE)
            logger.info("registered with the controller at %s as %s", endpoint, self.access.name or "(token's name)")
            self.registered.set()
            async for status in stub.Status(jumpstarter_pb2.StatusRequest(), metadata=metadata):
                lease = status.lease_name if status.leased else None
                self._open_direct(lease)  # kept through a failover to another replica while the lease lasts
                if lease == self.lease:
                    continue
                if listening is not None:
                    await _cancel(listening)
                    listening = None
                    await channels.close()
                    logger.info("lease %s ended", self.lease)
                    self.lease = None
                    await self._reset_tree()
                    await self._report(stub, ExporterStatus.AVAILABLE)
                if lease is not None:
                    self.lease = lease
                    self.served.append(lease)
                    logger.info("leased to %s (lease %s)", status.client_name, lease)
                    await self._report(stub, ExporterStatus.LEASE_READY)
                    listening = asyncio.create_task(self._listen(stub, lease, channels))
        finally:
            if listening is not None:
                await _cancel(listening)
            self.lease = self._stub = None
            self.session.update_status(ExporterStatus.AVAILABLE)
            await channels.close()
            await channel.close()

    def _open_direct(self, lease: str | None) -> None:
        """The direct port serves ``lease`` alone (``None``: nobody); ``GetReport`` tells its holder how."""
        if self.direct is None or self.direct.lease == lease:
            return
        if lease is None:
            self.direct.revoke()
            self.session.alternative_endpoints = []
        else:
            self.session.alternative_endpoints = [self.direct.grant(lease)]

    async def _reset_tree(self) -> None:
        """What a lease chose (a flasher's bundle, ...) ends with it: the next holder finds the
        configuration, whether or not this holder ended its session."""
        root = self.session.root_device
        try:
            await loop.run_blocking(root, root.reset)
        except Exception as exc:  # noqa: BLE001 - a driver failing to reset must not stop the exporter
            logger.warning("resetting the drivers after a lease: %s", exc)

    async def _end_session(self) -> None:
        """The lease holder is done with the board: report ``AVAILABLE`` (driver calls stop); the holder
        then deletes its lease, or it ends at its end time."""
        lease, stub = self.lease, self._stub
        if lease is None or stub is None:
            return
        try:
            await self._report(stub, ExporterStatus.AVAILABLE)
        except grpc.aio.AioRpcError as exc:
            logger.warning("could not report the end of lease %s: %s", lease, exc.details() or exc.code().name)
        else:
            logger.info("the holder of lease %s ended its session", lease)

    async def _report(self, stub: Any, status: ExporterStatus) -> None:
        self.session.update_status(status)
        await stub.ReportStatus(
            jumpstarter_pb2.ReportStatusRequest(status=status.value),
            metadata=self.access.metadata(),
            timeout=CALL_TIMEOUT,
        )

    async def _listen(self, stub: Any, lease: str, channels: Channels) -> None:
        tunnels: set[asyncio.Task] = set()
        try:
            request = jumpstarter_pb2.ListenRequest(lease_name=lease)
            async for response in stub.Listen(request, metadata=self.access.metadata()):
                task = asyncio.create_task(self._tunnel(channels, response.router_endpoint, response.router_token))
                tunnels.add(task)
                task.add_done_callback(tunnels.discard)
        except grpc.aio.AioRpcError as exc:
            logger.info("listening for lease %s ended: %s", lease, exc.details() or exc.code().name)
        finally:
            for task in list(tunnels):
                await _cancel(task)

    async def _tunnel(self, channels: Channels, endpoint: str, token: str) -> None:
        connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        connection.setblocking(False)
        try:
            await asyncio.get_running_loop().sock_connect(connection, self.socket_path)
        except OSError as exc:
            connection.close()
            logger.error("cannot reach the session at %s: %s", self.socket_path, exc)
            return
        await splice(channels, endpoint, token, connection)


async def _cancel(task: asyncio.Task) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
