"""The controller's gRPC services: ``jumpstarter.v1.ControllerService`` and ``jumpstarter.client.v1.ClientService``.

:class:`Lab` holds the operations both services share (leases, exporters, dials), in the lab's
terms, on top of :class:`~jumpstarter_drivers.controller.store.Store`; the two servicers turn
protocol messages into those operations and refusals into gRPC statuses. Nothing is kept in
process memory but live streams: any replica answers any call.

Two extensions over upstream, both optional metadata that upstream clients simply do not send:

- ``jumpstarter-lease-keepalive: SECONDS`` on CreateLease/RequestLease: the lease ends when its
  holder has not called GetLease for that long (a killed CI job frees its board);
- ``jumpstarter-wait: SECONDS`` on GetLease: answer once the lease changes (or after that long),
  instead of at once, so a waiting client learns of its board without polling.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import secrets
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from google.protobuf import duration_pb2, empty_pb2, timestamp_pb2
from jumpstarter_protocol.jumpstarter.client.v1 import client_pb2, client_pb2_grpc
from jumpstarter_protocol.jumpstarter.v1 import jumpstarter_pb2, jumpstarter_pb2_grpc, kubernetes_pb2

from ..core.errors import JumpstarterError
from ..core.status import ExporterStatus
from . import tokens
from .priority import granted
from .scheduler import Scheduler, fits, labels_of, queue_place
from .selector import Selector, SelectorError
from .store import ASSIGNMENTS, DIALS, LEASES, PRESENCE_TTL, Record, Store, StoreUnavailable
from .tokens import CLIENT, EXPORTER, Identity, Refused

logger = logging.getLogger(__name__)

KEEPALIVE_KEY = "jumpstarter-lease-keepalive"
WAIT_KEY = "jumpstarter-wait"
#: Bounds of a holder's keepalive period and of a GetLease wait, in seconds.
KEEPALIVE_RANGE = (2, 300)
MAX_WAIT = 60.0
#: Longest lease a client may ask for (seconds).
MAX_DURATION = 7 * 24 * 3600.0
#: Streaming calls (Status, Listen) one identity may hold open at once.
MAX_STREAMS_PER_PEER = 32
#: Most items one page of ListExporters/ListLeases holds when the caller asks for pages.
MAX_PAGE = 1000
PAGE_TOKEN_PREFIX = "after:"


def page(items: list[Any], name: Callable[[Any], str], size: int, token: str) -> tuple[list[Any], str]:
    """One page of ``items`` and the token of the next (``""``: no more), AIP-158 style.

    Without ``size`` and ``token`` every item comes, in the given order. Otherwise items come in
    name order, at most ``size`` (capped at :data:`MAX_PAGE`) after the one ``token`` names; the
    token is the last name of the previous page, so items added or removed between pages neither
    repeat nor shift the others.

    >>> page(["b", "a", "c"], str, 2, "")
    (['a', 'b'], 'after:b')
    >>> page(["b", "a", "c"], str, 2, "after:b")
    (['c'], '')
    """
    if size < 0:
        raise Refused(grpc.StatusCode.INVALID_ARGUMENT, f"page_size {size}: give 0 (everything) or a positive size")
    if not size and not token:
        return items, ""
    if token and not token.startswith(PAGE_TOKEN_PREFIX):
        raise Refused(
            grpc.StatusCode.INVALID_ARGUMENT,
            "page_token: not one this controller gave; pass the previous answer's next_page_token, or none",
        )
    after = token.removeprefix(PAGE_TOKEN_PREFIX)
    size = min(size or MAX_PAGE, MAX_PAGE)
    rest = sorted((item for item in items if name(item) > after), key=name)
    more = len(rest) > size
    return rest[:size], PAGE_TOKEN_PREFIX + name(rest[size - 1]) if more else ""


def _refuse_on_errors(func: Callable) -> Callable:
    """Turn our refusals and errors into gRPC statuses, for unary and server-streaming handlers."""

    def code_of(exc: BaseException) -> tuple[grpc.StatusCode, str]:
        if isinstance(exc, Refused):
            return exc.code, str(exc)
        if isinstance(exc, SelectorError):
            return grpc.StatusCode.INVALID_ARGUMENT, str(exc)
        if isinstance(exc, StoreUnavailable):
            return grpc.StatusCode.UNAVAILABLE, f"the controller's store is unavailable: {exc}"
        return grpc.StatusCode.INVALID_ARGUMENT, str(exc)

    if func.__name__ in ("Status", "Listen"):

        @functools.wraps(func)
        async def streaming(self: Any, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            try:
                async for item in func(self, request, context):
                    yield item
            except JumpstarterError as exc:
                await context.abort(*code_of(exc))

        return streaming

    @functools.wraps(func)
    async def unary(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await func(self, request, context)
        except JumpstarterError as exc:
            await context.abort(*code_of(exc))

    return unary


def new_lease_id() -> str:
    """A UUIDv7 (time-ordered), as upstream names leases the client did not name."""
    millis = int(time.time() * 1000)
    value = (millis << 80) | (0x7 << 76) | (secrets.randbits(12) << 64) | (0b10 << 62) | secrets.randbits(62)
    return str(uuid.UUID(int=value))


def short_name(name: str, kind: str, namespace: str) -> str:
    """``x`` from ``namespaces/<ns>/<kind>/x`` (or ``x`` itself); another namespace is refused."""
    if "/" not in name:
        return name
    parts = name.split("/")
    if len(parts) != 4 or parts[0] != "namespaces" or parts[2] != kind:
        raise Refused(grpc.StatusCode.INVALID_ARGUMENT, f"{name!r}: expected namespaces/<namespace>/{kind}/<name>")
    if parts[1] != namespace:
        raise Refused(grpc.StatusCode.PERMISSION_DENIED, f"{name!r} is not in your namespace {namespace!r}")
    return parts[3]


def _metadata(context: grpc.aio.ServicerContext) -> dict[str, str]:
    return {key.lower(): str(value) for key, value in context.invocation_metadata() or ()}


def _seconds(context: grpc.aio.ServicerContext, key: str, low: float, high: float) -> float:
    text = _metadata(context).get(key)
    if text is None:
        return 0.0
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not low <= value <= high:
        raise Refused(grpc.StatusCode.INVALID_ARGUMENT, f"metadata {key}: expected seconds in {low:g}..{high:g}")
    return value


def _timestamp(seconds: float) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


def _duration(seconds: float) -> duration_pb2.Duration:
    value = duration_pb2.Duration()
    value.FromNanoseconds(int(seconds * 1e9))
    return value


class Lab:
    """What the services do, in the lab's terms; every method reads or changes etcd only."""

    def __init__(self, store: Store, router_endpoint: str, scheduler: Scheduler | None = None) -> None:
        self.store = store
        self.router_endpoint = router_endpoint
        self.scheduler = scheduler
        self._streams: Counter[Identity] = Counter()

    async def identify(self, context: grpc.aio.ServicerContext, *kinds: str) -> Identity:
        last: Refused | None = None
        for kind in kinds:
            try:
                return await tokens.identify(self.store, context.invocation_metadata() or (), kind)
            except Refused as exc:
                if exc.code != grpc.StatusCode.PERMISSION_DENIED:
                    raise
                last = exc
        assert last is not None
        raise last

    @contextlib.contextmanager
    def stream_slot(self, identity: Identity) -> Any:
        """Count an open streaming call of ``identity``; refuse past :data:`MAX_STREAMS_PER_PEER`."""
        if self._streams[identity] >= MAX_STREAMS_PER_PEER:
            raise Refused(
                grpc.StatusCode.RESOURCE_EXHAUSTED, f"{identity} has {MAX_STREAMS_PER_PEER} streams open already"
            )
        self._streams[identity] += 1
        try:
            yield
        finally:
            self._streams[identity] -= 1
            if not self._streams[identity]:
                del self._streams[identity]

    # leases ----------------------------------------------------------------------------------

    async def create_lease(
        self,
        identity: Identity,
        selector_text: str,
        duration: float,
        exporter_name: str = "",
        lease_id: str = "",
        keepalive: float = 0.0,
        tags: dict[str, str] | None = None,
    ) -> Record:
        """Queue a lease for ``identity``; a selector no registered exporter fits is refused at once."""
        if not 0 < duration <= MAX_DURATION:
            raise Refused(
                grpc.StatusCode.INVALID_ARGUMENT, f"lease duration must be over 0 and at most {MAX_DURATION:g} s"
            )
        if not selector_text and not exporter_name:
            raise Refused(
                grpc.StatusCode.INVALID_ARGUMENT,
                "a lease needs a selector (e.g. board=rpi4) or an exporter name; an empty selector is not allowed",
            )
        selector = Selector.parse(selector_text) if selector_text else Selector()
        lease_id = lease_id or new_lease_id()
        try:
            tokens.check_name(lease_id, "lease id")
        except JumpstarterError as exc:
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None
        value = {
            "client": identity.name,
            "namespace": identity.namespace,
            "selector": str(selector) if selector_text else "",
            "exporter_name": exporter_name,
            "duration": duration,
            "created": time.time(),
            "tags": dict(tags or {}),
            "priority": granted(tags or {}, identity.max_priority),
        }
        exporters = await self.store.exporters()
        probe = Record(lease_id, value, 0, 0)
        if not any(fits(probe, name, exporter) for name, exporter in exporters.items()):
            raise Refused(grpc.StatusCode.FAILED_PRECONDITION, _unsatisfiable(selector_text, exporter_name, exporters))
        try:
            record = await self.store.add_lease(lease_id, value, holder_ttl=round(keepalive))
        except KeyError:
            raise Refused(grpc.StatusCode.ALREADY_EXISTS, f"lease {lease_id} exists already") from None
        if self.scheduler is not None:
            self.scheduler.wake.set()
        logger.info("lease %s of %s waits for %s", lease_id, identity, value["selector"] or exporter_name)
        return record

    async def own_lease(self, identity: Identity, name: str) -> Record:
        """``identity``'s lease ``name`` (a client's own, or one an exporter holds)."""
        lease = await self.store.lease(name)
        if lease is None:
            raise Refused(grpc.StatusCode.NOT_FOUND, f"no lease {name}")
        if identity.kind == CLIENT:
            owner = (lease.value.get("client"), lease.value.get("namespace"))
            if owner != (identity.name, identity.namespace):
                raise Refused(grpc.StatusCode.PERMISSION_DENIED, f"lease {name} belongs to another client")
        elif lease.value.get("exporter") != identity.name:
            raise Refused(grpc.StatusCode.PERMISSION_DENIED, f"lease {name} is not a lease of exporter {identity.name}")
        return lease

    async def get_lease(self, identity: Identity, name: str, wait: float = 0.0) -> Record:
        """The lease, after keeping its holder alive; with ``wait``, a waiting lease once it changed (at most
        ``wait`` s)."""
        lease = await self.own_lease(identity, name)
        if lease.value.get("holder") and not lease.value.get("ended"):
            await self.store.refresh(int(lease.value["holder"]))
        if wait and not (lease.value.get("ended") or lease.value.get("exporter")):
            changes = self.store.changes(LEASES, start_revision=lease.mod_revision + 1, name=name)
            try:
                async with asyncio.timeout(wait):
                    await anext(changes)
            except TimeoutError:
                return lease
            finally:
                await changes.aclose()
            lease = await self.own_lease(identity, name)
            if lease.value.get("holder") and not lease.value.get("ended"):
                await self.store.refresh(int(lease.value["holder"]))
        return lease

    async def change_duration(self, identity: Identity, name: str, duration: float) -> Record:
        """Give ``identity``'s waiting or active lease ``name`` a new duration (an active one a new end time)."""
        if not 0 < duration <= MAX_DURATION:
            raise Refused(
                grpc.StatusCode.INVALID_ARGUMENT, f"lease duration must be over 0 and at most {MAX_DURATION:g} s"
            )
        while True:
            lease = await self.own_lease(identity, name)
            if lease.value.get("ended"):
                raise Refused(grpc.StatusCode.FAILED_PRECONDITION, f"lease {name} ended; it cannot change")
            value = {**lease.value, "duration": duration}
            if value.get("begin"):
                value["end"] = float(value["begin"]) + duration
            if await self.store.update_lease(lease, value):
                break
        if self.scheduler is not None:
            self.scheduler.wake.set()
        logger.info("lease %s of %s now lasts %g s", name, identity, duration)
        return await self.own_lease(identity, name)

    async def release(self, identity: Identity, name: str, reason: str = "Released") -> None:
        """End the lease now (an ended one stays ended)."""
        lease = await self.own_lease(identity, name)
        while not lease.value.get("ended"):
            if await self.store.end_lease(lease, reason, f"released by {identity}", time.time()):
                logger.info("lease %s released by %s", name, identity)
                return
            lease = await self.own_lease(identity, name)

    async def leases(self, identity: Identity, only_active: bool = True) -> list[Record]:
        """Leases of ``identity``'s namespace, waiting and active first, in request order."""
        state = await self.store.snapshot()
        found = sorted(state.leases.values(), key=lambda lease: lease.create_revision)
        if not only_active:
            found += sorted(await self.store.ended_leases(), key=lambda lease: lease.value.get("ended", 0))
        return [lease for lease in found if lease.value.get("namespace") == identity.namespace]

    async def place(self, lease: Record) -> tuple[int, int] | None:
        return queue_place(await self.store.snapshot(), lease)

    # dials -----------------------------------------------------------------------------------

    async def dial(self, identity: Identity, name: str) -> tuple[str, str]:
        """A router endpoint and one-time token for a new connection to the lease's exporter."""
        lease = await self.own_lease(identity, name)
        if lease.value.get("ended"):
            raise Refused(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"lease {name} ended ({lease.value.get('reason')}: {lease.value.get('message')})",
            )
        exporter = lease.value.get("exporter")
        if not exporter:
            raise Refused(grpc.StatusCode.FAILED_PRECONDITION, f"lease {name} is not ready: it waits for an exporter")
        state = await self.store.snapshot()
        if exporter not in state.online:
            raise Refused(grpc.StatusCode.FAILED_PRECONDITION, f"exporter {exporter} of lease {name} is offline")
        stream, secret = secrets.token_hex(16), secrets.token_urlsafe(32)
        token = f"{stream}.{secret}"
        dial = {"endpoint": self.router_endpoint, "token": token, "client": identity.name}
        await self.store.add_dial(name, stream, dial, tokens.digest(secret))
        return self.router_endpoint, token

    async def dials(self, lease: str) -> AsyncIterator[tuple[str, str]]:
        """Each dial of ``lease`` (waiting ones first), until the lease ends."""
        revision, waiting = await self.store.dials(lease)
        for dial in waiting:
            yield dial.value["endpoint"], dial.value["token"]
        events: asyncio.Queue = asyncio.Queue(64)

        async def watch_dials() -> None:
            async for change in self.store.changes(f"{DIALS}{lease}/", start_revision=revision + 1):
                if isinstance(change, Record):
                    await events.put((change.value["endpoint"], change.value["token"]))

        async def watch_lease() -> None:
            async for change in self.store.changes(LEASES, start_revision=revision + 1, name=lease):
                if isinstance(change, str):
                    break
            await events.put(None)

        async def guarded(watch: Callable[[], Any]) -> None:
            try:
                await watch()
            except StoreUnavailable as exc:
                await events.put(exc)

        watchers = [asyncio.create_task(guarded(watch)) for watch in (watch_dials, watch_lease)]
        try:
            while (event := await events.get()) is not None:
                if isinstance(event, StoreUnavailable):
                    raise event
                yield event
        finally:
            for watcher in watchers:
                watcher.cancel()
            for watcher in watchers:
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher

    # exporters -------------------------------------------------------------------------------

    async def register(self, identity: Identity, labels: dict[str, str]) -> str:
        """Record the exporter's labels; its uuid (kept across registrations)."""

        def change(value: dict[str, Any]) -> dict[str, Any]:
            return {
                **value,
                "name": identity.name,
                "namespace": identity.namespace,
                "labels": dict(labels),
                "uuid": value.get("uuid") or str(uuid.uuid4()),
                "registered": time.time(),
                "status": value.get("status", ExporterStatus.UNSPECIFIED.value)
                if value.get("registered")
                else ExporterStatus.UNSPECIFIED.value,
            }

        value = await self.store.update_exporter(identity.name, change)
        logger.info("exporter %s registered with labels %s", identity.name, labels)
        return value["uuid"]

    async def registered(self, identity: Identity) -> Record:
        exporter = await self.store.exporter(identity.name)
        if exporter is None or not exporter.value.get("registered"):
            raise Refused(
                grpc.StatusCode.FAILED_PRECONDITION, f"exporter {identity.name} is not registered: call Register first"
            )
        return exporter

    async def report_status(self, identity: Identity, status: int, message: str) -> None:
        await self.registered(identity)
        await self.store.update_exporter(
            identity.name, lambda value: {**value, "status": int(status), "status_message": message}
        )

    async def unregister(self, identity: Identity) -> None:
        state = await self.store.snapshot()
        presence = state.online.get(identity.name)
        if presence is not None and presence.lease:
            await self.store.revoke(presence.lease)
        await self.store.update_exporter(identity.name, lambda value: {**value, "registered": 0})

    async def presence(self, identity: Identity) -> AsyncIterator[None]:
        """Keep ``identity`` online while the caller iterates (yields every refresh)."""
        etcd_lease = await self.store.go_online(identity.name, {"since": time.time()})
        try:
            while True:
                yield
                await asyncio.sleep(PRESENCE_TTL / 3)
                if not await self.store.refresh(etcd_lease):
                    etcd_lease = await self.store.go_online(identity.name, {"since": time.time()})
        finally:
            with contextlib.suppress(StoreUnavailable):
                await self.store.revoke(etcd_lease)

    async def assignments(self, exporter: str) -> AsyncIterator[tuple[str | None, str | None]]:
        """``(lease, client)`` holding ``exporter`` now and after every change (``None``: free)."""
        revision, lease = await self.store.assignment(exporter)
        last: tuple[str | None, str | None] | None = None
        changes = self.store.changes(ASSIGNMENTS, start_revision=revision + 1, name=exporter)
        try:
            while True:
                client = None
                if lease is not None:
                    record = await self.store.lease(lease)
                    client = record.value.get("client") if record is not None else None
                if (lease, client) != last:
                    last = (lease, client)
                    yield last
                await anext(changes)
                _, lease = await self.store.assignment(exporter)
        finally:
            await changes.aclose()


