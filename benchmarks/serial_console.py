"""Serial console speed through a pseudo-terminal: the toolkit beside a raw pty, in the same run.

A thread plays the board on the pty's master side (an echo peer, or a source of bulk output).
The same measurements run over:

- raw pty: the slave opened with ``os.open`` and set raw, no toolkit, no pyserial;
- toolkit stream: ``PySerial`` served by ``serve()`` (a real session on a unix socket), the
  client's ``stream()``: every byte crosses the gRPC wire both ways;
- toolkit pexpect: the same console through ``pexpect()`` (``send`` + ``expect``), latency only.

Figures: round-trip latency (median and p99) of one byte and of a 32-byte line, bytes/s from
the board to the client and back, and echo bytes/s (sent and echoed back at once).

    python benchmarks/serial_console.py [--count 2000] [--mib 16]
"""

from __future__ import annotations

import argparse
import os
import select
import statistics
import threading
import time
import tty
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from jumpstarter_drivers.core import serve
from jumpstarter_drivers.pyserial import PySerial

LINE = b"echo 0123456789abcdefghijklmno\n"  # 32 bytes
CHUNK = 1 << 16


class Peer:
    """The board: echoes what it reads, or writes ``total`` bytes when asked."""

    def __init__(self, master: int) -> None:
        self.master = master
        self.stopping = threading.Event()
        self.thread: threading.Thread | None = None

    @contextmanager
    def echo(self) -> Iterator[None]:
        with self._running(self._echo):
            yield

    @contextmanager
    def source(self, total: int) -> Iterator[None]:
        with self._running(lambda: self._write(b"\x55" * total)):
            yield

    @contextmanager
    def sink(self, total: int) -> Iterator[threading.Event]:
        """Read and drop ``total`` bytes; the event is set once they all arrived."""
        done = threading.Event()

        def drain() -> None:
            have = 0
            while have < total and not self.stopping.is_set():
                ready, _, _ = select.select([self.master], [], [], 0.05)
                if ready:
                    have += len(os.read(self.master, CHUNK))
            if have >= total:
                done.set()

        with self._running(drain):
            yield done

    @contextmanager
    def _running(self, target: Callable[[], None]) -> Iterator[None]:
        self.stopping.clear()
        self.thread = threading.Thread(target=target, daemon=True)
        self.thread.start()
        try:
            yield
        finally:
            self.stopping.set()
            self.thread.join(10)

    def _echo(self) -> None:
        while not self.stopping.is_set():
            ready, _, _ = select.select([self.master], [], [], 0.05)
            if ready:
                self._write(os.read(self.master, CHUNK))

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view and not self.stopping.is_set():
            _, ready, _ = select.select([], [self.master], [], 0.05)
            if ready:
                view = view[os.write(self.master, view[:CHUNK]) :]


class RawPty:
    """The slave side without any toolkit: blocking ``os.read``/``os.write`` with ``select``."""

    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_RDWR | os.O_NOCTTY)
        tty.setraw(self.fd)

    def send(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view) :]

    def receive(self, timeout: float) -> bytes:
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if not ready:
            raise TimeoutError(f"nothing within {timeout} s")
        return os.read(self.fd, CHUNK)

    def close(self) -> None:
        os.close(self.fd)


def read_exactly(receive: Callable[[float], bytes], size: int, timeout: float = 10) -> int:
    have = 0
    while have < size:
        have += len(receive(timeout))
    return have


def round_trips(
    send: Callable[[bytes], None], receive: Callable[[float], bytes], data: bytes, count: int
) -> list[float]:
    times = []
    for _ in range(count):
        start = time.perf_counter()
        send(data)
        read_exactly(receive, len(data))
        times.append(time.perf_counter() - start)
    return times


def pexpect_round_trips(console, data: bytes, count: int) -> list[float]:
    times = []
    for _ in range(count):
        start = time.perf_counter()
        console.send(data)
        console.expect_exact(data)
        times.append(time.perf_counter() - start)
    return times


