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
