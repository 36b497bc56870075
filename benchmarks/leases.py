"""The lab controller: lease acquisition and hand-over, router overhead, and a lab of 200 exporters.

Run: python benchmarks/leases.py [--repeat 20] [--calls 200] [--rounds 5] [--mib 64] [--exporters 200] [--waiting 500]

One private etcd, one controller replica (`jumpstarter controller`, TLS) and one real exporter
(`jumpstarter serve --controller`, a MockPower and a Storage), all child processes on
loopback. Figures, each beside a baseline measured in the same run:

- acquire: CreateLease until the lease is Ready, for a free board: our controller (scheduler
  woken by etcd watches) vs the same controller reconciling once a second instead (upstream's
  reconcile loop), in a second lab started in the same run;
- hand-over: from the holder's release to the next waiter's Ready, the same two ways;
- router: latency of one driver call and upload throughput to a Storage driver for a leased
  client: moved to the exporter's direct port (``serve --direct``), or through the lease's local
  socket (Dial + router) by the relay port (our clients and exporters) and by
  RouterService.Stream (Jumpstarter's peers); vs the same drivers served directly over TLS (the
  baseline: what a client on another host would use without a controller) and on the exporter's
  own unix socket; and the CPU each process (this client, the controller, the exporter) spends
  per call each way;
- scale: 200 lightweight exporters (Register, ReportStatus and a Status stream each, in this
  process) holding 200 leases, and 500 more leases waiting: controller CPU and memory, etcd size.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import yaml

from jumpstarter_drivers.controller import config as config_files
from jumpstarter_drivers.controller import tokens
from jumpstarter_drivers.controller.client import ControllerClient, leased
from jumpstarter_drivers.controller.config import Access
from jumpstarter_drivers.controller.etcd_process import PrivateEtcd
from jumpstarter_drivers.controller.store import Store
from jumpstarter_drivers.core import loop
from jumpstarter_drivers.core.access import connect
from jumpstarter_drivers.core.client import DriverClient
from jumpstarter_drivers.core.processes import stop_process

T = TypeVar("T")

EXPORT = {"power": {"type": "MockPower"}, "storage": {"type": "Storage", "config": {"root_dir": "STORAGE"}}}


def start(command: list[str], log: Path, env: dict[str, str] | None = None) -> tuple[subprocess.Popen, str]:
    """A child process and the first line it prints."""
    with open(log, "wb") as errors:
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=errors, text=True, env={**os.environ, **(env or {})}
        )
    line = process.stdout.readline().strip()
    if not line:
        stop_process(process)
        sys.exit(f"{command[3]} did not start; see {log}")
    return process, line


class Lab:
    def __init__(self, directory: Path, etcd: PrivateEtcd, reconcile_every: float | None) -> None:
        self.directory = directory
        self.etcd = etcd
        self.processes: list[subprocess.Popen] = []
        state = directory / "controller"
        polling = ["--reconcile-every", str(reconcile_every)] if reconcile_every else []
        process, self.endpoint = start(
            [sys.executable, "-m", "jumpstarter_drivers.cli", "controller", "--listen", "127.0.0.1:0", "--etcd",
             etcd.endpoint, "--state-dir", str(state), "--log-level", "WARNING", *polling],
            directory / "controller.log",
        )
        self.controller = process
        self.processes.append(process)
        self.ca = (state / "tls" / "cert.pem").read_bytes()

    def direct_tls(self, name: str) -> str:
        """The same drivers served straight on TCP with TLS (`jumpstarter serve --listen`): its HOST:PORT."""
        path = self.directory / f"{name}.yaml"
        storage = str(self.directory / name)
        path.write_text(yaml.safe_dump({"export": yaml.safe_load(yaml.safe_dump(EXPORT).replace("STORAGE", storage))}))
        tls = self.directory / "controller" / "tls"
        process, address = start(
            [sys.executable, "-m", "jumpstarter_drivers.cli", "serve", str(path), "--listen", "127.0.0.1:0",
             "--tls-cert", str(tls / "cert.pem"), "--tls-key", str(tls / "key.pem"), "--log-level", "WARNING"],
            self.directory / f"{name}.log",
        )
        self.processes.append(process)
        return address

    def token(self, kind: str, name: str, labels: dict[str, str] | None = None) -> str:
        async def issue() -> str:
            async with Store([self.etcd.endpoint]) as store:
                return await tokens.issue(store, kind, name, labels=labels)

        return loop.run(issue())

    def document(self, kind: str, name: str, labels: dict[str, str] | None = None) -> dict:
        token = self.token(kind.lower(), name, labels)
        return config_files.document(kind, name, self.endpoint, token, self.ca, False)

    def client(self, name: str) -> Access:
        return Access.from_document(self.document("Client", name), "Client")

    def exporter(
        self, name: str, labels: dict[str, str], env: dict[str, str] | None = None, args: tuple[str, ...] = ()
    ) -> str:
        """A real `jumpstarter serve --controller [ARGS]`; its session's own socket (for direct connections)."""
        content = self.document("Exporter", name)
        content["metadata"]["labels"] = labels
        content["export"] = yaml.safe_load(yaml.safe_dump(EXPORT).replace("STORAGE", str(self.directory / name)))
        path = self.directory / f"{name}.yaml"
        path.write_text(yaml.safe_dump(content))
        process, socket_path = start(
            [sys.executable, "-m", "jumpstarter_drivers.cli", "serve", str(path), "--controller", self.endpoint,
             "--log-level", "WARNING", *args],
            self.directory / f"{name}.log",
            env,
        )
        self.processes.append(process)
        self.wait_available(name)
        return socket_path

    def wait_available(self, name: str) -> None:
        """Return once exporter ``name`` is online and AVAILABLE (watched in etcd)."""

        async def wait() -> None:
            async with Store([self.etcd.endpoint]) as store:
                while True:
                    state = await store.snapshot()
                    exporter = state.exporters.get(name)
                    if name in state.online and exporter is not None and exporter.value.get("status") == 2:
                        return
                    changes = store.changes("lab/", start_revision=state.revision + 1)
                    await anext(changes)
                    await changes.aclose()

        loop.run(wait(), timeout=60)

    def close(self) -> None:
        for process in reversed(self.processes):
            stop_process(process)
            process.stdout.close()


