"""The lab's state in etcd: the only module that speaks etcd.

Everything a controller replica knows lives in these keys (under ``/jumpstarter/``), so any
replica can answer any call and a restarted one picks up where another left off:

- ``lab/exporters/<name>``: an exporter's record (labels, uuid, last reported status);
- ``lab/online/<name>``: present while a replica holds the exporter's Status stream, attached
  to an etcd lease of :data:`PRESENCE_TTL` seconds, so a vanished exporter or replica goes
  offline on its own;
- ``lab/leases/<id>``: a lease that waits or is active; its key's create revision is its place
  in the queue (request order);
- ``lab/assignments/<exporter>``: the lease holding an exporter; only ever created by a
  transaction that checks the key does not exist, so an exporter never has two holders;
- ``lab/holders/<id>``: present while the lease's holder keeps it alive (etcd lease);
- ``history/leases/<id>``: ended leases, kept for :data:`HISTORY_TTL` seconds;
- ``auth/tokens/<sha256>``: issued tokens, stored hashed;
- ``router/dials/<lease>/<stream>`` and ``router/streams/<stream>``: a Dial waiting for its
  exporter's Listen, and the router token it may be paired with, both short-lived.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Self, TypeVar

import aetcd
import aetcd.exceptions
import aetcd.utils
import grpc
from aetcd import rpc

from ..core.errors import JumpstarterError
from .priority import queue_order

logger = logging.getLogger(__name__)

T = TypeVar("T")

ROOT = "/jumpstarter/"
LAB = "lab/"
EXPORTERS = LAB + "exporters/"
ONLINE = LAB + "online/"
LEASES = LAB + "leases/"
ASSIGNMENTS = LAB + "assignments/"
HOLDERS = LAB + "holders/"
HISTORY = "history/leases/"
TOKENS = "auth/tokens/"
DIALS = "router/dials/"
STREAMS = "router/streams/"

#: Seconds an exporter stays online without a replica refreshing its presence.
PRESENCE_TTL = 5
#: Seconds an ended lease stays readable (GetLease, lease list).
HISTORY_TTL = 3600
#: Seconds a dial waits for its exporter and its router token stays valid.
DIAL_TTL = 30
#: Seconds one etcd request may take.
REQUEST_TIMEOUT = 5


class StoreUnavailable(JumpstarterError, ConnectionError):
    """etcd does not answer (down, unreachable, or lost its quorum)."""


@dataclass(frozen=True)
class Record:
    """One key's JSON value with the revisions that order and guard it."""

    name: str
    value: dict[str, Any]
    create_revision: int
    mod_revision: int
    lease: int = 0


@dataclass
class LabState:
    """A consistent read of the whole lab at one etcd revision."""

    revision: int
    exporters: dict[str, Record] = field(default_factory=dict)
    online: dict[str, Record] = field(default_factory=dict)
    leases: dict[str, Record] = field(default_factory=dict)
    assignments: dict[str, str] = field(default_factory=dict)
    holders: set[str] = field(default_factory=set)

    def queue(self) -> list[Record]:
        """Leases still waiting for an exporter: by priority, then in request order."""
        waiting = [lease for lease in self.leases.values() if not lease.value.get("exporter")]
        return sorted(waiting, key=queue_order)


def _encode(value: dict[str, Any]) -> bytes:
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode()


def _decode(raw: bytes) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _target(endpoints: list[str]) -> tuple[str, int]:
    """aetcd joins host and port into one gRPC target; a list of members becomes one ``ipv4:`` target
    whose addresses gRPC fails over between."""
    if not endpoints:
        raise JumpstarterError("no etcd endpoint given; give HOST:PORT of an etcd member")
    for endpoint in endpoints:
        host, sep, port = endpoint.rpartition(":")
        if not (sep and host and port.isdigit()):
            raise JumpstarterError(f"etcd endpoint {endpoint!r}: expected HOST:PORT, e.g. 127.0.0.1:2379")
    if len(endpoints) == 1:
        host, _, port = endpoints[0].rpartition(":")
        return host, int(port)
    *first, last = endpoints
    host, _, port = last.rpartition(":")
    return "ipv4:" + ",".join(first) + "," + host, int(port)


