"""Byte streams on the exporter side.

A driver's exported stream and a protocol resource both look like an anyio byte stream to the
driver (``receive``, ``send``, ``send_eof``, ``aclose``). :func:`pump` joins one to a
``RouterService.Stream`` call, frame by frame, with backpressure in both directions.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import anyio
import anyio.abc
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

logger = logging.getLogger(__name__)

#: Largest payload sent in one frame; bigger frames amortise the per-message cost of gRPC.
MAX_FRAME = 1 << 20

FRAME_DATA = 0
FRAME_RST_STREAM = 3
FRAME_PING = 6
FRAME_GOAWAY = 7

_END = (anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError)


class PipeStream(anyio.abc.ByteStream):
    """One end of an in-memory byte pipe (see :func:`pipe`)."""

    def __init__(self, send: MemoryObjectSendStream[bytes], receive: MemoryObjectReceiveStream[bytes]) -> None:
        self._send = send
        self._receive = receive
        self._leftover = b""

    async def receive(self, max_bytes: int = MAX_FRAME) -> bytes:
        data = self._leftover or await self._receive.receive()
        self._leftover = data[max_bytes:]
        return data[:max_bytes]

    async def send(self, item: bytes) -> None:
        if item:
            await self._send.send(bytes(item))

    async def send_eof(self) -> None:
        await self._send.aclose()

    async def aclose(self) -> None:
        await self._send.aclose()
        await self._receive.aclose()


def pipe(buffer: int = 16) -> tuple[PipeStream, PipeStream]:
    """Two connected byte streams; each buffers up to ``buffer`` chunks before the writer waits."""
    a_send, b_receive = anyio.create_memory_object_stream[bytes](buffer)
    b_send, a_receive = anyio.create_memory_object_stream[bytes](buffer)
    return PipeStream(a_send, a_receive), PipeStream(b_send, b_receive)


async def pump(stream: anyio.abc.ByteStream, context: Any, response_type: Any) -> None:
    """Move bytes between ``stream`` and a gRPC bidi call until both directions have ended.

    Inbound DATA frames are written to the stream, GOAWAY half-closes it, RST_STREAM aborts.
    Outbound bytes become DATA frames, and the end of the stream a GOAWAY frame.
    """
    import grpc

    async with anyio.create_task_group() as tg:

        async def inbound() -> None:
            while True:
                frame = await context.read()
                if frame is grpc.aio.EOF or frame.frame_type == FRAME_GOAWAY:
                    with contextlib.suppress(*_END, NotImplementedError):
                        await stream.send_eof()
                    return
                if frame.frame_type == FRAME_RST_STREAM:
                    logger.debug("peer reset the stream")
                    tg.cancel_scope.cancel()
                    return
                if frame.frame_type == FRAME_DATA and frame.payload:
                    try:
                        await stream.send(frame.payload)
                    except _END:
                        return

        async def outbound() -> None:
            while True:
                try:
                    data = await stream.receive(MAX_FRAME)
                except _END:
                    break
                await context.write(response_type(payload=data))
            await context.write(response_type(frame_type=FRAME_GOAWAY))

        tg.start_soon(inbound)
        tg.start_soon(outbound)