def ready_when(client: ControllerClient, name: str) -> float:
    """perf_counter when lease ``name`` is Ready (the client waits on the controller, GetLease with a wait)."""

    async def wait() -> float:
        await client.wait_ready(name, 60)
        return time.perf_counter()

    return loop.run(wait(), timeout=120)


def acquire(lab: Lab, access: Access, selector: str, repeat: int) -> list[float]:
    """Seconds from CreateLease to Ready for a free board, ``repeat`` times with one client (the first
    includes the client's connection to the controller: TLS and HTTP/2 set-up).

    Each round starts once the board is free again: its exporter has reported AVAILABLE after the
    last release (that turn-around is part of the hand-over figure).
    """
    client = ControllerClient(access)
    times = []
    try:
        for _ in range(repeat):
            lab.wait_available("board-1")
            begin = time.perf_counter()
            lease = loop.run(client.create_lease(selector, 60, keepalive=0))
            times.append(ready_when(client, lease.name) - begin)
            loop.run(client.release(lease.name))
    finally:
        loop.run(client.close())
    return times


def hand_over(first: Access, second: Access, selector: str, repeat: int) -> list[float]:
    """Seconds from the holder's release to the waiter's Ready."""
    holder, waiter = ControllerClient(first), ControllerClient(second)
    times = []
    try:
        for _ in range(repeat):
            held = loop.run(holder.create_lease(selector, 60, keepalive=0))
            ready_when(holder, held.name)
            waiting = loop.run(waiter.create_lease(selector, 60, keepalive=0))
            result: list[float] = []
            thread = threading.Thread(
                target=lambda name=waiting.name, into=result: into.append(ready_when(waiter, name))
            )
            thread.start()
            time.sleep(0.3)  # let the waiter settle into its wait on the controller
            released = time.perf_counter()
            loop.run(holder.release(held.name))
            thread.join(60)
            times.append(result[0] - released)
            loop.run(waiter.release(waiting.name))
    finally:
        loop.run(holder.close())
        loop.run(waiter.close())
    return times


