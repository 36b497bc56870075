"""Both ends of a router tunnel: a local socket connection spliced to the router.

The client end accepts connections on a local unix socket (``JUMPSTARTER_HOST``); the exporter
end connects to its session's socket. When the router has a relay port (our controller's, see
:mod:`.relay`) the tunnel is a TLS connection there carrying the bytes as they are; otherwise
(an upstream router, or ``JMP_ROUTER_RELAY=off``) it is ``RouterService.Stream``: bytes go into
DATA frames one way and come out of frames the other; GOAWAY says the sender is done,
RST_STREAM that it gave up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import ssl

import grpc

from ..core.streams import FRAME_DATA, FRAME_GOAWAY, FRAME_RST_STREAM, MAX_FRAME, Frame, decode_frame, encode_frame
from .config import Access
from .relay import MAX_PREAMBLE, PREAMBLE, RELAY_SERVICE, keep_alive

logger = logging.getLogger(__name__)

STREAM_METHOD = "/jumpstarter.v1.RouterService/Stream"
#: Most bytes read from the local socket into one frame; also the local streams' buffer limit, so a
#: burst (an upload) crosses the router in few large frames rather than many 64 KiB ones.
CHUNK = MAX_FRAME
WHERE_METHOD = f"/{RELAY_SERVICE}/Where"
#: Send buffer asked for on the local side of a relay tunnel.
LOCAL_BUFFER = 4 << 20
#: Environment variable: ``off`` makes tunnels use ``RouterService.Stream`` even where a relay is offered.
JMP_ROUTER_RELAY = "JMP_ROUTER_RELAY"
#: Seconds to ask for, reach and finish TLS with a relay before using ``Stream`` instead.
RELAY_CONNECT_TIMEOUT = 5.0
#: Seconds to wait for the relay's answer (it comes when the other side is there: the router's
#: pairing timeout, plus a margin).
RELAY_ANSWER_TIMEOUT = 40.0


class RelayUnreachable(Exception):
    """The relay did not take the connection (nothing was sent there); use ``Stream``."""


class Channels:
    """One channel per router endpoint, shared by the tunnels through it; close them at the end.

    Also remembers, per endpoint, where its relay listens (or that it has none).
    """

    def __init__(self, access: Access, relay: bool | None = None) -> None:
        self.access = access
        self._channels: dict[str, grpc.aio.Channel] = {}
        if relay is None:
            relay = os.environ.get(JMP_ROUTER_RELAY, "").strip().lower() not in ("off", "0", "no", "false")
        self.use_relay = relay
        self._relays: dict[str, tuple[str, int] | None] = {}
        self._ssl: ssl.SSLContext | None = None

    async def relay(self, endpoint: str) -> tuple[str, int] | None:
        """(host, port) of the relay of the router at ``endpoint``, or ``None`` when it has none."""
        if not self.use_relay:
            return None
        if endpoint not in self._relays:
            host = endpoint.rpartition(":")[0].strip("[]")
            where = self.get(endpoint).unary_unary(WHERE_METHOD, request_serializer=None, response_deserializer=None)
            try:
                answer = await where(b"", timeout=RELAY_CONNECT_TIMEOUT)
                port = int(answer.decode("ascii"))
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.UNIMPLEMENTED:
                    return None  # ask again next time
                self._relays[endpoint] = None
            except (ValueError, UnicodeDecodeError):
                self._relays[endpoint] = None
            else:
                self._relays[endpoint] = (host, port) if host and 0 < port < 65536 else None
        return self._relays[endpoint]

    def no_relay(self, endpoint: str) -> None:
        """The relay of ``endpoint`` could not be reached: use ``Stream`` there from now on."""
        self._relays[endpoint] = None

    def ssl_context(self) -> ssl.SSLContext | None:
        """How to reach a relay: TLS trusting the configured CA (or the system's), or plaintext."""
        if self.access.insecure:
            return None
        if self._ssl is None:
            cadata = self.access.ca.decode() if self.access.ca else None
            self._ssl = ssl.create_default_context(cadata=cadata)
        return self._ssl

    def get(self, endpoint: str) -> grpc.aio.Channel:
        if endpoint not in self._channels:
            self._channels[endpoint] = self.access.channel(endpoint)
        return self._channels[endpoint]

    async def close(self) -> None:
        channels, self._channels = list(self._channels.values()), {}
        for channel in channels:
            await channel.close()


async def splice(channels: Channels, endpoint: str, token: str, local: socket.socket, first: bytes = b"") -> None:
    """Carry one local connection (a non-blocking socket) through the router at ``endpoint`` until
    either side ends; ``first`` is what was already read from it (sent before anything else).
    The socket is closed at the end.
    """
    try:
        relay = await channels.relay(endpoint)
        if relay is not None:
            try:
                await _splice_relay(channels, relay, token, local, first)
                return
            except RelayUnreachable as exc:
                logger.warning("the relay of router %s is unreachable (%s); tunnelling through gRPC", endpoint, exc)
                channels.no_relay(endpoint)
        reader, writer = await asyncio.open_unix_connection(sock=local, limit=CHUNK)
    except BaseException:
        local.close()
        raise
    await _splice_stream(channels, endpoint, token, reader, writer, first)


async def _splice_stream(
    channels: Channels,
    endpoint: str,
    token: str,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    first: bytes,
) -> None:
    """Through ``RouterService.Stream``: bytes into DATA frames one way, out of them the other."""
    channel = channels.get(endpoint)
    call = channel.stream_stream(STREAM_METHOD, request_serializer=None, response_deserializer=None)(
        metadata=(("authorization", f"Bearer {token}"),)
    )

    async def upstream() -> None:
        if first:
            await call.write(encode_frame(Frame(first)))
        while data := await reader.read(CHUNK):
            await call.write(encode_frame(Frame(data)))
        await call.write(encode_frame(Frame(b"", FRAME_GOAWAY)))
        await call.done_writing()

    async def downstream() -> None:
        async for raw in call:
            payload, frame_type = decode_frame(raw)
            if frame_type == FRAME_DATA and payload:
                writer.write(payload)
                await writer.drain()
            elif frame_type in (FRAME_GOAWAY, FRAME_RST_STREAM):
                return

    sending = asyncio.create_task(upstream())
    try:
        await downstream()
    except grpc.aio.AioRpcError as exc:
        logger.info("tunnel through %s ended: %s", endpoint, exc.details() or exc.code().name)
    except (ConnectionError, OSError) as exc:
        logger.debug("tunnel through %s: local side went away: %s", endpoint, exc)
    finally:
        sending.cancel()
        with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError, ConnectionError, OSError):
            await sending
        call.cancel()
        writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await writer.wait_closed()


