"""Abuse at the protocol level: each bad request gets a proper gRPC status and the exporter keeps serving.

These tests speak raw ``jumpstarter.v1`` through the generated stubs, as a hostile or buggy peer would.
"""

from __future__ import annotations

import json
import math
import random
import socket
import ssl
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from google.protobuf import empty_pb2
from jumpstarter_protocol.jumpstarter.v1 import jumpstarter_pb2, jumpstarter_pb2_grpc, router_pb2, router_pb2_grpc

from jumpstarter_drivers.cli.process import ServeProcess
from jumpstarter_drivers.core.access import connect
from jumpstarter_drivers.core.codec import encode_into
from jumpstarter_drivers.core.streams import FRAME_DATA, FRAME_GOAWAY

from .conftest import idle, wait_until

BIG = 100 << 20
LIMIT = 64 << 20
Code = grpc.StatusCode


class Raw:
    """Raw stubs on one channel, and the Target's uuid."""

    def __init__(self, channel: grpc.Channel) -> None:
        self.channel = channel
        self.exporter = jumpstarter_pb2_grpc.ExporterServiceStub(channel)
        self.router = router_pb2_grpc.RouterServiceStub(channel)
        report = self.exporter.GetReport(empty_pb2.Empty(), timeout=10)
        self.target = next(r.uuid for r in report.reports if r.labels.get("jumpstarter.dev/name") == "target")

    def call(self, method: str, *args: Any, uuid_: str | None = None, streaming: bool = False) -> Any:
        kind = jumpstarter_pb2.StreamingDriverCallRequest if streaming else jumpstarter_pb2.DriverCallRequest
        request = kind(uuid=self.target if uuid_ is None else uuid_, method=method)
        for arg in args:
            encode_into(request.args.add(), arg)
        if streaming:
            return list(self.exporter.StreamingDriverCall(request, timeout=10))
        return self.exporter.DriverCall(request, timeout=10)

    def stream(self, metadata: tuple, frames: list) -> list:
        return list(self.router.Stream(iter(frames), metadata=metadata, timeout=10))

    def answers(self) -> bool:
        response = self.call("echo", "still here")
        return response.result.string_value == "still here"


@pytest.fixture(scope="module")
def raw(exporter: ServeProcess) -> Iterator[Raw]:
    options = [("grpc.max_send_message_length", BIG), ("grpc.max_receive_message_length", BIG)]
    with grpc.insecure_channel(f"unix://{exporter.address}", options=options) as channel:
        yield Raw(channel)


def status_of(call) -> Code:
    with pytest.raises(grpc.RpcError) as failure:
        call()
    return failure.value.code()


def test_oversized_call_is_refused_and_serving_goes_on(raw: Raw, exporter: ServeProcess) -> None:
    assert status_of(lambda: raw.call("echo", "x" * (LIMIT + 1024))) == Code.RESOURCE_EXHAUSTED
    assert raw.answers()
    with connect(exporter.address) as fresh:
        assert fresh.target.call("echo", 1) == 1


def test_oversized_stream_frame_is_refused_and_the_port_released(raw: Raw, client) -> None:
    request = json.dumps({"kind": "driver", "uuid": raw.target, "method": "port"})
    frames = [router_pb2.StreamRequest(payload=b"z" * (LIMIT + 1024))]
    assert status_of(lambda: raw.stream((("request", request),), frames)) == Code.RESOURCE_EXHAUSTED
    wait_until(lambda: idle(client), "port released")
    assert raw.answers()


def test_a_stream_of_ordinary_frames_works(raw: Raw) -> None:
    request = json.dumps({"kind": "driver", "uuid": raw.target, "method": "port"})
    frames = [router_pb2.StreamRequest(payload=b"abc", frame_type=FRAME_DATA),
              router_pb2.StreamRequest(frame_type=FRAME_GOAWAY)]
    replies = raw.stream((("request", request),), frames)
    assert b"".join(r.payload for r in replies if r.frame_type == FRAME_DATA) == b"abc"


TARGET = "<target>"


