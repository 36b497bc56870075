"""A call's whole trip: client -> gRPC on a unix socket -> session -> driver, and back."""

from __future__ import annotations

import logging
import os
import threading

import anyio
import pytest

from jumpstarter_drivers import (
    DriverError,
    DriverInvalidArgument,
    DriverMethodNotImplemented,
    DriverTimeout,
    ExporterNotReady,
    ExporterStatus,
    Session,
    connect,
    serve,
)
from jumpstarter_drivers.power import MockPower

from .sample_drivers import Parent, Point, Sample


@pytest.fixture
def sample():
    with serve(Sample()) as client:
        yield client


def test_values_keep_their_types_at_the_edges(sample):
    assert sample.call("add", 2, 3) == 5.0  # the wire carries doubles
    assert sample.call_as(int, "add", 2, 3) == 5
    assert type(sample.call_as(int, "add", 2, 3)) is int
    assert sample.call("types_of", 1, 2, "s", True, [1], {"k": 1}, Point(1, 2.0)) == [
        "int", "float", "str", "bool", "list", "dict", "Point", "int", "int",
    ]
    assert sample.call_as(Point, "point") == Point(x=3, y=4.5)
    assert sample.call("echo", {"a": [1, None, "x", False]}) == {"a": [1.0, None, "x", False]}
    assert sample.call("optional", 1) == 11 and sample.call("optional", 1, 2) == 3


def test_streaming_calls_yield_every_item(sample):
    assert list(sample.streamingcall("count", 5)) == [0, 1, 2, 3, 4]
    assert list(sample.streamingcall("acount", 3)) == [0, 1, 2]
    items = sample.streamingcall("forever")
    assert [next(items) for _ in range(3)] == [0, 1, 2]
    items.close()  # stopping early cancels the call; the session keeps serving
    assert sample.call("echo", "still here") == "still here"


def test_error_mid_stream_arrives_after_the_items(sample):
    items = sample.streamingcall("broken_stream")
    assert next(items) == 1
    with pytest.raises(DriverInvalidArgument, match="stream broke after one item"):
        next(items)


@pytest.mark.parametrize(
    ("kind", "error", "message"),
    [
        ("value", DriverInvalidArgument, "bad value 42"),
        ("notimpl", DriverMethodNotImplemented, "not on this device"),
        ("timeout", DriverTimeout, "the device took too long"),
        ("connection", DriverError, "strip unreachable"),
        ("os", DriverError, "No such file"),
        ("runtime", DriverError, "something broke"),
    ],
)
def test_driver_exceptions_map_to_client_errors(sample, kind, error, message):
    with pytest.raises(error, match=message) as info:
        sample.call("fail", kind)
    assert not isinstance(info.value, ConnectionError), "a driver's ConnectionError is not a lost exporter"


def test_client_error_types_are_the_builtin_ones_too(sample):
    with pytest.raises(ValueError):
        sample.call("fail", "value")
    with pytest.raises(NotImplementedError):
        sample.call("fail", "notimpl")
    with pytest.raises(TimeoutError):
        sample.call("fail", "timeout")


def test_protocol_errors_are_clear(sample):
    with pytest.raises(DriverMethodNotImplemented, match="Sample has no exported method 'nope'"):
        sample.call("nope")
    with pytest.raises(DriverMethodNotImplemented, match="streaming method; use streamingcall"):
        sample.call("count", 1)
    with pytest.raises(DriverMethodNotImplemented, match="unary method; use call"):
        list(sample.streamingcall("add", 1, 2))
    with pytest.raises(DriverInvalidArgument, match=r"add\(\) takes 2 argument\(s\) \(a, b\), got 1"):
        sample.call("add", 1)
    with pytest.raises(DriverInvalidArgument, match=r"takes 1\.\.2 argument"):
        sample.call("optional", 1, 2, 3)
    with pytest.raises(DriverInvalidArgument, match="argument 'a': expected an integer, got 'one'"):
        sample.call("add", "one", 2)
    with pytest.raises(DriverInvalidArgument, match="argument 'b': expected an integer, got 2.5"):
        sample.call("add", 1, 2.5)
    with pytest.raises(DriverInvalidArgument, match="argument 'p'"):
        sample.call("types_of", 1, 2, "s", True, [1], {"k": 1}, "not a point")


def test_unknown_driver_uuid_is_refused(sample):
    import uuid

    sample._uuid = str(uuid.uuid4())
    with pytest.raises(DriverMethodNotImplemented, match="no driver with uuid"):
        sample.call("add", 1, 2)


def test_slow_sync_driver_does_not_stall_other_calls(sample):
    result = {}
    waiter = threading.Thread(target=lambda: result.setdefault("opened", sample.call("wait_gate", 10)))
    waiter.start()
    sample.call("open_gate")  # would deadlock if wait_gate held the event loop
    waiter.join(10)
    assert result == {"opened": True}


