"""An exporter that stops answering (SIGSTOP) makes client calls fail within their keepalive bound."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Iterator

import pytest

from jumpstarter_drivers.cli.process import ServeProcess
from jumpstarter_drivers.core.access import connect
from jumpstarter_drivers.core.errors import ExporterUnreachable

KEEPALIVE = 1.0
#: Generous: keepalive detects a silent peer after about 2 x KEEPALIVE; this only catches a hang.
HANG = 30.0


@pytest.fixture
def frozen(serve_lab: Callable[..., ServeProcess]) -> Iterator[tuple[ServeProcess, Callable[[], None]]]:
    """A fresh exporter, and a function that SIGSTOPs it (SIGCONT and stop at the end)."""
    with serve_lab() as served:
        stopped = []

        def freeze() -> None:
            os.kill(served.pid, signal.SIGSTOP)
            stopped.append(True)

        try:
            yield served, freeze
        finally:
            if stopped:
                os.kill(served.pid, signal.SIGCONT)


def outcome_within(action: Callable[[], object], bound: float) -> BaseException | object:
    """Run ``action`` in a thread; its exception or result (fails if it still runs after ``bound`` s)."""
    result: list = []

    def run() -> None:
        try:
            result.append(action())
        except BaseException as exc:  # noqa: BLE001 - returned to the test
            result.append(exc)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(bound)
    assert not worker.is_alive(), f"the call still hangs after {bound} s"
    return result[0]


def test_unary_call_fails_when_the_exporter_freezes(frozen, monkeypatch: pytest.MonkeyPatch) -> None:
    served, freeze = frozen
    monkeypatch.setenv("JMP_GRPC_KEEPALIVE", str(KEEPALIVE))
    with connect(served.address) as root:
        assert root.target.call("echo", 1) == 1
        freeze()
        outcome = outcome_within(lambda: root.target.call("echo", 2), HANG)
    assert isinstance(outcome, ExporterUnreachable), outcome
    assert "stopped answering" in str(outcome) or "went away" in str(outcome)


def test_streaming_call_fails_when_the_exporter_freezes(frozen) -> None:
    served, freeze = frozen
    with connect(served.address, keepalive=KEEPALIVE) as root:
        ticks = root.target.streamingcall("ticks")
        assert next(ticks) == 0
        freeze()
        outcome = outcome_within(lambda: [tick for tick in ticks], HANG)
    assert isinstance(outcome, ExporterUnreachable), outcome


def test_byte_stream_fails_when_the_exporter_freezes(frozen) -> None:
    served, freeze = frozen
    with connect(served.address, keepalive=KEEPALIVE) as root, root.target.stream("port") as port:
        port.send(b"ok")
        assert port.read_exactly(2, timeout=5) == b"ok"
        freeze()
        port.send(b"anyone?")
        outcome = outcome_within(lambda: port.receive(timeout=HANG), HANG + 5)
    assert isinstance(outcome, ExporterUnreachable), outcome


def test_connecting_to_a_frozen_exporter_fails(frozen) -> None:
    served, freeze = frozen
    freeze()
    outcome = outcome_within(lambda: connect(served.address, keepalive=KEEPALIVE, timeout=3), HANG)
    assert isinstance(outcome, ExporterUnreachable), outcome


def test_upload_fails_when_the_exporter_freezes(frozen) -> None:
    """A frozen exporter stops reading, the client's writes back up and gRPC's keepalive pings stay
    queued behind them: the upload must still fail within the keepalive bound, not wait for ever."""
    served, freeze = frozen
    chunk = b"u" * (1 << 20)
    with connect(served.address, keepalive=KEEPALIVE) as root, root.target.resource() as (handle, stream):
        call: list = []
        caller = threading.Thread(target=lambda: call.append(outcome_within(lambda: root.target.call("upload", handle), HANG)))
        caller.start()
        for _ in range(8):
            stream.send(chunk)
        freeze()

        def send_for_ever() -> None:
            while True:
                stream.send(chunk)

        outcome = outcome_within(send_for_ever, HANG)
        caller.join(HANG)
    assert isinstance(outcome, ExporterUnreachable), outcome
    assert "stopped answering" in str(outcome)
    assert isinstance(call[0], ExporterUnreachable), call


def test_a_busy_exporter_is_not_taken_for_a_frozen_one(serve_lab) -> None:
    """The exporter's event loop computes for longer than the frozen-peer bound (default settings):
    the call in progress, an upload waiting on the busy loop and a new call all succeed."""
    from jumpstarter_drivers.core.access import DEFAULT_KEEPALIVE

    busy = 3 * DEFAULT_KEEPALIVE
    size = 64 << 20
    with serve_lab() as served, connect(served.address) as root:
        target = root.target
        with target.resource() as (handle, stream):
            uploaded: list = []
            upload = threading.Thread(target=lambda: uploaded.append(target.call("upload", handle)), daemon=True)
            upload.start()
            stream.send(b"x" * (1 << 20))
            hogged = outcome_within(lambda: target.call("hog", busy), busy + HANG)
            outcome = outcome_within(lambda: [stream.send(b"x" * (1 << 20)) for _ in range(size >> 20)], HANG)
            stream.send_eof()
            upload.join(HANG)
        assert hogged == busy
        assert not isinstance(outcome, BaseException), outcome
        assert uploaded == [size + (1 << 20)]
        assert target.call("echo", 3) == 3