def with_cpu(pids: dict[str, int], action: Callable[[], T]) -> tuple[T, dict[str, float]]:
    """``action()``'s result and the CPU seconds each process spent meanwhile."""
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    result = action()
    return result, {name: cpu_seconds(pid) - before[name] for name, pid in pids.items()}


def per_call(cpu: dict[str, float], calls: int) -> str:
    return "/".join(f"{1e6 * seconds / calls:.0f}" for seconds in cpu.values())


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class FakeExporters:
    """Lightweight exporters: each registers, reports AVAILABLE and keeps a Status stream open."""

    def __init__(self, lab: Lab, count: int) -> None:
        self.accesses = [
            Access.from_document(lab.document("Exporter", f"light-{i:03d}", {"pool": "big"}), "Exporter")
            for i in range(count)
        ]
        self.tasks: list[asyncio.Task] = []
        self.channels: list = []

    async def _one(self, access: Access, registered: asyncio.Event) -> None:
        from jumpstarter_protocol.jumpstarter.v1 import jumpstarter_pb2, jumpstarter_pb2_grpc

        channel = access.channel(access.endpoints[0])
        self.channels.append(channel)
        stub = jumpstarter_pb2_grpc.ControllerServiceStub(channel)
        metadata = access.metadata()
        await stub.Register(jumpstarter_pb2.RegisterRequest(labels={"pool": "big"}), metadata=metadata)
        await stub.ReportStatus(jumpstarter_pb2.ReportStatusRequest(status=2), metadata=metadata)
        async for status in stub.Status(jumpstarter_pb2.StatusRequest(), metadata=metadata):
            registered.set()
            await stub.ReportStatus(
                jumpstarter_pb2.ReportStatusRequest(status=4 if status.leased else 2), metadata=metadata
            )

    async def start(self) -> None:
        events = [asyncio.Event() for _ in self.accesses]
        self.tasks = [asyncio.create_task(self._one(a, e)) for a, e in zip(self.accesses, events, strict=True)]
        await asyncio.wait_for(asyncio.gather(*(event.wait() for event in events)), 120)

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for channel in self.channels:
            await channel.close()


def scale(lab: Lab, exporters: int, waiting: int) -> dict[str, float]:
    pid = lab.controller.pid
    figures = {"idle RSS MiB": rss_mib(pid)}
    fakes = FakeExporters(lab, exporters)
    cpu = cpu_seconds(pid)
    begin = time.perf_counter()
    loop.run(fakes.start(), timeout=180)
    figures[f"register {exporters} exporters: s"] = time.perf_counter() - begin
    figures[f"register {exporters} exporters: controller CPU s"] = cpu_seconds(pid) - cpu
    client = ControllerClient(lab.client("scale"))
    try:
        cpu = cpu_seconds(pid)
        begin = time.perf_counter()
        names = [loop.run(client.create_lease("pool=big", 3600, keepalive=0)).name for _ in range(exporters + waiting)]
        figures[f"queue {exporters + waiting} leases: s"] = time.perf_counter() - begin
        figures[f"queue {exporters + waiting} leases: controller CPU s"] = cpu_seconds(pid) - cpu
        last = names[exporters - 1]
        ready_when(client, last)
        cpu = cpu_seconds(pid)
        begin = time.perf_counter()
        time.sleep(10)  # a quiet lab: what the Status streams and waiting leases cost at rest
        figures["steady CPU % (10 s)"] = 100 * (cpu_seconds(pid) - cpu) / (time.perf_counter() - begin)
        figures["steady RSS MiB"] = rss_mib(pid)
        first_waiting = names[exporters]
        begin = time.perf_counter()
        loop.run(client.release(names[0]))
        ready_when(client, first_waiting)
        figures[f"hand-over with {waiting} waiting: ms"] = 1000 * (time.perf_counter() - begin)

        async def db_size() -> float:
            async with Store([lab.etcd.endpoint]) as store:
                status = await store._client.status()
                return status.db_size / (1 << 20)

        figures["etcd db MiB"] = loop.run(db_size())
        for name in names:
            loop.run(client.release(name))
    finally:
        loop.run(client.close())
        loop.run(fakes.stop(), timeout=60)
    return figures