def test_byte_stream_round_trip(sample):
    payload = os.urandom(3 << 20)
    with sample.stream("echo_stream") as stream:
        writer = threading.Thread(target=stream.send, args=(payload,))
        writer.start()
        assert stream.read_exactly(len(payload), timeout=10) == payload
        writer.join(10)
        stream.send_eof()
        assert stream.receive(timeout=10) == b""


def test_byte_stream_end_is_empty_bytes_or_end_of_stream_on_request(sample):
    """Socket style by default (``b""``, iteration stops); Jumpstarter style (``anyio.EndOfStream``) opted in."""
    for raise_on_eof in (False, True):
        with sample.stream("echo_stream", raise_on_eof=raise_on_eof) as stream:
            for word in (b"one ", b"two ", b"three"):
                stream.send(word)
            stream.send_eof()
            assert b"".join(chunk for chunk in stream) == b"one two three"
            if raise_on_eof:
                with pytest.raises(anyio.EndOfStream):
                    stream.receive(timeout=5)
            else:
                assert stream.receive(timeout=5) == b""
            with pytest.raises(EOFError, match="ended after 0 of 1 bytes"):
                stream.read_exactly(1, timeout=5)


def test_byte_stream_receive_times_out(sample):
    with sample.stream("echo_stream") as stream, pytest.raises(TimeoutError, match="no data within 0.05 s"):
        stream.receive(timeout=0.05)


def test_bytestream_method_kind_is_checked(sample):
    with pytest.raises(DriverMethodNotImplemented, match="unary method; use call"):
        with sample.stream("add"):
            pass


def test_resources_move_bytes_both_ways(sample):
    payload = os.urandom(5 << 20)
    with sample.resource() as (handle, stream):
        assert handle["kind"] == "client_stream"
        sender = threading.Thread(target=lambda: (stream.send(payload), stream.send_eof()))
        sender.start()
        assert sample.call_as(int, "upload_size", handle) == len(payload)
        sender.join(10)
    with sample.resource() as (handle, stream):
        stream.send_eof()
        caller = threading.Thread(target=sample.call, args=("download", handle, 3_000_000))
        caller.start()
        data = b"".join(stream)
        caller.join(10)
    assert len(data) == 3_000_000 and data[:512] == bytes(range(256)) * 2


def test_unknown_resource_is_refused(sample):
    with pytest.raises(DriverInvalidArgument, match="unknown resource"):
        sample.call("upload_size", {"kind": "client_stream", "uuid": "00000000-0000-0000-0000-000000000000"})


def test_log_stream_delivers_driver_logs_at_once(sample, caplog):
    caplog.set_level(logging.INFO, logger="exporter:driver")
    with sample.log_stream():
        sample.call("log", "hello", 3)
        deadline_ok = _wait_for(lambda: len(_messages(caplog)) >= 3)
    assert deadline_ok, _messages(caplog)
    assert _messages(caplog) == ["hello 0", "hello 1", "hello 2"]


def test_several_log_subscribers_each_get_every_record(caplog):
    caplog.set_level(logging.INFO, logger="exporter:driver")
    with Session(root_device=Sample()) as session, session.serve_unix() as path:
        with connect(path) as first, connect(path) as second:
            with first.log_stream(), second.log_stream():
                first.call("log", "burst", 500)
                assert _wait_for(lambda: len(_messages(caplog)) >= 1000)
    messages = _messages(caplog)
    assert len(messages) == 1000
    assert sorted(messages) == sorted([f"burst {i}" for i in range(500)] * 2)


def test_a_joining_log_stream_adds_no_copies(caplog):
    """``log_stream(join=True)`` inside another stream from the same exporter: each record once."""
    caplog.set_level(logging.INFO, logger="exporter:driver")
    with Session(root_device=Sample()) as session, session.serve_unix() as path:
        with connect(path) as first, connect(path) as second:
            with first.log_stream(), second.log_stream(join=True):
                first.call("log", "burst", 100)
                assert _wait_for(lambda: len(_messages(caplog)) >= 100)
            with second.log_stream(join=True):  # nothing to join any more: a stream of its own
                first.call("log", "again", 1)
                assert _wait_for(lambda: "again 0" in _messages(caplog))
    assert sorted(_messages(caplog)) == sorted([f"burst {i}" for i in range(100)] + ["again 0"])


def test_power_on_log_reaches_exporter_driver_logger(caplog):
    caplog.set_level(logging.INFO, logger="exporter:driver")
    with serve(MockPower()) as client, client.log_stream():
        client.on()
        assert _wait_for(lambda: "power on" in _messages(caplog))


