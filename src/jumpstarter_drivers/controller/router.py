"""``jumpstarter.v1.RouterService``: pairs a client's stream with its exporter's, by router token.

A Dial records a stream id and the digest of a one-time token in etcd; the client and the
exporter each open ``Stream`` on the replica the Dial named, with ``authorization: Bearer
<stream>.<secret>``. The first to arrive waits (:data:`PAIR_TIMEOUT`) for the other; then frames
are copied both ways as they are, without decoding: each side's reader writes straight into the
other side's call and reads the next frame only once that write is done (backpressure, and at most
one frame in flight per direction). The tunnel ends when either side ends or goes away (the other side
gets ``UNAVAILABLE``), and when the lease ends.

A side may also come through the relay port instead (:mod:`.relay`: the same token, then plain
bytes); two relay sides are copied transport to transport, and a relay side paired with a
``Stream`` side is bridged (bytes wrapped into DATA frames and taken out of them).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import ssl
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc

from ..core.streams import FRAME_DATA, FRAME_GOAWAY, FRAME_RST_STREAM, MAX_FRAME, Frame, decode_frame, encode_frame
from .relay import RELAY_SERVICE, WRITE_HIGH, RelayConnection
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
    """One stream of a tunnel: written only by the other side's reader (one writer).

    A ``Stream`` call has its ``context``; a relay connection its ``relay``.
    """

    stream: str
    context: grpc.aio.ServicerContext | None = None
    relay: RelayConnection | None = None
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
        #: The relay's port (0: no relay), and its connections that have not named a token yet.
        self.relay_port = 0
        self.relay_pending = 0
        self.relays: set[RelayConnection] = set()
        #: The relay's TLS (``None``: plaintext).
        self.relay_tls: ssl.SSLContext | None = None
        #: Tunnel sides that came through the relay since start.
        self.relayed = 0

    def handlers(self) -> tuple[grpc.GenericRpcHandler, ...]:
        """``RouterService.Stream`` taking and giving frames as raw bytes, and ``Where`` for the relay."""
        stream = grpc.method_handlers_generic_handler(
            "jumpstarter.v1.RouterService", {"Stream": grpc.stream_stream_rpc_method_handler(self.Stream)}
        )
        where = grpc.method_handlers_generic_handler(
            RELAY_SERVICE, {"Where": grpc.unary_unary_rpc_method_handler(self.Where)}
        )
        return (stream, where) if self.relay_port else (stream,)

    async def Where(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        """The relay's port, as ASCII digits (the host is the router endpoint's)."""
        return str(self.relay_port).encode()

    async def _authorize(self, token: str) -> Any:
        stream, _, secret = token.partition(".")
        record = await self.store.stream(stream) if stream and secret else None
        if record is None or not hmac.compare_digest(record.value.get("digest", ""), digest(secret)):
            raise Refused(grpc.StatusCode.UNAUTHENTICATED, "unknown, used or expired router token; Dial again")
        return record

    async def Stream(self, request_iterator: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> Any:
        me = _Side("", context=context)
        try:
            token, _ = bearer(context.invocation_metadata() or ())
            me, record, peer = await self._pair(me, token)
        except Refused as exc:
            await context.abort(exc.code, str(exc))
            return
        except StoreUnavailable as exc:
            if me.peer is not None:
                me.peer.fail(str(exc))
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
            return
        self._tunnels += 1
        try:
            await self._carry(me, request_iterator, context, watch_lease=peer is not None, lease=record.value["lease"])
        finally:
            self._tunnels -= 1
        if me.failure:
            await context.abort(grpc.StatusCode.UNAVAILABLE, me.failure)

    async def _pair(self, me: _Side, token: str) -> tuple[_Side, Any, _Side | None]:
        """Authorize ``token`` and pair ``me`` with the other side: (me, token record, the peer if it was
        there first)."""
        record = await self._authorize(token)
        if self._tunnels >= MAX_TUNNELS:
            raise Refused(grpc.StatusCode.RESOURCE_EXHAUSTED, f"this router carries {MAX_TUNNELS} tunnels already")
        me.stream = record.name
        peer = self._waiting.pop(record.name, None)
        if peer is None:
            await self._wait_for_peer(me)
        else:
            me.peer, peer.peer = peer, me
            for side in (me, peer):
                if side.relay is not None:
                    side.relay.paired()  # before either side's bytes can reach it
            self.paired += 1
            peer.paired.set()
            await self.store.take_stream(record)
        return me, record, peer

    async def relay(self, connection: RelayConnection, token: str) -> None:
        """A relay connection that named ``token``: pair it, carry it, close it."""
        me = _Side("", relay=connection)
        try:
            me, record, peer = await self._pair(me, token)
        except asyncio.CancelledError:
            if me.peer is not None:
                me.peer.fail("the other end of the tunnel went away")
            raise
        except Refused as exc:
            connection.refuse(exc.code, str(exc))
            return
        except StoreUnavailable as exc:
            if me.peer is not None:
                me.peer.fail(str(exc))
            connection.refuse(grpc.StatusCode.UNAVAILABLE, str(exc))
            return
        self.relayed += 1
        self._tunnels += 1
        try:
            await self._carry_relay(me, connection, watch_lease=peer is not None, lease=record.value["lease"])
        finally:
            self._tunnels -= 1
            connection.close(failed=me.failure is not None)

    def close_relays(self) -> None:
        """Cut every relay connection (the replica stops)."""
        for connection in list(self.relays):
            connection.close(failed=True)

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
        """Copy this side's frames straight into the other side until either side is done.

        No queue and no extra task per frame: the reader awaits the peer's write, which is the
        backpressure, and each direction costs one read and one write on the event loop. Frames go
        to a ``Stream`` peer as they are; a relay peer gets their DATA payloads.
        """
        peer = me.peer
        assert peer is not None

        async def inbound() -> None:
            try:
                async for frame in requests:
                    if peer.done.is_set():
                        return
                    if peer.relay is None:
                        assert peer.context is not None
                        await peer.context.write(frame)
                        continue
                    payload, frame_type = decode_frame(frame)
                    if frame_type in (FRAME_GOAWAY, FRAME_RST_STREAM):
                        break
                    if frame_type == FRAME_DATA and payload:
                        peer.relay.write(payload)
                        await peer.relay.drain()
            except (grpc.RpcError, ConnectionError, grpc.aio.UsageError, ValueError) as exc:
                peer.fail(f"the other end of the tunnel went away ({type(exc).__name__})")
                return
            except asyncio.CancelledError:
                peer.fail("the other end of the tunnel went away (cancelled)")
                raise
            peer.done.set()

        tasks = [asyncio.create_task(inbound())]
        if watch_lease:
            tasks.append(asyncio.create_task(self._cut_at_end(lease, me, peer)))
        try:
            await me.done.wait()
        finally:
            me.done.set()  # the peer's reader stops writing here
            await _stop(tasks)

    async def _carry_relay(self, me: _Side, connection: RelayConnection, watch_lease: bool, lease: str) -> None:
        """Hand this relay connection's bytes to the other side until either side is done.

        To another relay connection they go transport to transport (its full buffer pauses reading
        here); to a ``Stream`` peer through a bridge that wraps them into frames.
        """
        peer = me.peer
        assert peer is not None
        bridge: asyncio.Task | None = None
        if peer.relay is not None:
            other = peer.relay
            other.on_pause, other.on_resume = connection.pause_reading, connection.resume_reading

            def ended(error: BaseException | None) -> None:
                if error is None:
                    peer.done.set()
                else:
                    peer.fail(f"the other end of the tunnel went away ({type(error).__name__})")

            connection.on_end = ended
            connection.accept(other.write)
        else:
            into = _IntoStream(connection, peer)
            connection.on_end = into.end
            bridge = asyncio.create_task(into.run())
            connection.accept(into.push)
        tasks = [bridge] if bridge is not None else []
        if watch_lease:
            tasks.append(asyncio.create_task(self._cut_at_end(lease, me, peer)))
        waits = [asyncio.create_task(me.done.wait()), asyncio.create_task(connection.closed.wait())]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            if bridge is not None and not me.done.is_set():
                # this side closed: the bridge hands on what it still holds, then ends the Stream side
                await asyncio.wait([bridge, waits[0]], timeout=PAIR_TIMEOUT, return_when=asyncio.FIRST_COMPLETED)
        finally:
            me.done.set()
            await _stop(waits + tasks)
            peer.done.set()  # nothing more comes from here (a no-op when it already ended or failed)

    async def _cut_at_end(self, lease: str, *sides: _Side) -> None:
        """Fail both sides of a tunnel when its lease ends."""
        try:
            async for change in self.store.changes(LEASES, name=lease):
                if isinstance(change, str):
                    break
        except StoreUnavailable as exc:
            logger.debug("tunnel of lease %s: %s; not cut at its end", lease, exc)
            return
        for side in sides:
            side.fail(f"lease {lease} ended")


class _IntoStream:
    """Bytes from a relay connection into a ``Stream`` peer's call, as DATA frames of up to
    :data:`MAX_FRAME` bytes (several small reads joined); holds at most about :data:`WRITE_HIGH`
    bytes before reading the relay connection pauses."""

    def __init__(self, source: RelayConnection, peer: _Side) -> None:
        self.source, self.peer = source, peer
        self.chunks: deque[bytes] = deque()
        self.size = 0
        self.paused = False
        self.ready = asyncio.Event()
        self.ended = False
        self.error: BaseException | None = None

    def push(self, data: bytes) -> None:
        self.chunks.append(data)
        self.size += len(data)
        self.ready.set()
        if self.size > WRITE_HIGH and not self.paused:
            self.paused = True
            self.source.pause_reading()

    def end(self, error: BaseException | None) -> None:
        self.ended, self.error = True, error
        self.ready.set()

    async def run(self) -> None:
        context = self.peer.context
        assert context is not None
        try:
            while self.chunks or not self.ended:
                if not self.chunks:
                    self.ready.clear()
                    await self.ready.wait()
                    continue
                parts, size = [], 0
                while self.chunks and size < MAX_FRAME:
                    parts.append(self.chunks.popleft())
                    size += len(parts[-1])
                self.size -= size
                if self.peer.done.is_set():
                    return
                await context.write(encode_frame(Frame(b"".join(parts))))
                if self.paused and self.size <= WRITE_HIGH // 2:
                    self.paused = False
                    self.source.resume_reading()
            if self.error is not None:
                self.peer.fail(f"the other end of the tunnel went away ({type(self.error).__name__})")
                return
            await context.write(encode_frame(Frame(b"", FRAME_GOAWAY)))
            self.peer.done.set()
        except (grpc.RpcError, ConnectionError, grpc.aio.UsageError) as exc:
            self.peer.fail(f"the other end of the tunnel went away ({type(exc).__name__})")


async def _stop(tasks: list[asyncio.Task]) -> None:
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError, grpc.RpcError, ConnectionError):
            await task