@pytest.mark.parametrize(
    ("request_metadata", "code"),
    [
        (None, Code.INVALID_ARGUMENT),
        ("", Code.INVALID_ARGUMENT),
        ("not json", Code.INVALID_ARGUMENT),
        ("[1, 2]", Code.INVALID_ARGUMENT),
        ('"driver"', Code.INVALID_ARGUMENT),
        ("null", Code.INVALID_ARGUMENT),
        ('{"kind": "bogus"}', Code.INVALID_ARGUMENT),
        ("{}", Code.INVALID_ARGUMENT),
        ('{"kind": "driver"}', Code.NOT_FOUND),
        ('{"kind": "driver", "uuid": "nope", "method": "port"}', Code.NOT_FOUND),
        ('{"kind": "driver", "uuid": 12, "method": "port"}', Code.NOT_FOUND),
        ('{"kind": "driver", "uuid": "<target>", "method": "echo"}', Code.NOT_FOUND),
        ('{"kind": "driver", "uuid": "<target>", "method": "no_such"}', Code.NOT_FOUND),
        ('{"kind": "driver", "uuid": "<target>", "method": ["port"]}', Code.NOT_FOUND),
        ('{"kind": "driver", "uuid": "<target>", "method": "__init__"}', Code.NOT_FOUND),
    ],
)
def test_malformed_stream_request_metadata(raw: Raw, request_metadata: str | None, code: Code) -> None:
    metadata = () if request_metadata is None else (("request", request_metadata.replace(TARGET, raw.target)),)
    assert status_of(lambda: raw.stream(metadata, [router_pb2.StreamRequest(payload=b"x")])) == code
    assert raw.answers()


@pytest.mark.parametrize("streaming", [False, True], ids=["DriverCall", "StreamingDriverCall"])
@pytest.mark.parametrize(
    ("uuid_", "method"),
    [
        ("6f1c2a9e-0000-4000-8000-00000000dead", "echo"),
        ("not-a-uuid", "echo"),
        ("", "echo"),
        ("\u00e9\u00e9", "echo"),
        (None, ""),
        (None, "no_such_method"),
        (None, "__class__"),
        (None, "_count"),
        (None, "close"),
    ],
)
def test_unknown_uuids_and_methods(raw: Raw, uuid_: str | None, method: str, streaming: bool) -> None:
    assert status_of(lambda: raw.call(method, 1, uuid_=uuid_, streaming=streaming)) == Code.NOT_FOUND
    assert raw.answers()


@pytest.mark.parametrize(
    ("method", "streaming"), [("count", False), ("echo", True), ("port", False), ("port", True)]
)
def test_wrong_kind_of_call(raw: Raw, method: str, streaming: bool) -> None:
    assert status_of(lambda: raw.call(method, 1, streaming=streaming)) == Code.NOT_FOUND
    assert raw.answers()


WRONG_ARGUMENTS = [
    ("add", ["x", 1]),
    ("add", [True, 1]),
    ("add", [None, 1]),
    ("add", [[1], 1]),
    ("add", [{"a": 1}, 1]),
    ("add", [1.5, 1]),
    ("add", [math.nan, 1]),
    ("add", [math.inf, 1]),
    ("add", []),
    ("add", [1]),
    ("add", [1, 2, 3]),
    ("norm", ["point"]),
    ("norm", [[1, 2]]),
    ("norm", [{"x": "a", "y": 1}]),
    ("norm", [{"x": 1}]),
    ("norm", [{"x": 1, "y": 2}, "big"]),
    ("total", [[1, "a"], {}]),
    ("total", [[1], {"k": "v"}]),
    ("total", [{"not": "a list"}, {}]),
    ("total", [[1], [1]]),
    ("upload", ["not a handle"]),
    ("upload", [{"kind": "client_stream", "uuid": "nope"}]),
    ("upload", [{"kind": "client_stream", "uuid": "6f1c2a9e-0000-4000-8000-00000000beef"}]),
]


@pytest.mark.parametrize(("method", "args"), WRONG_ARGUMENTS)
def test_arguments_of_every_wrong_type(raw: Raw, method: str, args: list) -> None:
    assert status_of(lambda: raw.call(method, *args)) == Code.INVALID_ARGUMENT
    assert raw.answers()


def test_streaming_call_with_wrong_arguments(raw: Raw) -> None:
    assert status_of(lambda: raw.call("count", "many", streaming=True)) == Code.INVALID_ARGUMENT
    assert status_of(lambda: raw.call("count", 5000, streaming=True)) == Code.INVALID_ARGUMENT
    assert [r.result.number_value for r in raw.call("count", 3, streaming=True)] == [0, 1, 2]