def test_status_gates_driver_calls():
    with Session(root_device=Sample()) as session, session.serve_unix() as path, connect(path) as client:
        assert client.get_status() is ExporterStatus.LEASE_READY
        session.update_status(ExporterStatus.AVAILABLE, "waiting for a lease")
        assert client.get_status() is ExporterStatus.AVAILABLE
        with pytest.raises(ExporterNotReady, match="exporter status is AVAILABLE"):
            client.call("add", 1, 2)
        with pytest.raises(ExporterNotReady):
            list(client.streamingcall("count", 2))
        session.update_status(ExporterStatus.BEFORE_LEASE_HOOK)
        assert client.call("add", 1, 2) == 3
        assert client.end_session() is True


def test_report_rebuilds_the_tree_with_names_and_descriptions():
    root = Parent(children={"left": Sample(description="left one"), "right": MockPower()})
    with serve(root) as client:
        assert set(client.children) == {"left", "right"}
        assert client.left is client.children["left"]
        assert client.left.description == "left one"
        assert client.left.methods_description["add"].startswith("Add two integers")
        assert type(client.right).__name__ == "PowerClient"
        assert client.call("hello") == "parent"
        with pytest.raises(AttributeError, match="children: left, right"):
            client.middle  # noqa: B018


def test_report_names_jumpstarter_client_classes():
    with Session(root_device=MockPower()) as session:
        (report,) = session.report().reports
    assert report.labels["jumpstarter.dev/client"] == "jumpstarter_driver_power.client.PowerClient"
    assert report.labels["jumpstarter-toolkit/client"] == "jumpstarter_drivers.power.client.PowerClient"
    assert not report.parent_uuid


def test_closing_the_session_closes_the_tree():
    closed = []

    class Tracked(Sample):
        def close(self) -> None:
            closed.append(self.description)
            super().close()

    root = Tracked(description="root", children={"child": Tracked(description="child")})
    with Session(root_device=root):
        pass
    assert closed == ["root", "child"]


def _messages(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "exporter:driver"]


def _wait_for(predicate, timeout: float = 5.0) -> bool:
    event = threading.Event()
    deadline = timeout
    while deadline > 0:
        if predicate():
            return True
        event.wait(0.005)
        deadline -= 0.005
    return predicate()


def test_unused_resource_streams_expire():
    with Session(root_device=Sample(), resource_timeout=0.2) as session, session.serve_unix() as path:
        with connect(path) as client, client.resource() as (handle, stream):
            stream.send_eof()
            with pytest.raises(DriverTimeout, match="no driver call used this resource within 0.2 s"):
                stream.receive(timeout=10)
            assert client.call("add", 1, 2) == 3


def test_generic_calls_keep_the_types_the_driver_returned(sample):
    """Between our client and our session ints stay ints; a peer that does not ask gets Jumpstarter's Values."""
    point = sample.call("point")
    assert point == {"x": 3, "y": 4.5} and type(point["x"]) is int
    assert type(sample.call("add", 2**60, 0)) is int
    assert sample.call("echo", [True, None, "x", {"a": 1.5}]) == [True, None, "x", {"a": 1.5}]
    assert [type(i) for i in sample.streamingcall("acount", 3)] == [int, int, int]
    connection = sample.connection
    request = connection.pb.DriverCallRequest(uuid=sample._uuid, method="add")
    request.args.add().number_value = 2
    request.args.add().number_value = 3
    assert connection.exporter.DriverCall(request).result.number_value == 5.0


def test_streaming_batches_only_for_peers_that_ask(sample):
    """Jumpstarter's client does not ask: one item per message. Ours asks: items that wait share one."""
    from jumpstarter_drivers.core.session import BATCH_KEY

    connection = sample.connection
    request = connection.pb.StreamingDriverCallRequest(uuid=sample._uuid, method="acount")
    request.args.add().number_value = 1000
    plain = list(connection.exporter.StreamingDriverCall(request))
    assert len(plain) == 1000 and all(m.result.WhichOneof("kind") == "number_value" for m in plain)
    call = connection.exporter.StreamingDriverCall(request, metadata=((BATCH_KEY, "1"),))
    batched = list(call)
    assert dict(call.initial_metadata()).get(BATCH_KEY) == "1"
    items = [v.number_value for m in batched for v in m.result.list_value.values]
    assert items == list(range(1000)) and len(batched) < 1000


def test_a_client_vanishing_mid_upload_is_not_a_clean_end():
    with Session(root_device=Sample()) as session, session.serve_unix() as path, connect(path) as client:
        with client.resource() as (handle, stream):
            stream.send(b"x" * 1000)
            outcome: dict = {}

            def upload() -> None:
                try:
                    outcome["size"] = client.call("upload_size", handle)
                except DriverError as exc:
                    outcome["error"] = exc

            caller = threading.Thread(target=upload)
            caller.start()
            resource = session._resources[next(iter(session._resources))]
            assert _wait_for(resource.claimed.is_set), "the driver never claimed the resource"
            stream._call.cancel()  # the client process dies: no end-of-stream frame
            caller.join(10)
        assert "size" not in outcome, f"a truncated upload was taken for a whole one: {outcome}"
        assert "went away" in str(outcome["error"])
        assert client.call("add", 1, 2) == 3