def summary(values: list[float]) -> str:
    return f"median {1000 * statistics.median(values):8.2f} ms   p99 {1000 * percentile(values, 0.99):8.2f} ms"


@contextlib.contextmanager
def lab_running(reconcile_every: float | None = None) -> Iterator[Lab]:
    with tempfile.TemporaryDirectory(prefix="jmp-bench-") as directory, PrivateEtcd(Path(directory) / "etcd") as etcd:
        lab = Lab(Path(directory), etcd, reconcile_every)
        try:
            yield lab
        finally:
            lab.close()


def row(label: str, ours: str, baseline: str) -> None:
    print(f"{label:<34} {ours:<36} {baseline}")


def router_rows(lab: Lab, direct_unix: str, args: argparse.Namespace) -> None:
    """Driver calls and uploads five ways: leased from an exporter with a direct port (``--direct``: the
    client moves to it), through the router's relay (our clients and exporters), through
    RouterService.Stream (what Jumpstarter's own peers use; JMP_ROUTER_RELAY=off), straight to the same
    drivers over TLS (the direct baseline), and on the exporter's own unix socket (same host, no TLS).

    The five clients stay connected and take turns (``--rounds`` rounds of ``--calls`` calls each,
    then one upload each per round), so a busy moment of the machine falls on all alike.
    """
    relay_exporter = lab.processes[-1].pid
    lab.exporter("board-stream", {"board": "stream"}, env={"JMP_ROUTER_RELAY": "off"})
    stream_exporter = lab.processes[-1].pid
    direct_tls = lab.direct_tls("board-tls")
    tls_exporter = lab.processes[-1].pid
    lab.exporter("board-port", {"board": "port"}, args=("--direct", "127.0.0.1:0"))
    port_exporter = lab.processes[-1].pid
    ca = str(lab.directory / "controller" / "tls" / "cert.pem")
    source = lab.directory / "source.bin"
    source.write_bytes(os.urandom(args.mib << 20))
    alice = lab.client("alice")
    paths = {"port": port_exporter, "relay": relay_exporter, "stream": stream_exporter, "tls": tls_exporter,
             "unix": relay_exporter}
    times: dict[str, list[float]] = {path: [] for path in paths}
    cpu: dict[str, dict[str, float]] = {path: {} for path in paths}
    rates: dict[str, list[float]] = {path: [] for path in paths}
    with contextlib.ExitStack() as stack:
        port_lease = stack.enter_context(leased(alice, "board=port", 600, wait=30))
        relay_lease = stack.enter_context(leased(alice, "board=rpi4", 600, wait=30))
        os.environ["JMP_ROUTER_RELAY"] = "off"  # read when the lease's tunnels are set up: this one uses Stream
        try:
            stream_lease = stack.enter_context(leased(alice, "board=stream", 600, wait=30))
        finally:
            del os.environ["JMP_ROUTER_RELAY"]
        addresses = {"port": port_lease.socket, "relay": relay_lease.socket, "stream": stream_lease.socket,
                     "tls": direct_tls, "unix": direct_unix}
        clients = {path: stack.enter_context(connect(address, ca=ca if path == "tls" else None))
                   for path, address in addresses.items()}
        assert "(direct" in clients["port"].connection.address, "the leased client did not move to the direct port"
        for client in clients.values():
            client.power.on()
        for _ in range(args.rounds):
            for path, client in clients.items():
                pids = {"client": os.getpid(), "controller": lab.controller.pid, "exporter": paths[path]}
                block, spent = with_cpu(pids, lambda client=client: timed_calls(client, args.calls))
                times[path] += block
                for name, seconds in spent.items():
                    cpu[path][name] = cpu[path].get(name, 0.0) + seconds
            for path, client in clients.items():
                rates[path].append(upload_rate(client, source))
    calls = args.rounds * args.calls
    baseline, baseline_rate = statistics.median(times["tls"]), statistics.median(rates["tls"])
    print()
    print(f"router path vs direct ({args.rounds} rounds of {args.calls} calls and one {args.mib} MiB upload)")
    print(f"{'':<34} {'call median':>12} {'p99':>9} {'x direct':>9} {'upload':>13} {'x direct':>9}  "
          "CPU us/call client/controller/exporter")
    for path, title in (("port", "leased, exporter's direct port"), ("relay", "through the router (relay)"),
                        ("stream", "through the router (Stream)"),
                        ("tls", "direct, TLS (the baseline)"), ("unix", "direct, unix socket, no TLS")):
        median, rate = statistics.median(times[path]), statistics.median(rates[path])
        print(f"{title:<34} {median * 1e3:9.2f} ms {percentile(times[path], 0.99) * 1e3:6.2f} ms "
              f"{median / baseline:8.2f}x {rate / (1 << 20):7.1f} MiB/s {baseline_rate / rate:8.2f}x  "
              f"{per_call(cpu[path], calls)}")


