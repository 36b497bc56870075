"""``jumpstarter.v1.RouterService``: pairs a client's stream with its exporter's, by router token.

A Dial records a stream id and the digest of a one-time token in etcd; the client and the
exporter each open ``Stream`` on the replica the Dial named, with ``authorization: Bearer
<stream>.<secret>``. The first to arrive waits (:data:`PAIR_TIMEOUT`) for the other; then frames
are copied both ways as they are, without decoding: each side's reader writes straight into the
other side's call and reads the next frame only once that write is done (backpressure, and at most
one frame in flight per direction). The tunnel ends when either side ends or goes away (the other side
gets ``UNAVAILABLE``), and when the lease ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc

from .store import LEASES, Store, StoreUnavailable
from .tokens import Refused, bearer, digest

logger = logging.getLogger(__name__)

#: Seconds the first side of a tunnel waits for the second.
PAIR_TIMEOUT = 30.0
#: Streams that may wait for their other side at once (tokens come only from authenticated Dials).
MAX_WAITING = 1024
#: Tunnels one replica carries at once.
MAX_TUNNELS = 4096

@dataclass(eq=False)
class _Side:
    """One stream of a tunnel: its context is written only by the other side's reader (one writer)."""

    stream: str
    context: grpc.aio.ServicerContext
    paired: asyncio.Event = field(default_factory=asyncio.Event)
    #: Set when nothing more will be written to this side: the other side ended, failed or left.
    done: asyncio.Event = field(default_factory=asyncio.Event)
    peer: _Side | None = None
    failure: str | None = None

    def fail(self, reason: str) -> None:
        """End this side's output with ``reason`` at once."""
        if not self.done.is_set():
            self.failure = reason
            self.done.set()


class Router:
    """The router of one replica: tunnels live here, tokens and their leases in etcd."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._waiting: dict[str, _Side] = {}
        self._tunnels = 0
        #: Tunnels paired since start (one per client connection through a lease).
        self.paired = 0

    def handler(self) -> grpc.GenericRpcHandler:
        """``RouterService.Stream`` taking and giving frames as raw bytes."""
        return grpc.method_handlers_generic_handler(
            "jumpstarter.v1.RouterService", {"Stream": grpc.stream_stream_rpc_method_handler(self.Stream)}
        )

    async def _authorize(self, context: grpc.aio.ServicerContext) -> Any:
        token, _ = bearer(context.invocation_metadata() or ())
        stream, _, secret = token.partition(".")
        record = await self.store.stream(stream) if stream and secret else None
        if record is None or not hmac.compare_digest(record.value.get("digest", ""), digest(secret)):
            raise Refused(grpc.StatusCode.UNAUTHENTICATED, "unknown, used or expired router token; Dial again")
        return record

    async def Stream(self, request_iterator: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> Any:
        try:
            record = await self._authorize(context)
            if self._tunnels >= MAX_TUNNELS:
                raise Refused(grpc.StatusCode.RESOURCE_EXHAUSTED, f"this router carries {MAX_TUNNELS} tunnels already")
            me = _Side(record.name, context)
            peer = self._waiting.pop(record.name, None)
            if peer is None:
                await self._wait_for_peer(me)
            else:
                me.peer, peer.peer = peer, me
                self.paired += 1
                peer.paired.set()
                await self.store.take_stream(record)
        except Refused as exc:
            await context.abort(exc.code, str(exc))
            return
        except StoreUnavailable as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
            return
        self._tunnels += 1
        try:
            await self._carry(me, request_iterator, context, watch_lease=peer is not None, lease=record.value["lease"])
        finally:
            self._tunnels -= 1
        if me.failure:
            await context.abort(grpc.StatusCode.UNAVAILABLE, me.failure)

    async def _wait_for_peer(self, me: _Side) -> None:
        if len(self._waiting) >= MAX_WAITING:
            raise Refused(
                grpc.StatusCode.RESOURCE_EXHAUSTED, f"{MAX_WAITING} streams wait for their other side already"
            )
        self._waiting[me.stream] = me
        try:
            await asyncio.wait_for(me.paired.wait(), PAIR_TIMEOUT)
        except TimeoutError:
            raise Refused(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"the other side of the tunnel did not connect within {PAIR_TIMEOUT:g} s (is the exporter listening?)",
            ) from None
        finally:
            if self._waiting.get(me.stream) is me:
                del self._waiting[me.stream]

    async def _carry(
        self,
        me: _Side,
        requests: AsyncIterator[bytes],
        context: grpc.aio.ServicerContext,
        watch_lease: bool,
        lease: str,
    ) -> None:
        """Copy this side's frames straight into the other side's call until either side is done.

        No queue and no extra task per frame: the reader awaits the peer's write, which is the
        backpressure, and each direction costs one read and one write on the event loop.
        """
        peer = me.peer
        assert peer is not None

        async def inbound() -> None:
            try:
                async for frame in requests:
                    if peer.done.is_set():
                        return
                    await peer.context.write(frame)
            except (grpc.RpcError, ConnectionError, grpc.aio.UsageError) as exc:
                peer.fail(f"the other end of the tunnel went away ({type(exc).__name__})")
                return
            except asyncio.CancelledError:
                peer.fail("the other end of the tunnel went away (cancelled)")
                raise
            peer.done.set()

        async def lease_end() -> None:
            try:
                async for change in self.store.changes(LEASES, name=lease):
                    if isinstance(change, str):
                        break
            except StoreUnavailable as exc:
                logger.debug("tunnel of lease %s: %s; not cut at its end", lease, exc)
                return
            for side in (me, peer):
                side.fail(f"lease {lease} ended")

        tasks = [asyncio.create_task(inbound())]
        if watch_lease:
            tasks.append(asyncio.create_task(lease_end()))
        try:
            await me.done.wait()
        finally:
            me.done.set()  # the peer's reader stops writing here
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, grpc.RpcError, ConnectionError):
                    await task
