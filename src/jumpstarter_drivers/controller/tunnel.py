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
from . import links
from .config import Access
from .links import Link, handshake
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

    Both sockets are :class:`~.links.Link` s handing what one reads straight to the other (TLS
    read and written by OpenSSL directly, no task or queue per chunk). Raises
    :class:`RelayUnreachable` when the relay cannot be reached, before anything was sent.
    """
    host, port = relay
    where = f"{host}:{port}"
    try:
        remote = await _open(host, port, channels.ssl_context())
    except (OSError, TimeoutError) as exc:  # ssl.SSLError is an OSError
        raise RelayUnreachable(f"{where}: {exc or type(exc).__name__}") from None
    with contextlib.suppress(OSError):  # fewer, larger writes to the local side (capped by net.core.wmem_max)
        local.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, LOCAL_BUFFER)
    near, far = Link(local), Link(remote)
    waits: list[asyncio.Future] = []
    try:
        far.write(PREAMBLE + token.encode() + b"\n" + first)
        rest = await _answer(far, where)
        if rest is None:
            return
        if rest:
            near.write(rest)
        links.splice(near, far)
        waits = [asyncio.ensure_future(near.closed.wait()), asyncio.ensure_future(far.closed.wait())]
        await asyncio.wait(waits, return_when=asyncio.ALL_COMPLETED)
    finally:
        for waiting in waits:
            waiting.cancel()
        near.abort()
        far.abort()


async def _open(host: str, port: int, context: ssl.SSLContext | None) -> socket.socket:
    """A connected non-blocking socket to ``host:port``, TLS finished when ``context`` is given."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    if not infos:
        raise OSError(f"cannot resolve {host}")
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setblocking(False)
        async with asyncio.timeout(RELAY_CONNECT_TIMEOUT):
            await loop.sock_connect(sock, address)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        keep_alive(sock)
        if context is None:
            return sock
        secured = context.wrap_socket(sock, server_hostname=host, do_handshake_on_connect=False)
        await handshake(secured, RELAY_CONNECT_TIMEOUT)
        return secured
    except BaseException:
        sock.close()
        raise


async def _answer(far: Link, where: str) -> bytes | None:
    """The relay's answer line: what came after it when it is ``ok``; ``None`` (logged) otherwise."""
    head = bytearray()
    got = asyncio.get_running_loop().create_future()

    def collect(data: bytes) -> None:
        head.extend(data)
        if (b"\n" in head or len(head) > MAX_PREAMBLE) and not got.done():
            far.stop_reading()
            got.set_result(None)

    far.sink = collect
    far.on_end = lambda error: got.done() or got.set_result(None)
    far.start_reading()
    try:
        await asyncio.wait_for(got, RELAY_ANSWER_TIMEOUT)
    except TimeoutError:
        logger.error("router relay %s refused the tunnel: no answer within %g s", where, RELAY_ANSWER_TIMEOUT)
        return None
    finally:
        far.sink = far.on_end = None
    line, newline, rest = bytes(head).partition(b"\n")
    if newline and line == b"ok":
        return rest
    reason = line[:MAX_PREAMBLE].decode(errors="replace").strip().removeprefix("error ") or "closed the connection"
    logger.error("router relay %s refused the tunnel: %s", where, reason)
    return None