def timed_calls(client: DriverClient, calls: int) -> list[float]:
    times = []
    for _ in range(calls):
        begin = time.perf_counter()
        client.power.on()
        times.append(time.perf_counter() - begin)
    return times


def upload_rate(client: DriverClient, source: Path) -> float:
    """Bytes/s of ``source`` uploaded to the exporter's Storage (a resource byte stream)."""
    begin = time.perf_counter()
    client.storage.write_from_path("upload.bin", source)
    return source.stat().st_size / (time.perf_counter() - begin)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--calls", type=int, default=200, help="driver calls per path per round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of calls and uploads, the paths taking turns")
    parser.add_argument("--mib", type=int, default=64)
    parser.add_argument("--exporters", type=int, default=200)
    parser.add_argument("--waiting", type=int, default=500)
    args = parser.parse_args()
    if args.repeat < 2:
        parser.error("--repeat: at least 2 (a new client's first acquire is shown apart from the others)")
    with lab_running(reconcile_every=1.0) as polled:
        polled.exporter("board-1", {"board": "rpi4"})
        alice, bob = polled.client("alice"), polled.client("bob")
        baseline_acquire = acquire(polled, alice, "board=rpi4", args.repeat)
        baseline_hand_over = hand_over(alice, bob, "board=rpi4", args.repeat)
    with lab_running() as lab:
        direct = lab.exporter("board-1", {"board": "rpi4"})
        alice, bob = lab.client("alice"), lab.client("bob")
        print(f"{'':<34} {'ours':<36} baseline")
        acquired = acquire(lab, alice, "board=rpi4", args.repeat)
        row("acquire a free board", summary(acquired[1:]), summary(baseline_acquire[1:]) + "  (reconcile every 1 s)")
        row("  a new client's first (+ connect)", f"{1000 * acquired[0]:8.2f} ms", f"{1000 * baseline_acquire[0]:8.2f} ms")
        row("hand-over release -> next Ready", summary(hand_over(alice, bob, "board=rpi4", args.repeat)),
            summary(baseline_hand_over) + "  (reconcile every 1 s)")
        router_rows(lab, direct, args)
        print()
        for label, value in scale(lab, args.exporters, args.waiting).items():
            print(f"{label:<50} {value:10.2f}")


if __name__ == "__main__":
    main()
