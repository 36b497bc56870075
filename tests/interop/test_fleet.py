"""Jumpstarter 0.9.0's exporter (`jmp run`) and client (`jmp`) on our lab controller, as separate processes.

Every configuration file here comes from `jumpstarter controller token create --format jumpstarter`
and is used as written. The controller runs against a real etcd on loopback, with TLS.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml
from tests.jumpstarter_drivers.controller.conftest import Lab

from jumpstarter_drivers.controller.client import leased
from jumpstarter_drivers.core.access import connect
from jumpstarter_drivers.core.processes import stop_process

pytest.importorskip("jumpstarter_cli", reason="jumpstarter-cli==0.9.0 (the interop extra) is not installed")

JMP = str(Path(sys.executable).with_name("jmp"))
#: Seconds any one `jmp` or `jumpstarter` command may take.
COMMAND_TIMEOUT = 90
#: Bound on an exporter shown offline after it was killed (the controller's presence TTL is 5 s).
OFFLINE_BOUND = 20
JUMPSTARTER_POWER = {"power": {"type": "jumpstarter_driver_power.driver.MockPower"}}


class Fleet:
    """Jumpstarter processes and our CLI around one :class:`Lab` (etcd and a TLS controller replica)."""

    def __init__(self, lab: Lab, directory: Path) -> None:
        self.lab = lab
        self.directory = directory
        home = directory / "jmp-home"  # keeps `jmp` away from the user's ~/.config/jumpstarter
        path = os.pathsep.join((str(Path(sys.executable).parent), os.environ.get("PATH", "")))  # `j` in shells
        self.env = {
            **os.environ,
            "PATH": path,
            "JMP_CLIENT_CONFIG_HOME": str(home),
            "GRPC_VERBOSITY": "NONE",
            "COLUMNS": "200",
        }
        self.processes: dict[str, subprocess.Popen] = {}

    def ours(self, *args: str) -> subprocess.CompletedProcess:
        """Our `jumpstarter` CLI."""
        return self.run([sys.executable, "-m", "jumpstarter_drivers.cli", *args])

    def jmp(self, *args: str) -> subprocess.CompletedProcess:
        """Jumpstarter's `jmp` CLI."""
        return self.run([JMP, *args])

    def run(self, command: list[str]) -> subprocess.CompletedProcess:
        """Run ``command`` in a process group of its own; past :data:`COMMAND_TIMEOUT` the whole group
        (a `jmp shell` and the commands it started) is killed and TimeoutExpired raised."""
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=self.env,
            start_new_session=True,
        )
        try:
            stdout, stderr = process.communicate(timeout=COMMAND_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
            raise
        return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)

    def config(self, kind: str, name: str, *options: str) -> Path:
        """A configuration file from `jumpstarter controller token create KIND NAME --format jumpstarter`."""
        path = self.directory / f"{kind}-{name}.yaml"
        done = self.ours(
            "controller", "token", "create", kind, name, "--etcd", self.lab.etcd.endpoint,
            "--endpoint", self.lab.endpoints, "--ca", str(self.lab.cert), "--format", "jumpstarter",
            "-o", str(path), *options,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        return path

    def client(self, name: str) -> Path:
        return self.config("client", name, "--allow", "jumpstarter_driver_*")

    def jmp_run(self, name: str, labels: dict[str, str], export: dict) -> subprocess.Popen:
        """Start `jmp run` for exporter ``name``; return once it is online."""
        tree = self.directory / f"tree-{name}.yaml"
        tree.write_text(yaml.safe_dump(export))
        label_options = [f"--label={key}={value}" for key, value in labels.items()]
        path = self.config("exporter", name, "--export", str(tree), *label_options)
        with open(self.directory / f"jmp-run-{name}.log", "wb") as log:
            process = subprocess.Popen(
                [JMP, "run", "--exporter-config", str(path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
            )
        self.processes[name] = process
        self.lab.wait_online(name)
        return process

    def kill(self, name: str) -> None:
        """kill -9 exporter ``name``: `jmp run` and the child it serves from (in a session of its own)."""
        process = self.processes[name]
        children = _children(process.pid)
        process.kill()
        process.wait(COMMAND_TIMEOUT)
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)

    def log(self, name: str) -> str:
        return (self.directory / f"jmp-run-{name}.log").read_text(errors="replace")

    def exporters(self, client: Path) -> dict[str, dict]:
        """`jumpstarter exporters --json`, by exporter name."""
        done = self.ours("exporters", "--json", "--client-config", str(client))
        assert done.returncode == 0, done.stderr
        return {row["name"]: row for row in json.loads(done.stdout)["exporters"]}

    def close(self) -> None:
        for name, process in self.processes.items():
            children = _children(process.pid)
            stop_process(process, name=f"jmp run {name}")  # it passes SIGTERM on to its child
            for child in children:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child, signal.SIGKILL)


def _children(pid: int) -> list[int]:
    """Process ids of ``pid``'s children (none once it has exited)."""
    try:
        return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


@pytest.fixture
def fleet(lab: Lab, tmp_path: Path):
    fleet = Fleet(lab, tmp_path)
    try:
        yield fleet
    finally:
        fleet.close()


def active_leases(lab: Lab) -> dict[str, dict]:
    """Leases not ended, by name, from etcd."""
    return lab.store(lambda store: _active(store))


async def _active(store) -> dict[str, dict]:
    state = await store.snapshot()
    return {name: lease.value for name, lease in state.leases.items() if not lease.value.get("ended")}


def test_jmp_run_registers_is_shown_online_with_its_labels_and_offline_once_killed(fleet: Fleet) -> None:
    client = fleet.client("viewer")
    fleet.jmp_run("jx-1", {"board": "jx", "site": "lab-a"}, JUMPSTARTER_POWER)
    shown = fleet.exporters(client)["jx-1"]
    assert shown["online"] is True
    assert shown["labels"] == {"board": "jx", "site": "lab-a"}
    assert shown["leased"] is None
    assert "Registering exporter with controller" in fleet.log("jx-1")

    fleet.kill("jx-1")
    fleet.lab.wait_online("jx-1", online=False, timeout=OFFLINE_BOUND)
    assert fleet.exporters(client)["jx-1"]["online"] is False


def test_jmp_shell_leases_our_exporter_runs_power_and_a_serial_pipe_and_ends_the_lease(fleet: Fleet) -> None:
    export = {"power": {"type": "MockPower"}, "serial": {"type": "PySerial", "config": {"url": "loop://"}}}
    fleet.lab.serve("ours-1", {"board": "ours"}, export)
    client = fleet.client("jmp-user")
    script = "j power on && echo hello-through-the-router | j serial pipe"
    done = fleet.jmp("shell", "--client-config", str(client), "--selector", "board=ours", "--", "sh", "-c", script)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "hello-through-the-router" in done.stdout
    assert "power on" in fleet.lab.log("ours-1")
    assert "leased to jmp-user" in fleet.lab.log("ours-1")
    assert active_leases(fleet.lab) == {}, "the lease outlived `jmp shell`"


def test_jmp_create_lease_update_it_then_shell_on_that_lease(fleet: Fleet) -> None:
    fleet.jmp_run("jx-2", {"board": "jx"}, JUMPSTARTER_POWER)
    client = fleet.client("planner")
    created = fleet.jmp(
        "create", "lease", "--client-config", str(client), "--selector", "board=jx", "--duration", "5m", "-o", "name"
    )
    assert created.returncode == 0, created.stderr
    name = created.stdout.strip().splitlines()[-1]
    assert active_leases(fleet.lab)[name]["exporter"] == "jx-2"
    updated = fleet.jmp("update", "lease", "--client-config", str(client), name, "--duration", "20m")
    assert updated.returncode == 0, updated.stdout + updated.stderr
    lease = active_leases(fleet.lab)[name]
    assert (lease["duration"], lease["end"] - lease["begin"]) == (1200, 1200)
    transfer = fleet.jmp("update", "lease", "--client-config", str(client), name, "--to-client", "someone-else")
    assert transfer.returncode != 0
    assert "changes only a lease's duration" in transfer.stdout + transfer.stderr
    later = fleet.jmp(
        "create", "lease", "--client-config", str(client), "--selector", "board=jx", "--duration", "5m",
        "--begin-time", "2099-01-01T00:00:00Z",
    )  # fmt: skip
    assert later.returncode != 0
    assert "does not schedule leases for later" in later.stdout + later.stderr
    done = fleet.jmp("shell", "--client-config", str(client), "--lease", name, "--", "j", "power", "on")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "power on" in fleet.log("jx-2")
    deleted = fleet.jmp("delete", "leases", "--client-config", str(client), name)
    assert deleted.returncode == 0, deleted.stderr
    assert active_leases(fleet.lab) == {}


def test_our_pytest_selector_runs_the_example_power_tests_on_a_jumpstarter_exporter(fleet: Fleet) -> None:
    fleet.jmp_run("jx-3", {"board": "jx-pytest"}, JUMPSTARTER_POWER)
    client = fleet.config("client", "ci")
    examples = Path(__file__).resolve().parents[2] / "examples" / "test_power.py"
    done = fleet.run(
        [
            sys.executable, "-m", "pytest", str(examples), "-q", "-p", "no:cacheprovider",
            "--jumpstarter-selector", "board=jx-pytest", "--jumpstarter-client-config", str(client),
        ]
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"\b5 passed\b", done.stdout), done.stdout
    assert "power on" in fleet.log("jx-3")
    assert "Currently leased by ci" in fleet.log("jx-3")
    assert active_leases(fleet.lab) == {}


def test_jmp_and_our_client_waiting_for_one_board_are_served_in_request_order(fleet: Fleet) -> None:
    """A holder keeps the board while a `jmp` client, our client and a second `jmp` client queue up;
    each, once served, powers the board on and leaves. The leases begin in request order."""
    fleet.jmp_run("jx-4", {"board": "jx-fifo"}, JUMPSTARTER_POWER)
    jmp_files = {name: fleet.client(name) for name in ("jmp-first", "jmp-third")}
    ours = fleet.lab.client("ours-second")
    waiting: list[subprocess.Popen | threading.Thread] = []
    errors: list[BaseException] = []

    def queued(count: int) -> None:
        fleet.lab.wait_for(
            lambda state: sum(not lease.value.get("exporter") for lease in state.leases.values()) == count
        )

    def jmp_shell(name: str) -> subprocess.Popen:
        command = [JMP, "shell", "--client-config", str(jmp_files[name]), "--selector", "board=jx-fifo", "--"]
        return subprocess.Popen(
            [*command, "j", "power", "on"],
            env=fleet.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def our_client() -> None:
        try:
            with leased(ours, "board=jx-fifo", duration=120, wait=COMMAND_TIMEOUT) as lease, connect(lease.socket) as c:
                c.power.on()
        except BaseException as exc:  # noqa: BLE001 - reported by the test thread
            errors.append(exc)

    with leased(fleet.lab.client("holder"), "board=jx-fifo", duration=120, wait=30):
        waiting.append(jmp_shell("jmp-first"))
        queued(1)
        waiting.append(threading.Thread(target=our_client))
        waiting[-1].start()
        queued(2)
        waiting.append(jmp_shell("jmp-third"))
        queued(3)
    try:
        for item in waiting:
            if isinstance(item, threading.Thread):
                item.join(COMMAND_TIMEOUT)
                assert not item.is_alive(), "our client did not finish"
            else:
                output = item.communicate(timeout=COMMAND_TIMEOUT)[0].decode(errors="replace")
                assert item.returncode == 0, output
    finally:
        for item in waiting:
            if isinstance(item, subprocess.Popen):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(item.pid, signal.SIGKILL)  # a no-op unless the test failed before it ended
                item.wait(COMMAND_TIMEOUT)
                item.stdout.close()
    assert not errors, errors
    ended = fleet.lab.store(lambda store: store.ended_leases())
    order = [lease.value["client"] for lease in sorted(ended, key=lambda lease: lease.value["begin"])]
    assert order == ["holder", "jmp-first", "ours-second", "jmp-third"]


def test_a_jumpstarter_only_driver_package_is_reachable_from_jmp_through_our_controller(fleet: Fleet) -> None:
    shell = {
        "type": "jumpstarter_driver_shell.driver.Shell",
        "config": {"methods": {"greet": "echo greetings-from-$(hostname)-shell"}, "shell": ["sh", "-c"]},
    }
    fleet.jmp_run("jx-5", {"board": "jx-shell"}, {"tools": shell})
    client = fleet.client("shell-user")
    done = fleet.jmp(
        "shell", "--client-config", str(client), "--selector", "board=jx-shell", "--", "j", "tools", "greet"
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"greetings-from-{os.uname().nodename}-shell" in done.stdout
    assert active_leases(fleet.lab) == {}


def test_one_exporter_file_serves_jmp_run_and_our_serve_alike(fleet: Fleet) -> None:
    """The file `token create exporter --format jumpstarter` writes runs under our `jumpstarter serve`
    too (Jumpstarter's driver paths included); `jmp shell` then drives our exporter from it."""
    tree = fleet.directory / "tree.yaml"
    tree.write_text(yaml.safe_dump(JUMPSTARTER_POWER))
    path = fleet.config("exporter", "both-1", "--export", str(tree), "--label=board=both")
    with open(fleet.directory / "serve-both-1.log", "wb") as log:
        ours = subprocess.Popen(
            [sys.executable, "-m", "jumpstarter_drivers.cli", "serve", str(path), "--controller", fleet.lab.endpoints],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=fleet.env,
        )
    try:
        fleet.lab.wait_online("both-1")
        client = fleet.client("both-user")
        done = fleet.jmp("shell", "--client-config", str(client), "--selector", "board=both", "--", "j", "power", "on")
        assert done.returncode == 0, done.stdout + done.stderr
    finally:
        stop_process(ours, name="jumpstarter serve")
    log_text = (fleet.directory / "serve-both-1.log").read_text(errors="replace")
    assert "registered with the controller" in log_text and "power on" in log_text
    assert active_leases(fleet.lab) == {}


def test_jmp_auth_rotate_replaces_the_clients_token_and_the_old_one_is_refused(fleet: Fleet) -> None:
    """Without -o the file goes where `jmp --client NAME` looks; `jmp auth rotate` rewrites it there."""
    made = fleet.ours(
        "controller", "token", "create", "client", "rotating", "--etcd", fleet.lab.etcd.endpoint,
        "--endpoint", fleet.lab.endpoints, "--ca", str(fleet.lab.cert), "--format", "jumpstarter",
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    client = Path(made.stdout.strip())
    assert client == Path(fleet.env["JMP_CLIENT_CONFIG_HOME"]) / "clients" / "rotating.yaml"
    old_copy = fleet.directory / "old-copy.yaml"
    old_copy.write_text(client.read_text())
    rotated = fleet.jmp("auth", "rotate", "--client", "rotating")
    assert rotated.returncode == 0, rotated.stdout + rotated.stderr
    assert yaml.safe_load(client.read_text())["token"] != yaml.safe_load(old_copy.read_text())["token"]
    assert fleet.ours("exporters", "--client-config", str(client)).returncode == 0
    refused = fleet.ours("exporters", "--client-config", str(old_copy))
    assert refused.returncode != 0
    assert "unknown or revoked token" in refused.stderr
