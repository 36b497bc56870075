"""Calls/s with 1, 8 and 50 concurrent clients over TCP+TLS with a passphrase: this toolkit's
exporter (`jumpstarter serve --listen`) beside Jumpstarter 0.9.0's session, in the same run.

Run: python benchmarks/concurrency.py [--seconds S] [--clients 1,8,50]

Each exporter runs in its own process and serves a MockPower; the clients are threads of this
process, each with its own TLS connection, calling ``on()`` as fast as it can for S seconds.
Our clients are ours, Jumpstarter's are Jumpstarter's (``client_from_path``, one portal each).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

from jumpstarter_drivers.core.processes import stop_process

PASSPHRASE = "benchmark passphrase"


def serve_jumpstarter(cert: str, key: str) -> None:
    """Child mode: Jumpstarter 0.9.0's Session on 127.0.0.1 (TLS, passphrase); prints its port."""
    import anyio
    import grpc
    from jumpstarter.exporter import Session
    from jumpstarter.exporter.auth import PassphraseInterceptor
    from jumpstarter_driver_power.driver import MockPower

    async def main() -> None:
        credentials = grpc.ssl_server_credentials([(Path(key).read_bytes(), Path(cert).read_bytes())])
        driver = MockPower()
        with Session(uuid=driver.uuid, labels=driver.labels, root_device=driver) as session:
            async with session.serve_tcp_async(
                "127.0.0.1", 0, tls_credentials=credentials, interceptors=[PassphraseInterceptor(PASSPHRASE)]
            ) as port:
                print(f"127.0.0.1:{port}", flush=True)
                await anyio.sleep_forever()

    anyio.run(main)


@contextlib.contextmanager
def jumpstarter_exporter(cert: Path, key: Path) -> Iterator[str]:
    with subprocess.Popen(
        [sys.executable, __file__, "--serve-jumpstarter", str(cert), str(key)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    ) as child:
        try:
            address = child.stdout.readline().strip()
            if not address:
                raise RuntimeError("Jumpstarter's session did not start")
            yield address
        finally:
            stop_process(child)


@contextlib.contextmanager
def our_exporter(directory: Path, cert: Path, key: Path) -> Iterator[str]:
    from jumpstarter_drivers.cli.process import ServeProcess

    lab = directory / "lab.yaml"
    lab.write_text("export:\n  power: {type: MockPower}\n")
    secret = directory / "passphrase"
    secret.write_text(PASSPHRASE)
    options = ["--listen", "127.0.0.1:0", "--tls-cert", str(cert), "--tls-key", str(key),
               "--passphrase-file", str(secret), "--log-level", "warning"]
    with ServeProcess(lab, *options) as served:
        yield served.address


@contextlib.contextmanager
def our_client(address: str, cert: Path) -> Iterator[Callable[[], None]]:
    from jumpstarter_drivers.core.access import connect

    with connect(address, ca=str(cert), passphrase=PASSPHRASE, timeout=60) as root:
        yield root.power.on


@contextlib.contextmanager
def jumpstarter_client(address: str, cert: Path) -> Iterator[Callable[[], None]]:
    from anyio.from_thread import start_blocking_portal
    from jumpstarter.client.client import client_from_path
    from jumpstarter.config.tls import TLSConfigV1Alpha1

    tls = TLSConfigV1Alpha1(ca=base64.b64encode(cert.read_bytes()).decode())
    with start_blocking_portal() as portal, ExitStack() as stack:
        connecting = client_from_path(
            address, portal, stack, allow=["jumpstarter_driver_power.*"], unsafe=False, tls_config=tls,
            passphrase=PASSPHRASE,
        )
        with portal.wrap_async_context_manager(connecting) as power:
            yield power.on


def measure(make_client: Callable, address: str, cert: Path, clients: int, seconds: float) -> tuple[float, float]:
    """(calls/s over all clients, median per-call latency in ms) with ``clients`` threads calling for ``seconds``."""
    ready = threading.Barrier(clients + 1, timeout=300)
    counts: list[int] = []
    latencies: list[float] = []
    errors: list[BaseException] = []
    window: dict[str, float] = {}

    def worker() -> None:
        try:
            with make_client(address, cert) as call:
                call()  # warm the connection up
                ready.wait()
                ready.wait()
                done, spent, end = 0, 0.0, window["end"]
                while (now := time.perf_counter()) < end:
                    call()
                    spent += time.perf_counter() - now
                    done += 1
                counts.append(done)
                latencies.append(spent / max(done, 1))
        except BaseException as exc:  # noqa: BLE001 - reported after the run
            errors.append(exc)
            ready.abort()

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(clients)]
    for thread in threads:
        thread.start()
    ready.wait()  # every client connected
    window["end"] = time.perf_counter() + seconds
    started = time.perf_counter()
    ready.wait()  # go
    for thread in threads:
        thread.join(seconds + 120)
    elapsed = max(time.perf_counter() - started, seconds)
    if errors:
        raise RuntimeError(f"{len(errors)} client(s) failed: {errors[0]!r}")
    return sum(counts) / elapsed, statistics.median(latencies) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="measuring window per figure")
    parser.add_argument("--clients", default="1,8,50", help="comma-separated client counts")
    parser.add_argument("--serve-jumpstarter", nargs=2, metavar=("CERT", "KEY"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_jumpstarter:
        serve_jumpstarter(*args.serve_jumpstarter)
        return

    from jumpstarter_drivers.cli.certs import write_self_signed

    counts = [int(n) for n in args.clients.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        cert, key = write_self_signed(directory / "tls", ["127.0.0.1"])
        with our_exporter(directory, cert, key) as ours, jumpstarter_exporter(cert, key) as theirs:
            print(f"MockPower on() over TCP+TLS with a passphrase, {args.seconds:g} s per figure; exporters in their own")
            print("processes, clients = threads of this process with one connection each")
            print(f"{'clients':>8}  {'jumpstarter-toolkit':>26}  {'Jumpstarter 0.9.0':>26}  {'ratio':>6}")
            for clients in counts:
                our_rate, our_ms = measure(our_client, ours, cert, clients, args.seconds)
                their_rate, their_ms = measure(jumpstarter_client, theirs, cert, clients, args.seconds)
                print(
                    f"{clients:>8}  {our_rate:>10,.0f} calls/s {our_ms:>6.2f} ms  "
                    f"{their_rate:>10,.0f} calls/s {their_ms:>6.2f} ms  {our_rate / their_rate:>5.1f}x",
                    flush=True,
                )


if __name__ == "__main__":
    main()
