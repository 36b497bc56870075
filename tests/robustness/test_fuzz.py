"""Hypothesis drives random DriverCall, StreamingDriverCall and Stream requests at the exporter;
every one ends with a response or a gRPC status, and afterwards the exporter still serves."""

from __future__ import annotations

import json
from collections.abc import Iterator

import grpc
import pytest
from google.protobuf import empty_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jumpstarter_protocol.jumpstarter.v1 import jumpstarter_pb2, jumpstarter_pb2_grpc, router_pb2, router_pb2_grpc

from jumpstarter_drivers.cli.process import ServeProcess
from jumpstarter_drivers.core.codec import encode_into

from .conftest import idle, wait_until

#: The Target's methods, except the endless one (which would only wait out the deadline).
METHODS = ["echo", "add", "norm", "total", "count", "port", "upload", "state"]
CALL_TIMEOUT = 5

json_values = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=True) | st.integers(-(2**60), 2**60) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@pytest.fixture(scope="module")
def stubs(exporter: ServeProcess) -> Iterator[tuple]:
    with grpc.insecure_channel(f"unix://{exporter.address}") as channel:
        exporter_stub = jumpstarter_pb2_grpc.ExporterServiceStub(channel)
        report = exporter_stub.GetReport(empty_pb2.Empty(), timeout=10)
        uuids = [r.uuid for r in report.reports]
        yield exporter_stub, router_pb2_grpc.RouterServiceStub(channel), uuids


def uuids_from(known: list[str]) -> st.SearchStrategy[str]:
    return st.sampled_from(known) | st.uuids().map(str) | st.text(max_size=40)


request_kinds = st.sampled_from(["DriverCall", "StreamingDriverCall", "Stream"])
frame_strategy = st.builds(
    lambda payload, kind: router_pb2.StreamRequest(payload=payload, frame_type=kind),
    st.binary(max_size=256),
    st.sampled_from([0, 0, 0, 1, 3, 6, 7, 42]),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_random_requests(stubs: tuple, data: st.DataObject) -> None:
    exporter, router, known = stubs
    kind = data.draw(request_kinds, label="kind")
    resource = False
    target = data.draw(uuids_from(known), label="uuid")
    method = data.draw(st.sampled_from(METHODS) | st.text(max_size=20), label="method")
    try:
        if kind == "Stream":
            metadata_value = data.draw(
                st.builds(
                    json.dumps,
                    st.fixed_dictionaries(
                        {"kind": st.sampled_from(["driver", "resource"]) | st.text(max_size=8)},
                        optional={"uuid": st.just(target) | json_values, "method": st.just(method) | json_values,
                                  "x_jmp_content_encoding": json_values},
                    ),
                )
                | st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=40),
                label="request metadata",
            )
            frames = data.draw(st.lists(frame_strategy, max_size=6), label="frames")
            # A resource stays open until the client ends it (a download may follow): give it a short deadline.
            resource = '"kind": "resource"' in metadata_value
            timeout = 0.5 if resource else CALL_TIMEOUT
            for _ in router.Stream(iter(frames), metadata=(("request", metadata_value),), timeout=timeout):
                pass
        else:
            streaming = kind == "StreamingDriverCall"
            request_type = jumpstarter_pb2.StreamingDriverCallRequest if streaming else jumpstarter_pb2.DriverCallRequest
            request = request_type(uuid=target, method=method)
            for value in data.draw(st.lists(json_values, max_size=4), label="args"):
                encode_into(request.args.add(), value)
            if streaming:
                for _ in exporter.StreamingDriverCall(request, timeout=CALL_TIMEOUT):
                    pass
            else:
                exporter.DriverCall(request, timeout=CALL_TIMEOUT)
    except grpc.RpcError as exc:
        assert exc.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED), exc
        if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
            assert kind == "Stream" and resource, f"a {kind} request hung: {exc}"


def test_the_exporter_still_serves_after_the_fuzzing(exporter: ServeProcess, client) -> None:
    assert exporter.process is not None and exporter.process.poll() is None
    assert client.call("echo", "after fuzzing") == "after fuzzing"
    wait_until(lambda: idle(client), "nothing held after the fuzzing")