async def _splice_relay(
    channels: Channels, relay: tuple[str, int], token: str, local: socket.socket, first: bytes
) -> None:
    """Through the router's relay: one TLS connection carrying the bytes as they are.

    Both connections are plain asyncio transports handing what one receives straight to the
    other's ``write`` (a full buffer pauses reading the other), with no task or queue per chunk.
    Raises :class:`RelayUnreachable` when the relay cannot be reached, before anything was sent.
    """
    host, port = relay
    loop = asyncio.get_running_loop()
    context = channels.ssl_context()
    options = (
        {"ssl": context, "server_hostname": host, "ssl_handshake_timeout": RELAY_CONNECT_TIMEOUT} if context else {}
    )
    where = f"{host}:{port}"
    remote = _Pipe(where)
    try:
        await asyncio.wait_for(loop.create_connection(lambda: remote, host, port, **options), RELAY_CONNECT_TIMEOUT)
    except (OSError, TimeoutError) as exc:  # ssl.SSLError is an OSError
        raise RelayUnreachable(f"{where}: {exc or type(exc).__name__}") from None
    keep_alive(remote.transport.get_extra_info("socket") if remote.transport else None)
    near = _Pipe(where)
    with contextlib.suppress(OSError):  # fewer, larger writes to the local side (capped by net.core.wmem_max)
        local.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, LOCAL_BUFFER)
    try:
        await loop.connect_accepted_socket(lambda: near, sock=local)
    except OSError:
        remote.close()
        raise
    near.pause()  # nothing goes to the router before the answer
    near.peer, remote.peer = remote, near
    remote.expect_answer(near)
    remote.send(PREAMBLE + token.encode() + b"\n" + first)
    waits = [asyncio.ensure_future(near.closed.wait()), asyncio.ensure_future(remote.closed.wait())]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiting in waits:
            waiting.cancel()
        near.close()
        remote.close()


class _Pipe(asyncio.Protocol):
    """One end of a relay splice: what it receives goes to its peer's transport."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.transport: asyncio.Transport | None = None
        self.peer: _Pipe | None = None
        self.closed = asyncio.Event()
        self._answer: bytearray | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._told = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.set_write_buffer_limits(high=CHUNK)

    def expect_answer(self, near: _Pipe) -> None:
        """The first line received is the relay's answer: ``ok`` starts the copying to ``near``."""
        self._answer = bytearray()
        self._timer = asyncio.get_running_loop().call_later(RELAY_ANSWER_TIMEOUT, self._no_answer)

    def _no_answer(self) -> None:
        self._tell(f"no answer within {RELAY_ANSWER_TIMEOUT:g} s")
        self.close()

    def _tell(self, reason: str) -> None:
        if not self._told:
            self._told = True
            logger.error("router relay %s refused the tunnel: %s", self.where, reason)

    def data_received(self, data: bytes) -> None:
        if self._answer is not None:
            self._answer += data
            line, newline, rest = self._answer.partition(b"\n")
            if not newline:
                if len(self._answer) > MAX_PREAMBLE:
                    self._refused(bytes(self._answer[:80]))
                return
            if line != b"ok":
                self._refused(bytes(line))
                return
            self._answer = None
            if self._timer is not None:
                self._timer.cancel()
            assert self.peer is not None
            self.peer.resume()
            data = bytes(rest)
            if not data:
                return
        if self.peer is not None:
            self.peer.send(data)

    def _refused(self, line: bytes) -> None:
        self._tell(line.decode(errors="replace").strip().removeprefix("error "))
        self.close()

    def send(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def pause(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def pause_writing(self) -> None:
        if self.peer is not None:
            self.peer.pause()

    def resume_writing(self) -> None:
        if self.peer is not None and self._answer is None:  # the local end stays paused until the answer
            self.peer.resume()

    def eof_received(self) -> bool:
        return False  # the transport closes; connection_lost ends the peer

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._answer is not None and not (self.peer is not None and self.peer.closed.is_set()):
            self._tell(f"closed the connection ({exc})" if exc else "closed the connection")
        elif exc is not None:
            logger.info("tunnel through relay %s ended: %s", self.where, exc)
        self.closed.set()
        if self.peer is not None:
            self.peer.close()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
