"""Memory per byte stream is bounded in bytes, not frames, on the exporter and on the client; a
message larger than the peers accept is refused cleanly; large frames do not stall the exporter."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from jumpstarter_drivers.core import loop
from jumpstarter_drivers.core.access import MAX_MESSAGE, connect
from jumpstarter_drivers.core.client import ByteStream, Connection
from jumpstarter_drivers.core.errors import DriverError
from jumpstarter_drivers.core.streams import Frame, decode_frame, encode_frame

from .conftest import state, wait_until

FRAME = 8 << 20
#: What a stream may hold on either side: its 4 MiB buffer, a frame in hand and gRPC's window,
#: with room for noise. Buffering by frames held 16 (exporter) or 64 (client) frames of any size.
BOUND = 96 << 20


def rss(pid: int | str = "self") -> int:
    """Resident memory of a process, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc status")


def peak_rss(seconds: float, pid: int | str = "self") -> int:
    """The highest resident memory of a process sampled over ``seconds`` (a measurement, not a wait)."""
    peak, end = 0, time.monotonic() + seconds
    while time.monotonic() < end:
        peak = max(peak, rss(pid))
        time.sleep(0.05)
    return peak


class RawUpload:
    """A resource stream sending 8 MiB frames as they are (our client would split them), counting them."""

    def __init__(self, connection: Connection, limit: int = 40) -> None:
        self.sent = 0
        self.sent_at = time.monotonic()
        frame = Frame(os.urandom(FRAME))
        metadata = (("request", json.dumps({"kind": "resource", "uuid": "ignored"})),)

        def frames() -> Iterator[Frame]:
            for _ in range(limit):
                yield frame
                self.sent += FRAME
                self.sent_at = time.monotonic()

        self.call = connection.stream(frames(), metadata=metadata)

    def stalled(self) -> bool:
        return time.monotonic() - self.sent_at > 1.0


def test_unclaimed_resource_streams_hold_little_on_the_exporter(exporter) -> None:
    """Two resource streams no driver call ever claims, each sent 8 MiB frames until it stops."""
    with connect(exporter.address) as root:
        before = rss(exporter.pid)
        uploads = [RawUpload(root.connection) for _ in range(2)]
        try:
            wait_until(lambda: all(u.stalled() for u in uploads), "the exporter stops taking frames", 60)
            grown = rss(exporter.pid) - before
            sent = sum(u.sent for u in uploads)
        finally:
            for upload in uploads:
                upload.call.cancel()
        assert state(root.target)["calls"] >= 0  # the exporter still answers
    assert grown < 2 * BOUND, f"the exporter grew by {grown >> 20} MiB for two unclaimed streams"
    assert sent < 2 * BOUND, f"{sent >> 20} MiB were accepted by two unclaimed streams"


@contextlib.contextmanager
def flooding_peer() -> Iterator[Connection]:
    """A peer (not ours) whose resource streams send 8 MiB frames for ever, however slow the reader."""
    frame = Frame(os.urandom(FRAME))

    async def flood(requests, context):
        await context.send_initial_metadata((("resource", json.dumps({"kind": "client_stream", "uuid": "x"})),))
        while True:
            yield frame

    handler = grpc.method_handlers_generic_handler(
        "jumpstarter.v1.RouterService",
        {
            "Stream": grpc.stream_stream_rpc_method_handler(
                flood, request_deserializer=decode_frame, response_serializer=encode_frame
            )
        },
    )

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "peer.sock")

        async def start() -> grpc.aio.Server:
            server = grpc.aio.server(options=(("grpc.max_send_message_length", MAX_MESSAGE),))
            server.add_generic_rpc_handlers((handler,))
            server.add_insecure_port(f"unix://{path}")
            await server.start()
            return server

        server = loop.run(start())
        channel = grpc.secure_channel(
            f"unix://{path}",
            grpc.local_channel_credentials(grpc.LocalConnectionType.UDS),
            options=(("grpc.max_receive_message_length", MAX_MESSAGE),),
        )
        connection = Connection(channel, path)
        try:
            yield connection
        finally:
            connection.close()
            loop.run(server.stop(0))


def test_a_client_that_does_not_read_holds_little() -> None:
    with flooding_peer() as connection:
        request = {"kind": "resource", "uuid": "x"}
        with ByteStream.open(connection, request, "flood") as stream:
            assert stream.receive(timeout=10)  # flowing
            before = rss()
            grown = peak_rss(3.0) - before  # nothing is read meanwhile
            assert stream.receive(timeout=10)  # still flowing once read again
    assert grown < BOUND, f"a client not reading grew by {grown >> 20} MiB"


def test_an_over_size_message_is_refused_cleanly(exporter) -> None:
    """A frame or a call argument above the 64 MiB message limit fails that call with a clear error;
    the exporter lives on."""
    big = Frame(b"o" * (MAX_MESSAGE + 1))
    with connect(exporter.address) as root:
        channel = grpc.secure_channel(
            f"unix://{exporter.address}",
            grpc.local_channel_credentials(grpc.LocalConnectionType.UDS),
            options=(("grpc.max_send_message_length", 2 * MAX_MESSAGE),),
        )
        with channel:
            sender = Connection(channel, exporter.address)
            call = sender.stream(iter([big]), metadata=(("request", json.dumps({"kind": "resource"})),))
            with pytest.raises(grpc.RpcError) as refused:
                list(call)
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, refused.value
        with pytest.raises(DriverError, match="larger than max"):
            root.target.call("echo", "x" * (MAX_MESSAGE + 1))
        assert root.target.call("echo", 7) == 7