def _unsatisfiable(selector: str, exporter_name: str, exporters: dict[str, Record]) -> str:
    pairs = (f"{key}={value}" for exporter in exporters.values() for key, value in labels_of(exporter).items())
    inventory = Counter(pairs)
    wanted = f"exporter {exporter_name!r}" if exporter_name else f"selector {selector!r}"
    if exporter_name and selector:
        wanted = f"exporter {exporter_name!r} with selector {selector!r}"
    if not inventory:
        return f"no exporter could ever match {wanted}: no exporter is registered"
    labels = ", ".join(f"{label} ({count})" if count > 1 else label for label, count in sorted(inventory.items()))
    return f"no exporter could ever match {wanted}; the labels that exist: {labels}"


def lease_conditions(lease: Record, place: tuple[int, int] | None) -> list[kubernetes_pb2.Condition]:
    """Upstream's condition types: Pending (with our queue place), Ready, or Ready=False once ended."""
    value = lease.value
    if value.get("ended"):
        stamp = float(value["ended"])
        return [
            kubernetes_pb2.Condition(
                type="Ready",
                status="False",
                reason=value.get("reason", "Ended"),
                message=value.get("message", ""),
                lastTransitionTime=kubernetes_pb2.Time(seconds=int(stamp)),
            )
        ]
    if value.get("exporter"):
        return [
            kubernetes_pb2.Condition(
                type="Ready",
                status="True",
                reason="Ready",
                message=f"exporter {value['exporter']} is leased",
                lastTransitionTime=kubernetes_pb2.Time(seconds=int(value["begin"])),
            )
        ]
    message = f"waiting for an exporter matching {value.get('selector') or value.get('exporter_name')}"
    if place is not None:
        message += f"; place {place[0]} in the queue ({place[1]} waiting)"
    return [
        kubernetes_pb2.Condition(
            type="Pending",
            status="True",
            reason="Waiting",
            message=message,
            lastTransitionTime=kubernetes_pb2.Time(seconds=int(value.get("created", 0))),
        )
    ]