#: What grpcio itself answers when a request cannot be decoded (before any servicer runs).
UNDECODABLE = Code.UNKNOWN


def test_deeply_nested_argument(raw: Raw) -> None:
    nested: Any = "leaf"
    for _ in range(200):
        nested = [nested]
    with pytest.raises(grpc.RpcError) as failure:
        raw.call("echo", nested)
    assert failure.value.code() == UNDECODABLE
    assert "Error parsing message" in failure.value.details()
    assert raw.answers()


def test_garbage_in_raw_request_bytes(raw: Raw) -> None:
    garbage = raw.channel.unary_unary(
        "/jumpstarter.v1.ExporterService/DriverCall", request_serializer=None, response_deserializer=None
    )
    with pytest.raises(grpc.RpcError) as failure:
        garbage(b"\xff" * 64, timeout=10)
    assert failure.value.code() == UNDECODABLE
    assert "Error parsing message" in failure.value.details()
    unknown_rpc = raw.channel.unary_unary("/jumpstarter.v1.ExporterService/Explode")
    with pytest.raises(grpc.RpcError) as failure:
        unknown_rpc(b"", timeout=10)
    assert failure.value.code() == Code.UNIMPLEMENTED
    assert raw.answers()


def hammer(sock: socket.socket, payload: bytes) -> None:
    """Send ``payload`` and read until the server hangs up (it must, within 10 s)."""
    sock.settimeout(10)
    try:
        sock.sendall(payload)
        while sock.recv(65536):
            pass
    except (ConnectionResetError, BrokenPipeError, ssl.SSLError):
        pass  # the server hung up while we were still talking: what we want
    except TimeoutError:
        pytest.fail("the exporter kept a connection that sent garbage open for 10 s")


#: Each complete as what it pretends to be: a TLS record cut short would rightly be waited for.
#: Seeded, so that every run sends the same bytes: random bytes after a TLS record header declare, now
#: and then, a handshake message longer than the record, which a TLS server rightly waits for (a flake).
_NOISE = random.Random(20261122)
GARBAGE = [
    b"\x00" + _NOISE.randbytes(65535),
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + _NOISE.randbytes(4096),
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    # a TLS handshake record of 512 bytes: a ClientHello header declaring the 508 bytes that follow, random
    b"\x16\x03\x01\x02\x00" + b"\x01\x00\x01\xfc" + _NOISE.randbytes(508),
]


@pytest.mark.parametrize("payload", GARBAGE, ids=["random", "h2-preface-then-random", "http1", "tls-ish"])
def test_random_bytes_on_the_unix_socket(exporter: ServeProcess, raw: Raw, payload: bytes) -> None:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(exporter.address)
        hammer(sock, payload)
    assert raw.answers()


@pytest.fixture(scope="module")
def tcp_exporters(serve_lab, tls_files) -> Iterator[dict[str, ServeProcess]]:
    cert, key = tls_files
    with serve_lab("--listen", "127.0.0.1:0", "--insecure") as plain, serve_lab(
        "--listen", "127.0.0.1:0", "--tls-cert", str(cert), "--tls-key", str(key)
    ) as tls:
        yield {"plain": plain, "tls": tls}


@pytest.mark.parametrize("kind", ["plain", "tls"])
@pytest.mark.parametrize("payload", GARBAGE, ids=["random", "h2-preface-then-random", "http1", "tls-ish"])
def test_random_bytes_on_tcp(tcp_exporters: dict[str, ServeProcess], tls_files, kind: str, payload: bytes) -> None:
    served = tcp_exporters[kind]
    host, _, port = served.address.rpartition(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        hammer(sock, payload)
    if kind == "tls":
        context = ssl.create_default_context(cafile=str(tls_files[0]))
        with socket.create_connection((host, int(port)), timeout=10) as sock, context.wrap_socket(
            sock, server_hostname="127.0.0.1"
        ) as inside_tls:
            hammer(inside_tls, payload)  # garbage after a good handshake
    options = {"insecure": True} if kind == "plain" else {"ca": str(tls_files[0])}
    with connect(served.address, **options) as client:
        assert client.target.call("echo", kind) == kind
