"""What one forwarding hop adds to a driver call on this machine, in Python and in C.

Run: python benchmarks/hops.py [--calls 300] [--rounds 5]

A tunnel through the lab controller's router crosses three forwarding processes whatever they
are written in: the client's end (gRPC in Python cannot run a channel over a socket it is
handed, so the client's channel goes to a local socket and a relay carries it on), the router,
and the exporter's end (the same, for the server). This script measures the price of one such
hop in the same run: one exporter served in plaintext on loopback, reached directly, through one
Python asyncio relay (the shape of ours: a protocol handing each chunk to the other transport),
and through one C relay (``socat``, skipped when it is not installed). It then prints what three
hops of each kind would make of the direct call, the figure the router's latency is held to.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import yaml

from jumpstarter_drivers.core.access import connect
from jumpstarter_drivers.core.processes import stop_process


class _Forward(asyncio.Protocol):
    """One side of a Python relay: what it receives goes to the other side's transport."""

    def __init__(self, peer: _Forward | None = None) -> None:
        self.peer = peer
        self.transport: asyncio.Transport | None = None
        self.early: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.write(data)
        else:
            self.early.append(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.close()


@contextlib.contextmanager
def python_relay(target_port: int) -> Iterator[int]:
    """A Python asyncio relay to ``127.0.0.1:target_port`` on its own thread and loop; its port."""
    loop = asyncio.new_event_loop()
    started: list[int] = []
    ready = threading.Event()

    async def serve() -> None:
        def accepted() -> _Forward:
            near = _Forward()

            async def onward() -> None:
                _, far = await loop.create_connection(lambda: _Forward(near), "127.0.0.1", target_port)
                near.peer = far
                for data in near.early:
                    far.transport.write(data)  # type: ignore[union-attr]

            loop.create_task(onward())
            return near

        server = await loop.create_server(accepted, "127.0.0.1", 0)
        started.append(server.sockets[0].getsockname()[1])
        ready.set()

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(serve(), loop)
    if not ready.wait(10):
        sys.exit("the Python relay did not start")
    try:
        yield started[0]
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)


@contextlib.contextmanager
def c_relay(target_port: int) -> Iterator[int | None]:
    """``socat`` relaying to ``127.0.0.1:target_port``; its port, or ``None`` without socat."""
    socat = shutil.which("socat")
    if socat is None:
        yield None
        return
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [socat, f"TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork,nodelay", f"TCP:127.0.0.1:{target_port},nodelay"],
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            time.sleep(0.05)
        yield port
    finally:
        stop_process(process)


@contextlib.contextmanager
def exporter(directory: Path) -> Iterator[int]:
    """``jumpstarter serve --listen --insecure`` with a MockPower; its port."""
    lab = directory / "lab.yaml"
    lab.write_text(yaml.safe_dump({"export": {"power": {"type": "MockPower"}}}))
    command = [sys.executable, "-m", "jumpstarter_drivers.cli", "serve", str(lab), "--listen", "127.0.0.1:0",
               "--insecure", "--log-level", "WARNING"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        address = process.stdout.readline().strip()  # type: ignore[union-attr]
        if not address:
            sys.exit("jumpstarter serve did not start")
        yield int(address.rpartition(":")[2])
    finally:
        stop_process(process)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=300, help="driver calls per path per round")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="jmp-hops-") as directory, exporter(Path(directory)) as port, \
            python_relay(port) as python_port, c_relay(port) as c_port:
        ports = {"direct": port, "one Python relay hop": python_port}
        if c_port is not None:
            ports["one C relay hop (socat)"] = c_port
        with contextlib.ExitStack() as stack:
            clients = {name: stack.enter_context(connect(f"127.0.0.1:{number}", insecure=True))
                       for name, number in ports.items()}
            times: dict[str, list[float]] = {name: [] for name in clients}
            for client in clients.values():
                client.power.on()
            for _ in range(args.rounds):  # the paths take turns: a busy moment falls on all alike
                for name, client in clients.items():
                    for _ in range(args.calls):
                        begin = time.perf_counter()
                        client.power.on()
                        times[name].append(time.perf_counter() - begin)
    direct = statistics.median(times["direct"])
    print(f"{'driver call, plaintext on loopback':<30} {'median':>10} {'per hop':>10} {'3 hops vs direct':>18}")
    for name, values in times.items():
        median = statistics.median(values)
        hop = median - direct
        projected = f"{(direct + 3 * hop) / direct:17.2f}x" if name != "direct" else ""
        print(f"{name:<30} {median * 1e3:7.3f} ms {hop * 1e6:7.0f} us {projected}")
    if "one C relay hop (socat)" not in times:
        print("(socat is not installed: no C figure; apt-get install socat)")


if __name__ == "__main__":
    main()
