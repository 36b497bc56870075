"""Byte streams on the exporter side.

A driver's exported stream and a protocol resource both look like an anyio byte stream to the
driver (``receive``, ``send``, ``send_eof``, ``aclose``). :func:`pump` joins one to a
``RouterService.Stream`` call, frame by frame, with backpressure in both directions.
"""

from __future__ import annotations

import contextlib
import logging
from collections import deque
from collections.abc import Iterator
from typing import Any, NamedTuple

import anyio
import anyio.abc
import anyio.lowlevel

logger = logging.getLogger(__name__)

#: Largest payload sent in one frame; bigger frames amortise the per-message cost of gRPC.
MAX_FRAME = 1 << 20

FRAME_DATA = 0
FRAME_RST_STREAM = 3
FRAME_PING = 6
FRAME_GOAWAY = 7

_END = (anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError)


class Frame(NamedTuple):
    """One ``StreamRequest``/``StreamResponse`` message: a payload or a control frame.

    A received payload larger than :data:`MAX_FRAME` is a ``memoryview``; see :func:`pieces`.
    """

    payload: bytes | memoryview = b""
    frame_type: int = FRAME_DATA


def pieces(payload: bytes | memoryview) -> Iterator[bytes]:
    """A received payload as ``bytes`` of at most :data:`MAX_FRAME` each (one piece when it is small)."""
    if isinstance(payload, bytes):
        yield payload
        return
    for start in range(0, len(payload), MAX_FRAME):
        yield bytes(payload[start : start + MAX_FRAME])


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def encode_frame(frame: Frame) -> bytes:
    r"""The protobuf wire form of a frame (field 1 payload, field 2 frame_type), with one copy.

    Building a protobuf message around a 1 MiB payload copies it twice more; this keeps byte
    streams near the speed of the transport. The bytes are exactly what protobuf would write.

    >>> encode_frame(Frame(b"hi")) == b"\x0a\x02hi"
    True
    >>> decode_frame(encode_frame(Frame(frame_type=FRAME_GOAWAY)))
    Frame(payload=b'', frame_type=7)
    """
    payload, frame_type = frame
    head = b"\x0a" + _varint(len(payload)) if payload else b""
    tail = b"\x10" + _varint(frame_type) if frame_type else b""
    return b"".join((head, payload, tail))


def decode_frame(data: bytes) -> Frame:
    """Parse a ``StreamRequest``/``StreamResponse`` from its wire form (unknown fields skipped)."""
    view = memoryview(data)
    payload: bytes = b""
    frame_type = FRAME_DATA
    pos, end = 0, len(view)

    def varint() -> int:
        nonlocal pos
        shift = result = 0
        while True:
            if pos >= end:
                raise ValueError("truncated frame")
            byte = view[pos]
            pos += 1
            result |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return result
            shift += 7

    while pos < end:
        key = varint()
        field, wire = key >> 3, key & 7
        if wire == 0:
            value = varint()
            if field == 2:
                frame_type = value
        elif wire == 2:
            size = varint()
            if pos + size > end:
                raise ValueError("truncated frame")
            if field == 1:
                # A large payload stays a view of the message: copying it here would stop the event
                # loop for the whole frame; :func:`pieces` copies it a frame's worth at a time.
                payload = view[pos : pos + size] if size > MAX_FRAME else bytes(view[pos : pos + size])
            pos += size
        elif wire in (1, 5):
            pos += 8 if wire == 1 else 4
        else:
            raise ValueError(f"unsupported wire type {wire} in a stream frame")
    return Frame(payload, frame_type)


#: Bytes a pipe holds per direction before its writer waits; one write may overshoot it once.
PIPE_LIMIT = 4 << 20


