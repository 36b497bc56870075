"""Clients that vanish mid-stream (closed connection, killed process) free what they held."""

from __future__ import annotations

import select
import signal
import subprocess
import sys
import textwrap
import threading

import pytest

from jumpstarter_drivers.cli.process import ServeProcess
from jumpstarter_drivers.core.access import connect
from jumpstarter_drivers.core.errors import DriverError, ExporterUnreachable

from .conftest import ROOT, idle, state, wait_until


def test_the_port_is_exclusive(client) -> None:
    with client.stream("port") as first:
        first.send(b"mine")
        assert first.read_exactly(4, timeout=5) == b"mine"
        with pytest.raises(DriverError, match="port busy"), client.stream("port"):
            pass
    wait_until(lambda: idle(client), "port released after a clean close")


def test_connection_closed_mid_stream_frees_the_port(exporter: ServeProcess, client) -> None:
    leaver = connect(exporter.address)
    stream_cm = leaver.target.stream("port")
    stream = stream_cm.__enter__()
    stream.send(b"half a line")
    assert stream.read_exactly(11, timeout=5) == b"half a line"
    assert state(client)["port_busy"]
    leaver.connection.channel.close()  # the connection drops; the stream is never ended
    wait_until(lambda: not state(client)["port_busy"], "port released after the connection dropped")
    with client.stream("port") as next_one:
        next_one.send(b"my turn")
        assert next_one.read_exactly(7, timeout=5) == b"my turn"
    with pytest.raises((ExporterUnreachable, ValueError)):
        stream_cm.__exit__(None, None, None)
        stream.send(b"more")
        stream.receive(timeout=1)


def test_connection_closed_mid_streaming_call_stops_the_generator(exporter: ServeProcess, client) -> None:
    leaver = connect(exporter.address)
    ticks = leaver.target.streamingcall("ticks")
    assert [next(ticks) for _ in range(3)] == [0, 1, 2]
    assert state(client)["streaming"] == 1
    leaver.connection.channel.close()
    wait_until(lambda: state(client)["streaming"] == 0, "endless generator closed after the client left")


def test_connection_closed_mid_upload(exporter: ServeProcess, client) -> None:
    leaver = connect(exporter.address)
    result: list = []

    with leaver.target.resource() as (handle, stream):
        call = threading.Thread(target=lambda: result.append(_call_capturing(leaver.target, "upload", handle)))
        call.start()
        stream.send(b"x" * 100_000)
        wait_until(lambda: state(client)["uploading"] == 1, "upload started")
        leaver.connection.channel.close()
        call.join(10)
    assert not call.is_alive(), "the upload call returned once the connection dropped"
    assert isinstance(result[0], ExporterUnreachable)
    wait_until(lambda: idle(client), "upload released after the client left")


def _call_capturing(target, method: str, *args):
    try:
        return target.call(method, *args)
    except Exception as exc:  # noqa: BLE001 - the test inspects what the call ended with
        return exc


KILLED_CLIENT = textwrap.dedent(
    """
    import sys, threading
    from jumpstarter_drivers.core.access import connect

    root = connect(sys.argv[1])
    target = root.target
    ticks = target.streamingcall("ticks")
    next(ticks)
    port_context = target.stream("port")  # held, so that nothing closes the stream before the kill
    port = port_context.__enter__()
    port.send(b"ping")
    port.read_exactly(4, timeout=5)
    resource = target.resource()
    handle, upload = resource.__enter__()
    threading.Thread(target=target.call, args=("upload", handle), daemon=True).start()
    upload.send(b"y" * 50_000)
    print("holding", flush=True)
    threading.Event().wait()
    """
)


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM])
def test_killed_client_process_leaves_no_stuck_state(exporter: ServeProcess, client, signum: int) -> None:
    victim = subprocess.Popen([sys.executable, "-c", KILLED_CLIENT, exporter.address],
                              stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        ready, _, _ = select.select([victim.stdout], [], [], 30)
        assert ready, "the client process did not say 'holding' within 30 s"
        assert victim.stdout.readline() == "holding\n"
        wait_until(
            lambda: state(client) | {"calls": 0} == {"calls": 0, "port_busy": True, "streaming": 1, "uploading": 1},
            "the client holds the port, a stream and an upload",
        )
        victim.send_signal(signum)
        victim.wait(10)
    finally:  # the client waits forever by design: never leave it behind when the test fails
        if victim.poll() is None:
            victim.kill()
            victim.wait(10)
        victim.stdout.close()
    wait_until(lambda: idle(client), "everything released after the client process died")
    with client.stream("port") as port:
        port.send(b"free")
        assert port.read_exactly(4, timeout=5) == b"free"
    assert client.call("echo", "still serving") == "still serving"