class ControllerService(jumpstarter_pb2_grpc.ControllerServiceServicer):
    """``jumpstarter.v1.ControllerService``: exporters register, listen and report; clients lease and dial."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab

    @_refuse_on_errors
    async def Register(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        identity = await self.lab.identify(context, EXPORTER)
        return jumpstarter_pb2.RegisterResponse(uuid=await self.lab.register(identity, dict(request.labels)))

    @_refuse_on_errors
    async def Unregister(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        identity = await self.lab.identify(context, EXPORTER)
        await self.lab.unregister(identity)
        return jumpstarter_pb2.UnregisterResponse()

    @_refuse_on_errors
    async def ReportStatus(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        identity = await self.lab.identify(context, EXPORTER)
        await self.lab.report_status(identity, request.status, request.message)
        if request.release_lease:
            _, lease = await self.lab.store.assignment(identity.name)
            if lease is not None:
                await self.lab.release(identity, lease, "ReleasedByExporter")
        return jumpstarter_pb2.ReportStatusResponse()

    @_refuse_on_errors
    async def Status(self, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        identity = await self.lab.identify(context, EXPORTER)
        await self.lab.registered(identity)
        with self.lab.stream_slot(identity):
            presence = self.lab.presence(identity)
            await anext(presence)
            keeper = asyncio.create_task(_drain(presence))
            try:
                async for lease, client in self.lab.assignments(identity.name):
                    if lease is None:
                        yield jumpstarter_pb2.StatusResponse(leased=False)
                    else:
                        yield jumpstarter_pb2.StatusResponse(leased=True, lease_name=lease, client_name=client or "")
            finally:
                keeper.cancel()
                with contextlib.suppress(asyncio.CancelledError, StoreUnavailable):
                    await keeper
                await presence.aclose()

    @_refuse_on_errors
    async def Listen(self, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        identity = await self.lab.identify(context, EXPORTER)
        lease = await self.lab.own_lease(identity, request.lease_name)
        if lease.value.get("ended"):
            raise Refused(grpc.StatusCode.FAILED_PRECONDITION, f"lease {request.lease_name} ended")
        with self.lab.stream_slot(identity):
            async for endpoint, token in self.lab.dials(request.lease_name):
                yield jumpstarter_pb2.ListenResponse(router_endpoint=endpoint, router_token=token)

    @_refuse_on_errors
    async def Dial(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        identity = await self.lab.identify(context, CLIENT)
        endpoint, token = await self.lab.dial(identity, request.lease_name)
        return jumpstarter_pb2.DialResponse(router_endpoint=endpoint, router_token=token)

    async def AuditStream(self, request_iterator: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "AuditStream is not served by this controller")

    @_refuse_on_errors
    async def RequestLease(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        identity = await self.lab.identify(context, CLIENT)
        selector = str(Selector.from_proto(request.selector))
        keepalive = _seconds(context, KEEPALIVE_KEY, *KEEPALIVE_RANGE)
        lease = await self.lab.create_lease(
            identity, selector, request.duration.ToTimedelta().total_seconds(), keepalive=keepalive
        )
        return jumpstarter_pb2.RequestLeaseResponse(name=lease.name)

    @_refuse_on_errors
    async def GetLease(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        identity = await self.lab.identify(context, CLIENT)
        lease = await self.lab.get_lease(identity, request.name, _seconds(context, WAIT_KEY, 0, MAX_WAIT))
        value = lease.value
        place = None if value.get("exporter") or value.get("ended") else await self.lab.place(lease)
        response = jumpstarter_pb2.GetLeaseResponse(
            duration=_duration(float(value.get("duration", 0))),
            selector=Selector.parse(value["selector"]).to_proto() if value.get("selector") else None,
            conditions=lease_conditions(lease, place),
        )
        if value.get("begin"):
            response.begin_time.CopyFrom(_timestamp(float(value["begin"])))
            response.end_time.CopyFrom(_timestamp(float(value.get("ended") or value["end"])))
        if value.get("exporter"):
            exporter = await self.lab.store.exporter(value["exporter"])
            response.exporter_uuid = exporter.value.get("uuid", "") if exporter is not None else ""
        return response

    @_refuse_on_errors
    async def ReleaseLease(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        identity = await self.lab.identify(context, CLIENT, EXPORTER)
        await self.lab.release(identity, request.name)
        return jumpstarter_pb2.ReleaseLeaseResponse()

    @_refuse_on_errors
    async def ListLeases(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        identity = await self.lab.identify(context, CLIENT)
        mine = [lease.name for lease in await self.lab.leases(identity) if lease.value.get("client") == identity.name]
        return jumpstarter_pb2.ListLeasesResponse(names=mine)


async def _drain(iterator: AsyncIterator[None]) -> None:
    async for _ in iterator:
        pass


class ClientService(client_pb2_grpc.ClientServiceServicer):
    """``jumpstarter.client.v1.ClientService`` (AIP style names: ``namespaces/<ns>/leases/<id>``)."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab

    def lease_message(self, lease: Record, place: tuple[int, int] | None = None) -> Any:
        value, namespace = lease.value, lease.value.get("namespace", tokens.DEFAULT_NAMESPACE)
        message = client_pb2.Lease(
            name=f"namespaces/{namespace}/leases/{lease.name}",
            selector=value.get("selector", ""),
            duration=_duration(float(value.get("duration", 0))),
            client=f"namespaces/{namespace}/clients/{value.get('client')}",
            conditions=lease_conditions(lease, place),
            tags=value.get("tags", {}),
        )
        if value.get("exporter_name"):
            message.exporter_name = f"namespaces/{namespace}/exporters/{value['exporter_name']}"
        if value.get("exporter"):
            message.exporter = f"namespaces/{namespace}/exporters/{value['exporter']}"
        if value.get("begin"):
            begin, end = float(value["begin"]), float(value.get("ended") or value["end"])
            message.effective_begin_time.CopyFrom(_timestamp(begin))
            message.effective_end_time.CopyFrom(_timestamp(end))
            message.effective_duration.CopyFrom(_duration(end - begin))
        return message

    async def exporter_message(self, name: str, exporter: Record, online: bool) -> Any:
        value = exporter.value
        status = value.get("status", ExporterStatus.UNSPECIFIED.value) if online else ExporterStatus.OFFLINE.value
        return client_pb2.Exporter(
            name=f"namespaces/{value.get('namespace', tokens.DEFAULT_NAMESPACE)}/exporters/{name}",
            labels=labels_of(exporter),
            online=online,
            status=status,
            status_message=value.get("status_message", ""),
            enabled=True,
        )

    @_refuse_on_errors
    async def GetExporter(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        identity = await self.lab.identify(context, CLIENT)
        name = short_name(request.name, "exporters", identity.namespace)
        state = await self.lab.store.snapshot()
        exporter = state.exporters.get(name)
        if exporter is None or exporter.value.get("namespace", tokens.DEFAULT_NAMESPACE) != identity.namespace:
            raise Refused(grpc.StatusCode.NOT_FOUND, f"no exporter {name}")
        return await self.exporter_message(name, exporter, name in state.online)

    @_refuse_on_errors
    async def ListExporters(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        identity = await self.lab.identify(context, CLIENT)
        selector = Selector.parse(request.filter) if request.filter.strip() else Selector()
        state = await self.lab.store.snapshot()
        matching = []
        for name, exporter in sorted(state.exporters.items()):
            if exporter.value.get("namespace", tokens.DEFAULT_NAMESPACE) != identity.namespace:
                continue
            known = exporter.value.get("registered") or exporter.value.get("admin_labels")
            if known and selector.matches(labels_of(exporter)):
                matching.append(name)
        names, next_token = page(matching, str, request.page_size, request.page_token)
        found = [await self.exporter_message(name, state.exporters[name], name in state.online) for name in names]
        return client_pb2.ListExportersResponse(exporters=found, next_page_token=next_token)

    @_refuse_on_errors
    async def GetLease(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        identity = await self.lab.identify(context, CLIENT)
        name = short_name(request.name, "leases", identity.namespace)
        lease = await self.lab.get_lease(identity, name, _seconds(context, WAIT_KEY, 0, MAX_WAIT))
        waiting = not (lease.value.get("exporter") or lease.value.get("ended"))
        return self.lease_message(lease, await self.lab.place(lease) if waiting else None)

    @_refuse_on_errors
    async def ListLeases(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        identity = await self.lab.identify(context, CLIENT)
        leases = await self.lab.leases(identity, only_active=request.only_active)
        if request.filter.strip():
            selector = Selector.parse(request.filter)
            leases = [lease for lease in leases if selector.matches(lease.value.get("tags", {}))]
        leases, next_token = page(leases, lambda lease: lease.name, request.page_size, request.page_token)
        state = await self.lab.store.snapshot()
        messages = []
        for lease in leases:
            waiting = not (lease.value.get("exporter") or lease.value.get("ended"))
            messages.append(self.lease_message(lease, queue_place(state, lease) if waiting else None))
        return client_pb2.ListLeasesResponse(leases=messages, next_page_token=next_token)

    @_refuse_on_errors
    async def CreateLease(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        identity = await self.lab.identify(context, CLIENT)
        if request.parent and request.parent != f"namespaces/{identity.namespace}":
            raise Refused(grpc.StatusCode.PERMISSION_DENIED, f"parent {request.parent!r} is not your namespace")
        lease = request.lease
        if lease.HasField("begin_time"):
            raise Refused(
                grpc.StatusCode.INVALID_ARGUMENT,
                "begin_time: this controller does not schedule leases for later; a lease waits in the queue from now",
            )
        exporter_name = short_name(lease.exporter_name, "exporters", identity.namespace) if lease.exporter_name else ""
        record = await self.lab.create_lease(
            identity,
            lease.selector,
            lease.duration.ToTimedelta().total_seconds(),
            exporter_name=exporter_name,
            lease_id=request.lease_id,
            keepalive=_seconds(context, KEEPALIVE_KEY, *KEEPALIVE_RANGE),
            tags=dict(lease.tags),
        )
        return self.lease_message(record)  # its queue place comes with GetLease, once the scheduler saw it

    @_refuse_on_errors
    async def UpdateLease(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        identity = await self.lab.identify(context, CLIENT)
        name = short_name(request.lease.name, "leases", identity.namespace)
        fields = set(request.update_mask.paths)
        if fields != {"duration"}:
            raise Refused(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"update_mask {sorted(fields)}: this controller changes only a lease's duration",
            )
        lease = await self.lab.change_duration(identity, name, request.lease.duration.ToTimedelta().total_seconds())
        waiting = not lease.value.get("exporter")
        return self.lease_message(lease, await self.lab.place(lease) if waiting else None)

    @_refuse_on_errors
    async def DeleteLease(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        identity = await self.lab.identify(context, CLIENT)
        await self.lab.release(identity, short_name(request.name, "leases", identity.namespace))
        return empty_pb2.Empty()

    @_refuse_on_errors
    async def RotateToken(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        identity = await self.lab.identify(context, CLIENT)
        if request.parent and request.parent != f"namespaces/{identity.namespace}":
            raise Refused(grpc.StatusCode.PERMISSION_DENIED, f"parent {request.parent!r} is not your namespace")
        token = await tokens.rotate(self.lab.store, list(context.invocation_metadata() or ()), CLIENT)
        logger.info("%s rotated its token", identity)
        return client_pb2.RotateTokenResponse(token=token)
