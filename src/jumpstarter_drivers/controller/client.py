"""The client's end: lease a board from a controller and reach it through a local unix socket.

::

    with leased(Access.load("client.yaml"), "board=rpi4", duration=600) as lease:
        with connect(lease.socket) as client:   # as with a local lab
            client.power.on()

While the block runs the client keeps its lease alive (GetLease every :data:`KEEPALIVE` / 3 s);
if the process dies, the controller ends the lease within :data:`KEEPALIVE` seconds. Each
connection to the socket that sends something becomes one Dial and one router tunnel to the
exporter (a connection closed without a byte, such as the probe ``connect()`` makes, costs none).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import socket
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import duration_pb2
from jumpstarter_protocol.jumpstarter.client.v1 import client_pb2, client_pb2_grpc
from jumpstarter_protocol.jumpstarter.v1 import jumpstarter_pb2, jumpstarter_pb2_grpc

from ..core import loop
from ..core.errors import ConfigurationError, ExporterUnreachable, JumpstarterError
from . import links
from .config import Access
from .groups import GROUP_TAG, MAX_GROUP, ROLE_TAG
from .priority import PRIORITY_TAG
from .tunnel import CHUNK, Channels, splice

logger = logging.getLogger(__name__)

#: Seconds the controller keeps a lease whose holder stopped calling (the bound for a killed client).
KEEPALIVE = 10
#: Seconds one GetLease may wait on the controller for a waiting lease to change (each call keeps the lease alive).
LONG_POLL = KEEPALIVE / 3
#: Seconds the first GetLease waits before the client says it waits in the queue.
FIRST_POLL = 0.5
CALL_TIMEOUT = 10.0
#: Seconds a Dial is retried while the exporter is not ready yet.
DIAL_RETRY = 30.0


class LeaseError(JumpstarterError):
    """The controller refused a lease call, or the lease ended; the message is the controller's."""


class LeaseTimeout(LeaseError, TimeoutError):
    """No board was free within the wait the caller allowed."""


def short(name: str) -> str:
    """A lease's id from its full name ``namespaces/<ns>/leases/<id>``."""
    return name.rsplit("/", 1)[-1]


def condition(lease: Any) -> tuple[str, str, str]:
    """``(type, status, message)`` of the lease's first condition."""
    for cond in lease.conditions:
        return cond.type, cond.status, cond.message
    return "", "", ""


