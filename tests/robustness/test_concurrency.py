"""50 clients x 200 calls at once on one exporter: every call answered, correctly, none lost."""

from __future__ import annotations

import threading
import time

from jumpstarter_drivers.cli.process import ServeProcess
from jumpstarter_drivers.core.access import connect

from .conftest import state

CLIENTS = 50
CALLS = 200


def test_many_clients_at_once(exporter: ServeProcess) -> None:
    with connect(exporter.address) as observer:
        calls_before = state(observer.target)["calls"]
    start = threading.Barrier(CLIENTS, timeout=60)
    answers: dict[int, list] = {}
    errors: list[BaseException] = []

    def client_thread(index: int) -> None:
        try:
            with connect(exporter.address, timeout=30) as root:
                target = root.target
                start.wait()
                got = []
                for call in range(CALLS):
                    if call % 2:
                        got.append(target.call("echo", f"{index}:{call}"))
                    else:
                        got.append(target.call_as(int, "add", index, call))
                answers[index] = got
        except BaseException as exc:  # noqa: BLE001 - collected and asserted on below
            errors.append(exc)

    threads = [threading.Thread(target=client_thread, args=(i,), name=f"client-{i}") for i in range(CLIENTS)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 300
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    assert not any(t.is_alive() for t in threads), "clients still running after 300 s"
    assert errors == []
    assert sorted(answers) == list(range(CLIENTS))
    for index, got in answers.items():
        expected = [f"{index}:{c}" if c % 2 else index + c for c in range(CALLS)]
        assert got == expected, f"client {index} got wrong or missing answers"
    with connect(exporter.address) as observer:
        assert state(observer.target)["calls"] - calls_before == CLIENTS * CALLS, "the exporter served every call once"
