"""Booting and using a board's Linux: seconds per state, command round trip, console file transfer,
forwarded TCP throughput.

Run: python benchmarks/boot.py [--transfer-kib 64] [--tcp-mib 64] [--no-qemu]

On the virtual board (always) and the QEMU board with Debian's arm64 Linux (when this machine can
host it: root, QEMU, the packages ``./run tests`` downloads):

- off -> uboot -> shell through the boot strategy, seconds per state;
- ``run("true")`` round trip (median of 20), beside a session call that does no console work
  (``strategy.get_state()``) as the baseline of the same run;
- console file transfer: ``put`` then ``get`` of random bytes, KiB/s each way;
- forwarded TCP throughput: a 64 MiB HTTP download from a loopback server through ``forward()``
  (client, session byte stream, exporter, server) against a direct connection to the same server,
  in the same run: the cost of the tunnel itself.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import http.server
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from jumpstarter_drivers.composite.driver import Composite, Proxy, resolve_refs
from jumpstarter_drivers.core import connect, serve
from jumpstarter_drivers.network import TcpNetwork
from jumpstarter_drivers.qemu.lab import LabUnavailable, check_qemu, linux_lab_config, serve_in_namespace, tap_namespace
from jumpstarter_drivers.qemu.linux import LinuxUnavailable, build_linux, dump_dtb, make_linux_bundle
from jumpstarter_drivers.shell import Shell
from jumpstarter_drivers.strategy import BootStrategy
from jumpstarter_drivers.uboot import UBoot
from jumpstarter_drivers.virtualboard import VirtualBoard, VirtualFlasher

MIB = 1 << 20


def virtual_lab() -> Composite:
    board = VirtualBoard(autoboot_delay=1, disk_size=MIB)
    flasher = VirtualFlasher(children={"serial": Proxy(ref="board.serial"), "power": Proxy(ref="board.power"),
                                       "uboot": UBoot(power_off_time=0.1)})
    shell = Shell(password="password", children={"serial": Proxy(ref="board.serial")})
    strategy = BootStrategy(children={"flasher": Proxy(ref="flasher"), "shell": Proxy(ref="shell")})
    root = Composite(children={"board": board, "flasher": flasher, "shell": shell, "strategy": strategy})
    resolve_refs(root)
    return root


@contextlib.contextmanager
def qemu_lab(work: Path) -> Iterator[object]:
    check_qemu()
    image = build_linux()
    with tap_namespace() as ns:
        bundle = make_linux_bundle(work / "bundle", image, dump_dtb(work / "virt.dtb"), ns.board, "255.255.255.0")
        with serve_in_namespace(ns, linux_lab_config(ns, bundle, work), work) as path, connect(path) as client:
            try:
                yield client
            finally:
                client.strategy.transition("off")


def boot_figures(client: object, transfer: int) -> dict[str, float]:
    """Seconds per state, command round trip and its baseline, console transfer rates."""
    client.strategy.transition("off")
    result = client.strategy.transition("shell")
    figures = {f"{name} (s)": result.steps[name] for name in result.path}
    figures["run('true') (ms)"] = 1000 * median(lambda: client.shell.run("true"))
    figures["baseline: get_state() (ms)"] = 1000 * median(client.strategy.get_state)
    data = os.urandom(transfer)
    started = time.perf_counter()
    client.shell.put(data, "/tmp/bench.bin")
    figures["put (KiB/s)"] = transfer / 1024 / (time.perf_counter() - started)
    started = time.perf_counter()
    if client.shell.get("/tmp/bench.bin") != data:
        raise SystemExit("the file read back differs from the one put")
    figures["get (KiB/s)"] = transfer / 1024 / (time.perf_counter() - started)
    return figures


def median(call: object, times: int = 20) -> float:
    samples = []
    for _ in range(times):
        started = time.perf_counter()
        call()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        """No access log on the benchmark's output."""


@contextlib.contextmanager
def web_server(size: int) -> Iterator[int]:
    with tempfile.TemporaryDirectory() as root:
        Path(root, "blob").write_bytes(os.urandom(size))
        handler = functools.partial(QuietHandler, directory=root)
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield server.server_address[1]
        finally:
            server.shutdown()
            server.server_close()
            thread.join(5)


def download(port: int, size: int) -> float:
    """MiB/s of one HTTP download of ``size`` bytes from 127.0.0.1:``port``."""
    started = time.perf_counter()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/blob", timeout=120) as response:
        got = sum(len(chunk) for chunk in iter(lambda: response.read(MIB), b""))
    if got != size:
        raise SystemExit(f"download came back with {got} of {size} bytes")
    return size / MIB / (time.perf_counter() - started)


def tcp_figures(size: int) -> dict[str, float]:
    """Forwarded against direct loopback throughput, same server, same run."""
    with web_server(size) as port:
        direct = download(port, size)
        with serve(TcpNetwork(host="127.0.0.1", port=port)) as client, client.forward() as (_, local):
            forwarded = download(local, size)
    return {"direct loopback (MiB/s)": direct, "forwarded (MiB/s)": forwarded}


def show(title: str, figures: dict[str, float]) -> None:
    print(f"\n{title}")
    for name, value in figures.items():
        print(f"  {name:<32} {value:10.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--transfer-kib", type=int, default=64)
    parser.add_argument("--tcp-mib", type=int, default=64)
    parser.add_argument("--no-qemu", action="store_true")
    args = parser.parse_args()
    socket.setdefaulttimeout(120)
    root = virtual_lab()
    try:
        with serve(root) as client:
            show("virtual board", boot_figures(client, args.transfer_kib * 1024))
    finally:
        root.close()
    if not args.no_qemu:
        with tempfile.TemporaryDirectory(prefix="bench-boot-") as work:
            try:
                with qemu_lab(Path(work)) as client:
                    show("QEMU board, Debian arm64 Linux (TCG)", boot_figures(client, args.transfer_kib * 1024))
            except (LabUnavailable, LinuxUnavailable) as exc:
                print(f"\nQEMU board skipped: {exc}", file=sys.stderr)
    show("TCP through forward() vs direct, same server", tcp_figures(args.tcp_mib * MIB))


if __name__ == "__main__":
    main()