class ControllerClient:
    """Calls to the controller as a client, failing over between its endpoints on UNAVAILABLE."""

    def __init__(self, access: Access) -> None:
        self.access = access
        self._index = 0
        self._channel: grpc.aio.Channel | None = None

    def _stubs(self) -> tuple[Any, Any]:
        if self._channel is None:
            self._channel = self.access.channel(self.access.endpoints[self._index % len(self.access.endpoints)])
        return client_pb2_grpc.ClientServiceStub(self._channel), jumpstarter_pb2_grpc.ControllerServiceStub(
            self._channel
        )

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None

    async def call(self, method: str, request: Any, timeout: float = CALL_TIMEOUT, metadata: tuple = ()) -> Any:
        """``ClientService.<method>`` (or ``ControllerService.Dial``), on the next endpoint when one is down."""
        last: grpc.aio.AioRpcError | None = None
        for _ in range(len(self.access.endpoints)):
            client, controller = self._stubs()
            stub = controller if method == "Dial" else client
            try:
                return await getattr(stub, method)(request, metadata=self.access.metadata() + metadata, timeout=timeout)
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.UNAVAILABLE or "store is unavailable" in (exc.details() or ""):
                    raise LeaseError(f"{method}: {exc.details() or exc.code().name}") from None
                last = exc
                await self.close()
                self._index += 1
        assert last is not None
        raise ExporterUnreachable(
            f"no controller answers at {', '.join(self.access.endpoints)}: {last.details() or last.code().name}"
        )

    async def create_lease(
        self,
        selector: str,
        duration: float,
        exporter_name: str = "",
        keepalive: int = KEEPALIVE,
        lease_id: str = "",
        tags: dict[str, str] | None = None,
    ) -> Any:
        lease = client_pb2.Lease(
            selector=selector, duration=duration_pb2.Duration(seconds=int(duration)), tags=tags or {}
        )
        if exporter_name:
            lease.exporter_name = exporter_name
        metadata = (("jumpstarter-lease-keepalive", str(keepalive)),) if keepalive else ()
        request = client_pb2.CreateLeaseRequest(lease=lease, lease_id=lease_id)
        return await self.call("CreateLease", request, metadata=metadata)

    async def get_lease(self, name: str, wait: float = 0.0) -> Any:
        metadata = (("jumpstarter-wait", f"{wait:g}"),) if wait else ()
        return await self.call(
            "GetLease", client_pb2.GetLeaseRequest(name=name), timeout=CALL_TIMEOUT + wait, metadata=metadata
        )

    async def wait_ready(self, name: str, timeout: float | None, progress: Callable[[str], None] | None = None) -> Any:
        """The lease once it holds an exporter; :class:`LeaseTimeout` after ``timeout`` s (``None``: no bound)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        said = ""
        poll = FIRST_POLL  # a free board comes within this; past it, say what we wait for
        while True:
            left = poll if deadline is None else min(poll, deadline - time.monotonic())
            poll = LONG_POLL
            lease = await self.get_lease(name, wait=max(left, 0.0))
            kind, status, message = condition(lease)
            if kind == "Ready" and status == "True":
                return lease
            if kind == "Ready":
                raise LeaseError(f"lease {short(name)} ended: {message}")
            if progress is not None and message != said:
                progress(message)
                said = message
            if deadline is not None and time.monotonic() >= deadline:
                raise LeaseTimeout(
                    f"no board for {lease.selector or lease.exporter_name} within {timeout:g} s ({message})"
                )

    async def release(self, name: str) -> None:
        await self.call("DeleteLease", client_pb2.DeleteLeaseRequest(name=name))

    async def leases(self, only_active: bool = True) -> list[Any]:
        response = await self.call("ListLeases", client_pb2.ListLeasesRequest(only_active=only_active))
        return list(response.leases)

    async def exporters(self, selector: str = "") -> list[Any]:
        response = await self.call("ListExporters", client_pb2.ListExportersRequest(filter=selector))
        return list(response.exporters)

    async def dial(self, name: str) -> tuple[str, str]:
        """A router endpoint and token for one connection to the lease's exporter (retried while not ready)."""
        deadline = time.monotonic() + DIAL_RETRY
        delay = 0.05
        while True:
            try:
                response = await self.call("Dial", jumpstarter_pb2.DialRequest(lease_name=short(name)))
                return response.router_endpoint, response.router_token
            except LeaseError as exc:
                if "not ready" not in str(exc) or time.monotonic() > deadline:
                    raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)


@dataclass
class Leased:
    """A lease held for a block: its name, the exporter, and the local socket that reaches it."""

    name: str
    exporter: str
    socket: str
    since: float = field(default_factory=time.time)


class _Holder:
    """Runs on the background loop: keeps the lease alive and tunnels each local connection."""

    def __init__(self, client: ControllerClient, name: str, socket_path: str) -> None:
        self.client = client
        self.name = name
        self.socket_path = socket_path
        self.channels = Channels(client.access)
        self.listener: socket.socket | None = None
        self.accepting: asyncio.Task | None = None
        self.keeper: asyncio.Task | None = None
        self.connections: set[asyncio.Task] = set()

    async def start(self) -> None:
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(self.socket_path)
            os.chmod(self.socket_path, 0o600)
            listener.listen(128)
            listener.setblocking(False)
        except OSError:
            listener.close()
            raise
        self.listener = listener
        self.accepting = asyncio.create_task(links.accept(listener, self._accepted, f"lease {short(self.name)}"))
        self.keeper = asyncio.create_task(self._keep_alive())

    def _accepted(self, connection: socket.socket, _peer: object) -> None:
        task = asyncio.create_task(self._connection(connection))
        self.connections.add(task)
        task.add_done_callback(self.connections.discard)

    async def _keep_alive(self) -> None:
        while True:
            await asyncio.sleep(KEEPALIVE / 3)
            try:
                lease = await self.client.get_lease(self.name)
            except (LeaseError, ExporterUnreachable) as exc:
                logger.warning("keeping lease %s alive: %s", short(self.name), exc)
                continue
            kind, status, message = condition(lease)
            if kind == "Ready" and status != "True":
                logger.error("lease %s ended: %s", short(self.name), message)
                return

    async def _connection(self, connection: socket.socket) -> None:
        try:
            first = await asyncio.get_running_loop().sock_recv(connection, CHUNK)
            if not first:
                connection.close()
                return  # a probe (connect() checks that something listens): no Dial, no tunnel
            endpoint, token = await self.client.dial(self.name)
        except (LeaseError, ExporterUnreachable) as exc:
            logger.error("cannot reach the leased exporter: %s", exc)
            connection.close()
            return
        except (asyncio.CancelledError, OSError):
            connection.close()  # the lease is being released: end this connection quietly
            return
        with contextlib.suppress(asyncio.CancelledError):
            await splice(self.channels, endpoint, token, connection, first)

    async def stop(self) -> None:
        if self.listener is not None:
            self.listener.close()
        for task in [self.accepting, self.keeper, *self.connections]:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self.channels.close()