class Store:
    """The lab's keys in etcd, read and changed in the lab's terms; use ``async with``."""

    def __init__(self, endpoints: list[str], root: str = ROOT) -> None:
        self.endpoints = list(endpoints)
        self.root = root
        host, port = _target(self.endpoints)
        self._client = aetcd.Client(host=host, port=port, timeout=REQUEST_TIMEOUT)

    async def __aenter__(self) -> Self:
        await self._call(self._client.connect)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        try:
            await self._client.close()
        except (TimeoutError, aetcd.exceptions.ClientError, grpc.RpcError) as exc:
            logger.debug("closing the etcd client: %s", exc)

    # plumbing --------------------------------------------------------------------------------

    def _key(self, name: str) -> bytes:
        return (self.root + name).encode()

    async def _call(self, func: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        """``func(...)``; a call refused as UNAVAILABLE (not applied) is tried once more per further member, since
        the channel moves to the next member only after a call failed on the dead one."""
        for _ in range(len(self.endpoints) - 1):
            try:
                return await func(*args, **kwargs)
            except aetcd.exceptions.ConnectionFailedError as exc:
                logger.debug("etcd call failed (%s); trying the next member", exc or type(exc).__name__)
        try:
            return await func(*args, **kwargs)
        except (aetcd.exceptions.ConnectionFailedError, aetcd.exceptions.ConnectionTimeoutError) as exc:
            raise StoreUnavailable(
                f"etcd at {', '.join(self.endpoints)} does not answer ({type(exc).__name__}); is it running?"
            ) from None
        except aetcd.exceptions.ClientError as exc:
            raise StoreUnavailable(f"etcd at {', '.join(self.endpoints)} failed: {exc or type(exc).__name__}") from None

    def _record(self, kv: Any, prefix: str) -> Record:
        name = kv.key.decode()[len(self.root) + len(prefix) :]
        return Record(name, _decode(kv.value), kv.create_revision, kv.mod_revision, kv.lease)

    async def _get(self, prefix: str, name: str) -> Record | None:
        found = await self._call(self._client.get, self._key(prefix + name))
        return None if found is None else self._record(found, prefix)

    async def _range(self, prefix: str) -> tuple[int, list[Record]]:
        found = await self._call(self._client.get_prefix, self._key(prefix))
        return found.header.revision, [self._record(kv, prefix) for kv in found]

    def _put(self, prefix: str, name: str, value: dict[str, Any], lease: int = 0) -> Any:
        return self._client.transactions.put(self._key(prefix + name), _encode(value), lease=lease or None)

    def _delete(self, prefix: str, name: str) -> Any:
        return self._client.transactions.delete(self._key(prefix + name))

    async def _txn(self, compare: list[Any], success: list[Any]) -> bool:
        succeeded, _ = await self._call(self._client.transaction, compare=compare, success=success, failure=[])
        return bool(succeeded)

    async def _grant(self, ttl: int) -> int:
        lease = await self._call(self._client.lease, ttl)
        return int(lease.id)

    async def refresh(self, etcd_lease: int) -> bool:
        """Keep an etcd lease alive once; ``False`` when it already expired."""
        reply = await self._call(self._client.refresh_lease, etcd_lease)
        return reply is not None and reply.TTL > 0

    async def revoke(self, etcd_lease: int) -> None:
        """End an etcd lease now (its keys go with it); an expired one is fine."""
        try:
            await self._call(self._client.revoke_lease, etcd_lease)
        except StoreUnavailable as exc:
            if "not found" not in str(exc):
                raise

    # the whole lab ---------------------------------------------------------------------------

    async def snapshot(self) -> LabState:
        """Exporters, presence, leases, assignments and holders, read at one revision."""
        found = await self._call(self._client.get_prefix, self._key(LAB))
        state = LabState(revision=found.header.revision)
        for kv in found:
            key = kv.key.decode()[len(self.root) :]
            for prefix, target in ((EXPORTERS, state.exporters), (ONLINE, state.online), (LEASES, state.leases)):
                if key.startswith(prefix):
                    target[key[len(prefix) :]] = self._record(kv, prefix)
                    break
            else:
                if key.startswith(ASSIGNMENTS):
                    state.assignments[key[len(ASSIGNMENTS) :]] = kv.value.decode()
                elif key.startswith(HOLDERS):
                    state.holders.add(key[len(HOLDERS) :])
        return state

    async def changes(
        self, prefix: str, start_revision: int | None = None, name: str | None = None
    ) -> AsyncIterator[Record | str]:
        """Each change under ``prefix`` (or of the one key ``prefix + name``) from ``start_revision`` on:
        a :class:`Record` for a put, the key's name for a delete. Ends with :class:`StoreUnavailable`
        when etcd goes away.

        Each watch is its own etcd Watch stream (aetcd multiplexes all watches on one stream, and
        under load that stream stopped delivering events in our tests).
        """
        await self._call(self._client.connect)
        key = self._key(prefix + (name or ""))
        create = rpc.WatchCreateRequest(key=key, start_revision=start_revision or 0)
        if name is None:
            create.range_end = aetcd.utils.prefix_range_end(key)
        stub = rpc.WatchStub(self._client.channel)
        held_open = asyncio.Event()  # never set: etcd ends a watch stream whose client stops sending

        async def requests() -> AsyncIterator[Any]:
            yield rpc.WatchRequest(create_request=create)
            await held_open.wait()

        call = stub.Watch(requests())
        try:
            async for response in call:
                if response.canceled or response.compact_revision:
                    raise StoreUnavailable(
                        f"etcd cancelled a watch of {prefix}{name or ''}: {response.cancel_reason or 'compacted'}"
                    )
                for event in response.events:
                    if event.type == rpc.Event.PUT:
                        yield self._record(event.kv, prefix)
                    else:
                        yield event.kv.key.decode()[len(self.root) + len(prefix) :]
            raise StoreUnavailable("the etcd watch ended; etcd went away")
        except grpc.aio.AioRpcError as exc:
            raise StoreUnavailable(f"the etcd watch failed: {exc.details() or exc.code().name}") from None
        finally:
            call.cancel()

    async def assignment(self, exporter: str) -> tuple[int, str | None]:
        """The revision read at, and the lease holding ``exporter`` (``None``: free)."""
        found = await self._call(self._client.get_prefix, self._key(ASSIGNMENTS + exporter))
        for kv in found:
            if kv.key == self._key(ASSIGNMENTS + exporter):
                return found.header.revision, kv.value.decode()
        return found.header.revision, None

    # tokens ----------------------------------------------------------------------------------

    async def add_token(self, digest: str, record: dict[str, Any]) -> None:
        await self._call(self._client.put, self._key(TOKENS + digest), _encode(record))

    async def token(self, digest: str) -> dict[str, Any] | None:
        found = await self._get(TOKENS, digest)
        return None if found is None else found.value

    async def tokens(self) -> list[Record]:
        return (await self._range(TOKENS))[1]

    async def remove_token(self, digest: str) -> None:
        await self._call(self._client.delete, self._key(TOKENS + digest))

    # exporters -------------------------------------------------------------------------------

    async def exporters(self) -> dict[str, Record]:
        """Every exporter's record, by name."""
        return {record.name: record for record in (await self._range(EXPORTERS))[1]}

    async def exporter(self, name: str) -> Record | None:
        return await self._get(EXPORTERS, name)

    async def put_exporter(self, name: str, record: dict[str, Any]) -> None:
        await self._call(self._client.put, self._key(EXPORTERS + name), _encode(record))

    async def update_exporter(self, name: str, change: Callable[[dict[str, Any]], dict[str, Any]]) -> dict[str, Any]:
        """Apply ``change`` to the exporter's record (a compare-and-swap, retried on a race)."""
        while True:
            current = await self.exporter(name)
            value = change(dict(current.value) if current else {})
            key = self._key(EXPORTERS + name)
            guard = self._client.transactions.mod(key) == (current.mod_revision if current else 0)
            if await self._txn([guard], [self._put(EXPORTERS, name, value)]):
                return value

    async def go_online(self, name: str, value: dict[str, Any]) -> int:
        """Mark ``name`` online under a fresh etcd lease of :data:`PRESENCE_TTL` s; returns that lease."""
        etcd_lease = await self._grant(PRESENCE_TTL)
        await self._call(self._client.put, self._key(ONLINE + name), _encode(value), lease=etcd_lease)
        return etcd_lease

    # leases ----------------------------------------------------------------------------------

    async def add_lease(self, name: str, value: dict[str, Any], holder_ttl: int = 0) -> Record:
        """Queue a new lease (fails if the name exists); with ``holder_ttl`` its holder must keep it alive."""
        key = self._key(LEASES + name)
        success = []
        if holder_ttl:
            value = {**value, "holder": await self._grant(holder_ttl)}
            success.append(self._put(HOLDERS, name, {}, lease=value["holder"]))
        success.insert(0, self._put(LEASES, name, value))
        unused = [
            self._client.transactions.create(key) == 0,
            self._client.transactions.create(self._key(HISTORY + name)) == 0,
        ]
        if not await self._txn(unused, success):
            if holder_ttl:
                await self.revoke(value["holder"])
            raise KeyError(name)
        found = await self._get(LEASES, name)
        assert found is not None
        return found

    async def lease(self, name: str) -> Record | None:
        """A waiting or active lease, else an ended one from the history, else ``None``."""
        return await self._get(LEASES, name) or await self._get(HISTORY, name)

    async def ended_leases(self) -> list[Record]:
        return (await self._range(HISTORY))[1]

    async def assign(self, lease: Record, exporter: str, begin: float, end: float) -> bool:
        """Give ``exporter`` to ``lease`` if the exporter has no lease and the lease did not change."""
        return await self.assign_all([(lease, exporter, end)], begin)

    async def assign_all(self, plan: list[tuple[Record, str, float]], begin: float) -> bool:
        """Give each lease its exporter (until its end time) in one transaction: all of them, or none
        if any exporter is taken or any lease changed since it was read."""
        compare, success = [], []
        for lease, exporter, end in plan:
            assignment = self._key(ASSIGNMENTS + exporter)
            compare.append(self._client.transactions.create(assignment) == 0)
            compare.append(self._client.transactions.mod(self._key(LEASES + lease.name)) == lease.mod_revision)
            value = {**lease.value, "exporter": exporter, "begin": begin, "end": end, "queued": lease.create_revision}
            success.append(self._client.transactions.put(assignment, lease.name.encode()))
            success.append(self._put(LEASES, lease.name, value))
        return await self._txn(compare, success)

    async def update_lease(self, lease: Record, value: dict[str, Any]) -> bool:
        """Replace ``lease``'s value, unless the lease changed (or ended) since it was read."""
        compare = [self._client.transactions.mod(self._key(LEASES + lease.name)) == lease.mod_revision]
        return await self._txn(compare, [self._put(LEASES, lease.name, value)])

    async def end_lease(self, lease: Record, reason: str, message: str, now: float) -> bool:
        """Move ``lease`` to the history and free its exporter, unless it changed since it was read."""
        history = await self._grant(HISTORY_TTL)
        value = {**lease.value, "ended": now, "reason": reason, "message": message}
        success = [
            self._delete(LEASES, lease.name),
            self._delete(HOLDERS, lease.name),
            self._put(HISTORY, lease.name, value, history),
        ]
        compare = [self._client.transactions.mod(self._key(LEASES + lease.name)) == lease.mod_revision]
        exporter = lease.value.get("exporter")
        if exporter:
            key = self._key(ASSIGNMENTS + exporter)
            inner = self._client.transactions.txn(
                compare=[self._client.transactions.value(key) == lease.name.encode()],
                success=[self._client.transactions.delete(key)],
                failure=[],
            )
            success.append(inner)
        ended = await self._txn(compare, success)
        if lease.value.get("holder"):
            await self.revoke(lease.value["holder"])
        if not ended:
            await self.revoke(history)
        return ended

    # router ----------------------------------------------------------------------------------

    async def add_dial(self, lease: str, stream: str, dial: dict[str, Any], token_digest: str) -> None:
        """Record a client's Dial for the exporter's Listen, and the stream's router token digest."""
        etcd_lease = await self._grant(DIAL_TTL)
        await self._txn(
            [],
            [
                self._put(DIALS, f"{lease}/{stream}", dial, etcd_lease),
                self._put(
                    STREAMS, stream, {"lease": lease, "digest": token_digest, "ttl_lease": etcd_lease}, etcd_lease
                ),
            ],
        )

    async def dials(self, lease: str) -> tuple[int, list[Record]]:
        """The dials waiting for ``lease``'s exporter, and the revision they were read at."""
        return await self._range(f"{DIALS}{lease}/")

    async def stream(self, stream: str) -> Record | None:
        return await self._get(STREAMS, stream)

    async def take_stream(self, stream: Record) -> None:
        """A router pairing used ``stream``: its dial and token are spent."""
        await self.revoke(int(stream.value.get("ttl_lease") or 0))
