"""Both ends of a router tunnel: a local socket connection spliced to ``RouterService.Stream``.

The client end accepts connections on a local unix socket (``JUMPSTARTER_HOST``); the exporter
end connects to its session's socket. Each copies bytes into DATA frames one way and frames back
into bytes the other; GOAWAY says the sender is done, RST_STREAM that it gave up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import grpc

from ..core.streams import FRAME_DATA, FRAME_GOAWAY, FRAME_RST_STREAM, MAX_FRAME, Frame, decode_frame, encode_frame
from .config import Access

logger = logging.getLogger(__name__)

STREAM_METHOD = "/jumpstarter.v1.RouterService/Stream"
#: Most bytes read from the local socket into one frame; also the local streams' buffer limit, so a
#: burst (an upload) crosses the router in few large frames rather than many 64 KiB ones.
CHUNK = MAX_FRAME


class Channels:
    """One channel per router endpoint, shared by the tunnels through it; close them at the end."""

    def __init__(self, access: Access) -> None:
        self.access = access
        self._channels: dict[str, grpc.aio.Channel] = {}

    def get(self, endpoint: str) -> grpc.aio.Channel:
        if endpoint not in self._channels:
            self._channels[endpoint] = self.access.channel(endpoint)
        return self._channels[endpoint]

    async def close(self) -> None:
        channels, self._channels = list(self._channels.values()), {}
        for channel in channels:
            await channel.close()


async def splice(
    channels: Channels,
    endpoint: str,
    token: str,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    first: bytes = b"",
) -> None:
    """Carry one local connection through the router at ``endpoint`` until either side ends.

    ``first`` is what was already read from ``reader`` (sent before anything else).
    """
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