@dataclass(frozen=True)
class _Request:
    selector: str
    exporter_name: str = ""
    lease_id: str = ""
    tags: dict[str, str] = field(default_factory=dict)


@contextlib.contextmanager
def leased(
    access: Access,
    selector: str,
    duration: float,
    wait: float | None = None,
    exporter_name: str = "",
    progress: Callable[[str], None] | None = None,
    priority: int = 0,
) -> Iterator[Leased]:
    """Lease a board matching ``selector`` (waiting at most ``wait`` s), hold it for the block, release it.

    A negative ``priority`` (down to -100) lets waiting leases of higher priority go first; a positive one
    goes before lower ones, up to the ceiling of the client's token (:mod:`.priority`).
    """
    tags = {PRIORITY_TAG: str(priority)} if priority else {}
    with _holding(access, [_Request(selector, exporter_name, tags=tags)], duration, wait, progress) as held:
        yield held[0]


@contextlib.contextmanager
def leased_roles(
    access: Access,
    roles: Mapping[str, str],
    duration: float,
    wait: float | None = None,
    progress: Callable[[str], None] | None = None,
    priority: int = 0,
) -> Iterator[dict[str, Leased]]:
    """One board per role (``{"host": "board=rpi4", "dut": "board=imx8"}``), leased together or not at all.

    The leases form one group (:mod:`.groups`): the controller assigns every board in one etcd
    transaction once all are free, and holds none of them for the group while it waits.
    """
    if not 2 <= len(roles) <= MAX_GROUP:
        raise ConfigurationError(f"a lease group has 2 to {MAX_GROUP} roles, not {len(roles)}: {', '.join(roles)}")
    ids = [str(uuid.uuid4()) for _ in roles]
    group = ",".join(ids)
    ranked = {PRIORITY_TAG: str(priority)} if priority else {}
    requests = [
        _Request(selector, lease_id=lease_id, tags={GROUP_TAG: group, ROLE_TAG: role, **ranked})
        for (role, selector), lease_id in zip(roles.items(), ids, strict=True)
    ]
    with _holding(access, requests, duration, wait, progress) as held:
        yield dict(zip(roles, held, strict=True))


@contextlib.contextmanager
def _holding(
    access: Access,
    requests: list[_Request],
    duration: float,
    wait: float | None,
    progress: Callable[[str], None] | None,
) -> Iterator[list[Leased]]:
    """Create the leases, wait until all are Ready, hold each behind its own local socket, release them all."""
    client = ControllerClient(access)
    private = Path(tempfile.mkdtemp(prefix="jmp-lease-"))
    holders: list[_Holder] = []
    names: list[str] = []
    try:
        for request in requests:
            lease = loop.run(
                client.create_lease(
                    request.selector,
                    duration,
                    request.exporter_name,
                    lease_id=request.lease_id,
                    tags=request.tags,
                ),
                timeout=CALL_TIMEOUT * 2,
            )
            names.append(lease.name)
        ready_timeout = None if wait is None else wait + CALL_TIMEOUT * 2
        held = []
        for index, name in enumerate(names):
            lease = loop.run(client.wait_ready(name, wait, progress), timeout=ready_timeout)
            holder = _Holder(client, name, str(private / f"socket-{index}"))
            loop.run(holder.start())
            holders.append(holder)
            held.append(Leased(short(name), short(lease.exporter), holder.socket_path))
        yield held
    finally:
        try:
            for holder in holders:
                loop.run(holder.stop())
            for name in names:
                try:
                    loop.run(client.release(name), timeout=CALL_TIMEOUT * 2)
                except (LeaseError, ExporterUnreachable) as exc:
                    logger.warning("releasing lease %s: %s", short(name), exc)
        finally:
            loop.run(client.close())
            shutil.rmtree(private, ignore_errors=True)