class _Direction:
    """One direction of a pipe: queued chunks, bounded in bytes, and who has ended it."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.chunks: deque[bytes | memoryview] = deque()
        self.size = 0
        self.ended = False  # the writer closed it (send_eof, aclose)
        self.reader_closed = False  # the reader closed its end: what is queued is dropped
        self._changed: anyio.Event | None = None

    async def changed(self) -> None:
        """Wait until something happens to this direction (data, room, an end)."""
        if self._changed is None:
            self._changed = anyio.Event()
        await self._changed.wait()

    def notify(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    def take(self, max_bytes: int) -> bytes:
        """Up to ``max_bytes`` of what is queued, joined from as many chunks as it takes."""
        parts: list[bytes | memoryview] = []
        taken = 0
        while self.chunks and taken < max_bytes:
            chunk = self.chunks[0]
            room = max_bytes - taken
            if len(chunk) <= room:
                self.chunks.popleft()
            else:
                view = memoryview(chunk)
                chunk, self.chunks[0] = view[:room], view[room:]
            parts.append(chunk)
            taken += len(chunk)
        self.size -= taken
        self.notify()
        if len(parts) == 1 and isinstance(parts[0], bytes):
            return parts[0]
        return b"".join(parts)


class _PipeState:
    """What both ends of a pipe share: whether it was aborted rather than ended."""

    aborted = False


class PipeStream(anyio.abc.ByteStream):
    """One end of an in-memory byte pipe (see :func:`pipe`).

    ``receive(max_bytes)`` returns what is queued, up to ``max_bytes``, joining small writes
    and splitting large ones; ``anyio.EndOfStream`` once the other end sent its end and
    everything was read, ``anyio.BrokenResourceError`` when the other end aborted.
    """

    def __init__(self, inbound: _Direction, outbound: _Direction, state: _PipeState) -> None:
        self._in = inbound
        self._out = outbound
        self._state = state

    async def receive(self, max_bytes: int = MAX_FRAME) -> bytes:
        direction = self._in
        while not direction.chunks:
            if direction.reader_closed:
                raise anyio.ClosedResourceError
            if direction.ended:
                if self._state.aborted:
                    raise anyio.BrokenResourceError("the peer went away before the end of the stream")
                raise anyio.EndOfStream
            await direction.changed()
        return direction.take(max_bytes)

    async def send(self, item: bytes) -> None:
        """Queue ``item``; waits while the pipe holds its limit of unread bytes."""
        direction = self._out
        while True:
            if direction.ended:
                raise anyio.ClosedResourceError
            if direction.reader_closed:
                raise anyio.BrokenResourceError("the other end of the pipe is closed")
            if direction.size < direction.limit:
                break
            await direction.changed()
        if item:
            direction.chunks.append(item if isinstance(item, bytes) else bytes(item))
            direction.size += len(item)
            direction.notify()

    async def send_eof(self) -> None:
        self._out.ended = True
        self._out.notify()

    async def abort(self) -> None:
        """Close both ways; the other end's reads fail instead of seeing a clean end."""
        self._state.aborted = True
        await self.aclose()

    async def aclose(self) -> None:
        await self.send_eof()
        self._in.reader_closed = True
        self._in.chunks.clear()
        self._in.size = 0
        self._in.notify()


def pipe(limit: int = PIPE_LIMIT) -> tuple[PipeStream, PipeStream]:
    """Two connected byte streams; each direction holds up to ``limit`` unread bytes before its writer waits."""
    a_to_b, b_to_a = _Direction(limit), _Direction(limit)
    state = _PipeState()
    return PipeStream(b_to_a, a_to_b, state), PipeStream(a_to_b, b_to_a, state)


async def pump(stream: anyio.abc.ByteStream, context: Any) -> None:
    """Move bytes between ``stream`` and a gRPC bidi call until both directions have ended.

    Inbound DATA frames are written to the stream, GOAWAY half-closes it; RST_STREAM, or the
    request stream ending without a GOAWAY, aborts it.
    Outbound bytes become DATA frames, and the end of the stream a GOAWAY frame. The call's
    messages are :class:`Frame` tuples (see :func:`encode_frame` and :func:`decode_frame`).
    """
    import grpc

    async with anyio.create_task_group() as tg:

        async def inbound() -> None:
            while True:
                frame = await context.read()
                if frame is not grpc.aio.EOF and frame.frame_type == FRAME_GOAWAY:
                    with contextlib.suppress(*_END, NotImplementedError):
                        await stream.send_eof()
                    return
                if frame is grpc.aio.EOF or frame.frame_type == FRAME_RST_STREAM:
                    # Peers say goodbye with GOAWAY before they stop writing; a bare end of the
                    # request stream is a client that was cancelled or died.
                    logger.debug("peer %s", "reset the stream" if frame is not grpc.aio.EOF else "vanished")
                    abort = getattr(stream, "abort", None)
                    if abort is not None:
                        await abort()
                    else:
                        with contextlib.suppress(*_END, NotImplementedError):
                            await stream.send_eof()
                    tg.cancel_scope.cancel()
                    return
                if frame.frame_type == FRAME_DATA and frame.payload:
                    try:
                        for piece in pieces(frame.payload):
                            await stream.send(piece)
                            if piece is not frame.payload:
                                await anyio.lowlevel.checkpoint()  # a large frame: let others run between pieces
                    except _END:
                        return

        async def outbound() -> None:
            while True:
                try:
                    data = await stream.receive(MAX_FRAME)
                except _END:
                    break
                await context.write(Frame(data))
            await context.write(Frame(frame_type=FRAME_GOAWAY))

        tg.start_soon(inbound)
        tg.start_soon(outbound)
