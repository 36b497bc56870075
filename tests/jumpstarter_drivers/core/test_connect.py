"""Reaching a session: addresses, the allow-list, and exporters that die or freeze."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from jumpstarter_drivers import (
    JMP_DRIVERS_ALLOW,
    JUMPSTARTER_HOST,
    AllowList,
    ClientNotAllowed,
    ConfigurationError,
    ExporterUnreachable,
    Session,
    connect,
    env,
)
from jumpstarter_drivers.power import MockPower, PowerClient


def test_constants():
    assert JUMPSTARTER_HOST == "JUMPSTARTER_HOST"
    assert JMP_DRIVERS_ALLOW == "JMP_DRIVERS_ALLOW"


@pytest.fixture
def served():
    with Session(root_device=MockPower()) as session, session.serve_unix() as path:
        yield path


def test_env_connects_to_jumpstarter_host(served, monkeypatch):
    monkeypatch.setenv(JUMPSTARTER_HOST, str(served))
    monkeypatch.setenv(JMP_DRIVERS_ALLOW, "jumpstarter_drivers.power.*")
    with env() as client:
        assert isinstance(client, PowerClient)
        client.on()
        readings = list(client.read())
    assert [r.apparent_power for r in readings] == [0.0, 10.0]


def test_env_without_jumpstarter_host_says_what_to_set(monkeypatch):
    monkeypatch.delenv(JUMPSTARTER_HOST, raising=False)
    with pytest.raises(ConfigurationError, match="JUMPSTARTER_HOST is not set"):
        env()


@pytest.mark.parametrize("where", ["missing-dir/socket", "stale-socket", "127.0.0.1:1"])
def test_pointing_at_nothing_fails_fast_and_clearly(where, tmp_path, monkeypatch):
    if where == "stale-socket":
        import socket

        path = tmp_path / "stale"
        with socket.socket(socket.AF_UNIX) as sock:
            sock.bind(str(path))
        where = str(path)
    elif "/" in where:
        where = str(tmp_path / where)
    monkeypatch.setenv(JUMPSTARTER_HOST, where)
    started = time.monotonic()
    with pytest.raises(ExporterUnreachable, match="exporter") as info:
        env()
    assert time.monotonic() - started < 5
    assert where.split(":")[0] in str(info.value)


def test_allow_list_refuses_and_names_the_class(served, monkeypatch):
    monkeypatch.setenv(JUMPSTARTER_HOST, str(served))
    monkeypatch.setenv(JMP_DRIVERS_ALLOW, "somebody_else.*")
    for name in [m for m in sys.modules if m.startswith("jumpstarter_drivers.power")]:
        monkeypatch.delitem(sys.modules, name)
    with env() as client:
        assert "jumpstarter_drivers.power.client" not in sys.modules, "imported a class that is not allowed"
        with pytest.raises(ClientNotAllowed, match=r"jumpstarter_drivers\.power\.client\.PowerClient.*JMP_DRIVERS_ALLOW"):
            client.on()
        with pytest.raises(ClientNotAllowed):
            client.call("on")


@pytest.mark.parametrize("value", ["", "a.*,,b.*", "not a pattern", "/path/to/x"])
def test_bad_allow_list_values_are_refused(value, served, monkeypatch):
    monkeypatch.setenv(JUMPSTARTER_HOST, str(served))
    monkeypatch.setenv(JMP_DRIVERS_ALLOW, value)
    with pytest.raises(ConfigurationError, match="JMP_DRIVERS_ALLOW"):
        env()


def test_allow_list_forms():
    assert AllowList.parse("UNSAFE").allows("anything.at.All")
    assert AllowList.parse("a.*, b.c.D").allows("b.c.D")
    assert not AllowList.parse("a.*").allows("b.X")
    assert str(AllowList.parse("a.*,UNSAFE")) == "a.*,UNSAFE"


EXPORTER = textwrap.dedent(
    """
    import sys, time
    from collections.abc import Generator
    from dataclasses import dataclass
    from jumpstarter_drivers import Driver, Session, export

    @dataclass(kw_only=True)
    class Slow(Driver):
        @export
        def ping(self) -> str:
            return "pong"

        @export
        def hang(self) -> None:
            time.sleep(3600)

        @export
        def ticks(self) -> Generator[int, None, None]:
            i = 0
            while True:
                yield i
                i += 1
                time.sleep(0.01)

    with Session(root_device=Slow()) as session, session.serve_unix(sys.argv[1]):
        print("ready", flush=True)
        sys.stdin.read()
    """
)


@pytest.fixture
def exporter_process(tmp_path):
    script = tmp_path / "exporter.py"
    script.write_text(EXPORTER)
    socket_path = tmp_path / "exporter.sock"
    proc = subprocess.Popen(
        [sys.executable, str(script), str(socket_path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout.readline().strip() == "ready"
        yield proc, socket_path
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)
            proc.kill()
        proc.wait(10)


def _call_in_thread(fn):
    import threading

    outcome: dict = {}

    def run():
        started = time.monotonic()
        try:
            outcome["result"] = fn()
        except BaseException as exc:  # noqa: BLE001 - the test inspects whatever came
            outcome["error"] = exc
        outcome["seconds"] = time.monotonic() - started

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def test_exporter_killed_mid_call(exporter_process):
    proc, path = exporter_process
    with connect(path) as client:
        assert client.call("ping") == "pong"
        thread, outcome = _call_in_thread(lambda: client.call("hang"))
        _wait_until_busy(proc)
        proc.kill()
        thread.join(10)
    assert isinstance(outcome.get("error"), ExporterUnreachable), outcome
    assert "hang()" in str(outcome["error"])


def test_exporter_killed_mid_stream(exporter_process):
    proc, path = exporter_process
    with connect(path) as client:
        ticks = client.streamingcall("ticks")
        assert next(ticks) == 0
        proc.kill()
        with pytest.raises(ExporterUnreachable, match="ticks"):
            for _ in ticks:
                pass


def test_frozen_exporter_fails_within_the_keepalive_bound(exporter_process):
    proc, path = exporter_process
    with connect(path, keepalive=0.5) as client:
        assert client.call("ping") == "pong"
        thread, outcome = _call_in_thread(lambda: client.call("hang"))
        _wait_until_busy(proc)
        os.kill(proc.pid, signal.SIGSTOP)
        thread.join(30)
        assert not thread.is_alive(), "the call hung on a frozen exporter"
    assert isinstance(outcome.get("error"), ExporterUnreachable), outcome
    assert outcome["seconds"] < 10


def test_long_calls_are_not_capped_by_keepalive(exporter_process):
    proc, path = exporter_process
    with connect(path, keepalive=1) as client:
        thread, outcome = _call_in_thread(lambda: client.call("hang"))
        thread.join(4)  # several keepalive periods: the call is still legitimately running
        assert thread.is_alive() and not outcome, outcome
        proc.kill()
        thread.join(10)
    assert isinstance(outcome.get("error"), ExporterUnreachable)


def _wait_until_busy(proc) -> None:
    """Give the exporter a moment to start the call (it is a separate process: no event to wait on)."""
    deadline = time.monotonic() + 2
    status = Path(f"/proc/{proc.pid}/status")
    while time.monotonic() < deadline:
        threads = next(int(line.split()[1]) for line in status.read_text().splitlines() if line.startswith("Threads:"))
        if threads >= 4:
            break
        time.sleep(0.01)
    time.sleep(0.1)


def test_unix_socket_with_a_passphrase():
    from jumpstarter_drivers import Unauthenticated

    with Session(root_device=MockPower()) as session, session.serve_unix(passphrase="s3cret") as path:
        with pytest.raises(Unauthenticated, match="missing passphrase"):
            connect(path)
        with pytest.raises(Unauthenticated, match="wrong passphrase"):
            connect(path, passphrase="guess")
        with connect(path, passphrase="s3cret") as client:
            client.on()
