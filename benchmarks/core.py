"""Core runtime figures, side by side with a bare grpcio baseline, raw sockets and Jumpstarter 0.9.0.

Run: python benchmarks/core.py [--quick]

Every figure is measured in this run on this machine; the "reference" column repeats the
targets of the issue and Jumpstarter 0.9.0's published figures for comparison.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncGenerator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import anyio

from jumpstarter_drivers import Driver, Session, connect, export, exportstream, serve
from jumpstarter_drivers.core import loop
from jumpstarter_drivers.core.streams import pipe

ROWS: list[tuple[str, str, str, str]] = []


def row(name: str, ours: str, baseline: str = "", reference: str = "") -> None:
    ROWS.append((name, ours, baseline, reference))
    print(f"  {name:<56} {ours:>20} {baseline:>26}   {reference}", flush=True)


@dataclass(kw_only=True)
class Bench(Driver):
    """Methods shaped for measuring."""

    @export
    async def nothing(self) -> None:
        return None

    @export
    async def items(self, n: int) -> AsyncGenerator[int, None]:
        for i in range(n):
            yield i

    @export
    def burst(self, n: int) -> None:
        for i in range(n):
            self.logger.info("t=%r i=%d", time.monotonic(), i)

    @export
    async def spaced(self, n: int, interval: float) -> None:
        """One record every ``interval`` seconds: latency without a queue in front of it."""
        for i in range(n):
            self.logger.info("t=%r i=%d", time.monotonic(), i)
            await asyncio.sleep(interval)

    @exportstream
    @asynccontextmanager
    async def sink(self):
        """Counts what it receives; sends the count back as text at the end."""
        near, far = pipe(buffer=32)

        async def count() -> None:
            total = 0
            try:
                while True:
                    total += len(await far.receive())
            except (anyio.EndOfStream, anyio.ClosedResourceError):
                pass
            with contextlib.suppress(anyio.ClosedResourceError, anyio.BrokenResourceError):
                await far.send(str(total).encode())
                await far.send_eof()

        async with anyio.create_task_group() as tg:
            tg.start_soon(count)
            yield near
            tg.cancel_scope.cancel()

    @exportstream
    @asynccontextmanager
    async def source(self):
        """Sends the pattern until the client half-closes."""
        near, far = pipe(buffer=32)
        chunk = (bytes(range(256)) * 4096)[: 1 << 20]

        async def produce() -> None:
            with contextlib.suppress(anyio.ClosedResourceError, anyio.BrokenResourceError):
                while True:
                    await far.send(chunk)

        async with anyio.create_task_group() as tg:
            tg.start_soon(produce)
            yield near
            tg.cancel_scope.cancel()


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


def timed(fn: Callable[[], object], n: int) -> list[float]:
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return samples


# --- baselines --------------------------------------------------------------------------------


@contextlib.contextmanager
def bare_grpc_server(path: str):
    """A grpcio aio server on the same background loop answering one unary method with empty bytes."""
    import grpc

    async def handle(request: bytes, context: object) -> bytes:
        return b""

    handler = grpc.method_handlers_generic_handler(
        "bench.Bare", {"Call": grpc.unary_unary_rpc_method_handler(handle)}
    )

    async def start() -> object:
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((handler,))
        server.add_insecure_port(f"unix://{path}")
        await server.start()
        return server

    server = loop.run(start())
    try:
        yield
    finally:
        loop.run(server.stop(0))


def bare_grpc_latency(n: int) -> list[float]:
    import grpc

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "bare.sock")
        with bare_grpc_server(path):
            channel = grpc.secure_channel(
                f"unix://{path}", grpc.local_channel_credentials(grpc.LocalConnectionType.UDS)
            )
            call = channel.unary_unary("/bench.Bare/Call")
            for _ in range(200):
                call(b"")
            samples = timed(lambda: call(b""), n)
            channel.close()
    return samples


def raw_socket_mbps(size: int) -> float:
    a, b = socket.socketpair()
    chunk = b"\x00" * (1 << 20)
    received = 0

    def reader() -> None:
        nonlocal received
        while received < size:
            data = b.recv(1 << 20)
            if not data:
                break
            received += len(data)

    thread = threading.Thread(target=reader)
    start = time.perf_counter()
    thread.start()
    sent = 0
    while sent < size:
        a.sendall(chunk)
        sent += len(chunk)
    thread.join()
    elapsed = time.perf_counter() - start
    a.close()
    b.close()
    return size / elapsed / 1e6


# --- ours -------------------------------------------------------------------------------------


def measure_ours(quick: bool) -> None:
    n_calls = 2000 if quick else 10000
    print("\nUnary call latency (unix socket, async driver method returning None)")
    bare = bare_grpc_latency(n_calls)
    with serve(Bench()) as client:
        for _ in range(200):
            client.call("nothing")
        ours = timed(lambda: client.call("nothing"), n_calls)
        ratio = statistics.median(ours) / statistics.median(bare)
        row("unary median", f"{statistics.median(ours) * 1e3:.3f} ms", f"bare grpcio {statistics.median(bare) * 1e3:.3f} ms", "target <= 1.2x bare; Jumpstarter ~1 ms")
        row("unary p99", f"{percentile(ours, 0.99) * 1e3:.3f} ms", f"bare grpcio {percentile(bare, 0.99) * 1e3:.3f} ms")
        row("unary median / bare", f"{ratio:.2f}x", "", "target <= 1.2x")

        print("\nStreaming call")
        n_items = 50_000 if quick else 200_000
        start = time.perf_counter()
        count = sum(1 for _ in client.streamingcall("items", n_items))
        elapsed = time.perf_counter() - start
        assert count == n_items, count
        row("streamed items/s", f"{n_items / elapsed:,.0f}", "", "target >= 25,000; Jumpstarter ~2,500")

        print("\nByte streams (1 MiB frames, bytes counted/verified)")
        size = (256 if quick else 1024) << 20
        raw = raw_socket_mbps(size)
        chunk = b"\x5a" * (1 << 20)
        with client.stream("sink") as stream:
            start = time.perf_counter()
            for _ in range(size // len(chunk)):
                stream.send(chunk)
            stream.send_eof()
            reply = b"".join(stream)
            up = size / (time.perf_counter() - start) / 1e6
        assert int(reply) == size, (reply, size)
        row("byte stream client->driver", f"{up:,.0f} MB/s", f"raw socketpair {raw:,.0f} MB/s", "target >= 500; Jumpstarter 130-175")
        pattern = (bytes(range(256)) * 4096)[: 1 << 20]
        with client.stream("source") as stream:
            start = time.perf_counter()
            got = 0
            while got < size:
                data = stream.receive(timeout=10)
                if got % (64 << 20) == 0:
                    assert data == pattern[: len(data)], "stream data corrupted"
                got += len(data)
            down = got / (time.perf_counter() - start) / 1e6
        row("byte stream driver->client", f"{down:,.0f} MB/s", f"raw socketpair {raw:,.0f} MB/s", "target >= 500; Jumpstarter 130-175")

    print("\nDriver logs: latency of records 2 ms apart; loss and drain time of a 10,000-record burst")
    measure_logs(500, subscribers=1, spaced=True)
    measure_logs(10_000, subscribers=1)
    measure_logs(10_000, subscribers=3)

    print("\nserve() enter+exit")
    for _ in range(5):
        with serve(Bench()):
            pass
    samples = timed(lambda: _serve_once(), 30 if quick else 100)
    row("serve() enter+exit median", f"{statistics.median(samples) * 1e3:.2f} ms", "", "target <= 10 ms")


def _serve_once() -> None:
    with serve(Bench()):
        pass


def measure_logs(n: int, subscribers: int, spaced: bool = False) -> None:
    """One subscriber: the whole path to the ``exporter:driver`` logger. Several: raw LogStream calls."""
    latencies: list[list[float]] = [[] for _ in range(subscribers)]
    done = [threading.Event() for _ in range(subscribers)]

    def record(index: int, message: str) -> None:
        latencies[index].append(time.monotonic() - float(message.split()[0][2:]))
        if len(latencies[index]) >= n:
            done[index].set()

    class Collect(logging.Handler):
        def emit(self, rec: logging.LogRecord) -> None:
            record(0, rec.getMessage())

    target = logging.getLogger("exporter:driver")
    handler = Collect()
    with Session(root_device=Bench()) as session, session.serve_unix() as path, connect(path) as client:
        if subscribers == 1:
            target.addHandler(handler)
            target.setLevel(logging.INFO)
            target.propagate = False
            try:
                with client.log_stream():
                    started = time.monotonic()
                    client.call("spaced", n, 0.002) if spaced else client.call("burst", n)
                    done[0].wait(30)
                    drained = time.monotonic() - started
            finally:
                target.removeHandler(handler)
                target.propagate = True
        else:
            calls = [client.connection.exporter.LogStream(client.connection.empty()) for _ in range(subscribers)]

            def pump(index: int) -> None:
                with contextlib.suppress(Exception):
                    for response in calls[index]:
                        record(index, response.message)

            threads = [threading.Thread(target=pump, args=(i,), daemon=True) for i in range(subscribers)]
            for call, thread in zip(calls, threads):
                thread.start()
                call.initial_metadata()
            started = time.monotonic()
            client.call("burst", n)
            for event in done:
                event.wait(30)
            drained = time.monotonic() - started
            for call in calls:
                call.cancel()
            for thread in threads:
                thread.join(5)
    received = [len(lat) for lat in latencies]
    merged = [x for lat in latencies for x in lat]
    label = "1 subscriber, to the logger" if subscribers == 1 else f"{subscribers} raw subscribers"
    if spaced:
        row(f"log latency median ({label})", f"{statistics.median(merged) * 1e3:.2f} ms", "", "target <= 5 ms; Jumpstarter ~29 ms")
        row(f"log latency p99 ({label})", f"{percentile(merged, 0.99) * 1e3:.2f} ms")
        return
    row(
        f"burst records received ({label})",
        " / ".join(f"{r:,}" for r in received) + f" of {n:,}",
        "",
        "target: all; Jumpstarter 256 of 1,000",
    )
    row(f"burst drained in ({label})", f"{drained:.2f} s", "", f"{n / drained:,.0f} records/s")


def measure_import() -> None:
    print("\nImport cost (fresh interpreter, best of 5)")

    def cost(code: str) -> float:
        best = float("inf")
        for _ in range(5):
            out = subprocess.run(
                [sys.executable, "-c", f"import time; t=time.perf_counter(); {code}; print(time.perf_counter()-t)"],
                capture_output=True,
                text=True,
                check=True,
            )
            best = min(best, float(out.stdout.strip().splitlines()[-1]))
        return best

    base = cost("import pytest")
    ours = cost("import pytest; import jumpstarter_testing, jumpstarter_testing.plugin")
    row("import jumpstarter_testing (over pytest)", f"{(ours - base) * 1e3:.1f} ms", f"pytest alone {base * 1e3:.0f} ms", "target <= 150 ms; Jumpstarter ~1 s")


def measure_jumpstarter(quick: bool) -> None:
    try:
        from jumpstarter.exporter import Session as JSession
        from jumpstarter.utils.env import env as jenv
        from jumpstarter_driver_power.driver import MockPower as JMockPower
    except ImportError as exc:
        print(f"\nJumpstarter 0.9.0 cannot be imported ({exc}): pip install jumpstarter==0.9.0 jumpstarter-driver-power==0.9.0")
        return
    import warnings

    warnings.filterwarnings("ignore", category=RuntimeWarning)
    print("\nJumpstarter 0.9.0 in the same run (its client against its session, MockPower)")
    with JSession(root_device=JMockPower()) as session, session.serve_unix() as path:
        os.environ["JUMPSTARTER_HOST"] = str(path)
        os.environ["JMP_DRIVERS_ALLOW"] = "UNSAFE"
        with jenv() as client:
            for _ in range(100):
                client.on()
            samples = timed(client.on, 500 if quick else 2000)
            row("Jumpstarter unary median", f"{statistics.median(samples) * 1e3:.3f} ms", "", "reference ~1 ms")
            start = time.perf_counter()
            n = 0
            deadline = start + 2
            while time.perf_counter() < deadline:
                n += sum(1 for _ in client.read())
            row("Jumpstarter streamed items/s (read)", f"{n / (time.perf_counter() - start):,.0f}", "", "reference ~2,500 (incl. call setup)")
    with serve(Bench()) as client:
        start = time.perf_counter()
        n = 0
        deadline = start + 2
        while time.perf_counter() < deadline:
            n += sum(1 for _ in client.streamingcall("items", 2))
        row("ours, same 2-item streaming calls", f"{n / (time.perf_counter() - start):,.0f} items/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer iterations (a smoke run)")
    args = parser.parse_args()
    print(f"  {'figure':<56} {'ours':>20} {'baseline (same run)':>26}   reference")
    measure_ours(args.quick)
    measure_import()
    measure_jumpstarter(args.quick)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    row("peak RSS of this process", f"{peak:.0f} MiB")


if __name__ == "__main__":
    main()