def throughput(send: Callable[[bytes], None] | None, receive: Callable[[float], bytes], total: int) -> float:
    """Bytes/s: with ``send`` the data is sent (and echoed) while it is read back."""
    sender = None
    if send is not None:
        block = b"\xaa" * CHUNK
        sender = threading.Thread(target=lambda: [send(block) for _ in range(total // CHUNK)], daemon=True)
    start = time.perf_counter()
    if sender is not None:
        sender.start()
    read_exactly(receive, total, timeout=30)
    elapsed = time.perf_counter() - start
    if sender is not None:
        sender.join(10)
    return total / elapsed


def upload(send: Callable[[bytes], None], peer: Peer, total: int) -> float:
    """Bytes/s from the client to the board."""
    block = b"\xaa" * CHUNK
    with peer.sink(total) as done:
        start = time.perf_counter()
        for _ in range(total // CHUNK):
            send(block)
        if not done.wait(30):
            raise TimeoutError("the board did not receive everything within 30 s")
        return total / (time.perf_counter() - start)


def measure(send, receive, peer: Peer, count: int, total: int) -> dict[str, float]:
    figures: dict[str, float] = {}
    with peer.echo():
        for name, data in (("byte", b"x"), ("line", LINE)):
            round_trips(send, receive, data, count // 10)  # warm up
            times = sorted(round_trips(send, receive, data, count))
            figures[f"{name} median"] = statistics.median(times) * 1e6
            figures[f"{name} p99"] = times[int(len(times) * 0.99) - 1] * 1e6
        figures["echo"] = throughput(send, receive, total)
    with peer.source(total):
        figures["board->client"] = throughput(None, receive, total)
    figures["client->board"] = upload(send, peer, total)
    return figures


def measure_pexpect(console, peer: Peer, count: int) -> dict[str, float]:
    figures: dict[str, float] = {}
    with peer.echo():
        for name, data in (("byte", b"x"), ("line", LINE)):
            pexpect_round_trips(console, data, count // 10)
            times = sorted(pexpect_round_trips(console, data, count))
            figures[f"{name} median"] = statistics.median(times) * 1e6
            figures[f"{name} p99"] = times[int(len(times) * 0.99) - 1] * 1e6
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=2000, help="round trips per latency figure")
    parser.add_argument("--mib", type=int, default=16, help="MiB per throughput figure")
    args = parser.parse_args()
    total = args.mib << 20

    master, slave = os.openpty()
    path = os.ttyname(slave)
    peer = Peer(master)
    columns: dict[str, dict[str, float]] = {}
    try:
        raw = RawPty(path)
        try:
            columns["raw pty"] = measure(raw.send, raw.receive, peer, args.count, total)
        finally:
            raw.close()
        with serve(PySerial(url=path)) as client:
            with client.stream() as stream:
                columns["toolkit stream"] = measure(stream.send, stream.receive, peer, args.count, total)
            with client.pexpect(timeout=10) as console:
                columns["toolkit pexpect"] = measure_pexpect(console, peer, args.count)
    finally:
        os.close(master)
        os.close(slave)

    rows = [
        ("1-byte round trip, median", "byte median", "µs"),
        ("1-byte round trip, p99", "byte p99", "µs"),
        ("32-byte line round trip, median", "line median", "µs"),
        ("32-byte line round trip, p99", "line p99", "µs"),
        ("board -> client", "board->client", "MB/s"),
        ("client -> board", "client->board", "MB/s"),
        ("echo (send + receive)", "echo", "MB/s"),
    ]
    names = list(columns)
    print(f"serial console through a pty: {args.count} round trips per latency, {args.mib} MiB per throughput")
    print(f"{'':34}" + "".join(f"{n:>18}" for n in names))
    for label, key, unit in rows:
        cells = []
        for n in names:
            value = columns[n].get(key)
            if value is None:
                cells.append(f"{'-':>18}")
            elif unit == "MB/s":
                cells.append(f"{value / 1e6:>13.1f} MB/s")
            else:
                cells.append(f"{value:>15.0f} µs")
        print(f"{label:34}" + "".join(cells))


if __name__ == "__main__":
    main()
