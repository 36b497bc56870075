"""The shared-lab commands against a real controller: shell's exit code, leases, availability, tokens."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jumpstarter_drivers.core.processes import stop_process

#: The venv's scripts (``jumpstarter``) for commands run inside ``jumpstarter shell``.
ENV = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}


def jumpstarter(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "jumpstarter_drivers.cli", *args],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_shell_leases_runs_and_exits_with_the_commands_status(lab) -> None:
    lab.serve("board-1", {"board": "rpi4"})
    config = str(lab.client_file("ci"))
    result = jumpstarter(
        "shell",
        "--selector",
        "board=rpi4",
        "--client-config",
        config,
        "--",
        "sh",
        "-c",
        'jumpstarter power on && test "$JMP_EXPORTER" = board-1 && exit 3',
    )
    assert result.returncode == 3, result.stderr
    assert lab.store(lambda store: store.snapshot()).leases == {}


def test_lease_commands_and_the_availability_view(lab, tmp_path: Path) -> None:
    lab.serve("board-1", {"board": "rpi4", "arch": "arm64"})
    lab.serve("board-2", {"board": "imx8"})
    config = str(lab.client_file("ci"))
    created = jumpstarter("lease", "create", "--selector", "board=rpi4", "--duration", "10m", "--client-config", config)
    assert created.returncode == 0, created.stderr
    name = created.stdout.strip()
    waiting = jumpstarter("lease", "create", "--selector", "board=rpi4", "--duration", "1m", "--client-config", config)
    listed = jumpstarter("lease", "list", "--client-config", config)
    assert f"{name}  ci  active  board=rpi4  board-1" in listed.stdout, listed.stdout
    assert "waiting  board=rpi4  waiting for an exporter matching board=rpi4; place 1 in the queue" in listed.stdout
    view = json.loads(jumpstarter("exporters", "--json", "--client-config", config).stdout)
    rows = {row["name"]: row for row in view["exporters"]}
    assert rows["board-1"]["leased"]["client"] == "ci" and rows["board-1"]["online"]
    assert rows["board-2"]["leased"] is None and rows["board-2"]["labels"] == {"board": "imx8"}
    assert view["queue"] == {"board=rpi4": 1}
    text = jumpstarter("exporters", "--client-config", config).stdout
    assert "board-2  online  free  board=imx8" in text and "waiting: 1 for board=rpi4" in text
    for lease in (name, waiting.stdout.strip()):
        assert jumpstarter("lease", "release", lease, "--client-config", config).returncode == 0
    assert lab.store(lambda store: store.snapshot()).leases == {}
    assert jumpstarter("lease", "list", "--client-config", config).stdout == ""
    history = jumpstarter("lease", "list", "--all", "--client-config", config).stdout
    assert f"{name}  ci  ended  board=rpi4" in history, history


def test_unsatisfiable_selector_and_wait_timeout_are_one_line_errors(lab) -> None:
    lab.serve("board-1", {"board": "rpi4"})
    config = str(lab.client_file("ci"))
    nothing = jumpstarter("lease", "create", "--selector", "board=x", "--duration", "1m", "--client-config", config)
    assert nothing.returncode == 1
    assert nothing.stderr.strip().endswith("the labels that exist: board=rpi4")
    assert len(nothing.stderr.strip().splitlines()) == 1
    jumpstarter("lease", "create", "--selector", "board=rpi4", "--duration", "10m", "--client-config", config)
    timed_out = jumpstarter(
        "lease", "create", "--selector", "board=rpi4", "--duration", "1m", "--wait", "1", "--client-config", config
    )
    assert timed_out.returncode == 1
    assert "no board for board=rpi4 within 1 s" in timed_out.stderr


def _controller(state: Path, *options: str) -> subprocess.Popen:
    """`jumpstarter controller` on a free loopback port with its state in ``state``; its stdout is a pipe."""
    command = [sys.executable, "-m", "jumpstarter_drivers.cli", "controller", "--listen", "127.0.0.1:0", *options]
    # unbuffered: _line waits on the pipe itself, which a read-ahead buffer would hide
    return subprocess.Popen(
        [*command, "--state-dir", str(state)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, bufsize=0
    )


def _line(controller: subprocess.Popen, timeout: float = 30.0) -> str:
    """The controller's next stdout line, failing (not hanging) when none comes within ``timeout``."""
    ready, _, _ = select.select([controller.stdout], [], [], timeout)
    assert ready, f"the controller printed nothing within {timeout:g} s"
    return controller.stdout.readline().decode().strip()


def test_token_commands_through_the_state_directory(tmp_path: Path) -> None:
    state = tmp_path / "state"
    controller = _controller(state)
    try:
        endpoint = _line(controller)
        assert _line(controller) == f"state directory: {state}"
        recorded = json.loads((state / "controller.json").read_text())
        assert recorded["endpoint"] == endpoint and recorded["relay_port"] > 0
        written = jumpstarter(
            "controller", "token", "create", "client", "ci", "--state-dir", str(state), "-o", str(tmp_path / "ci.yaml")
        )
        assert written.returncode == 0, written.stderr
        listed = jumpstarter("exporters", "--client-config", str(tmp_path / "ci.yaml"))
        assert listed.returncode == 0, listed.stderr
        ceiling = jumpstarter("controller", "token", "create", "exporter", "b1", "--state-dir", str(state),
                              "--max-priority", "5")
        assert ceiling.returncode != 0 and "--max-priority is a client's" in ceiling.stderr
        ranked = jumpstarter("controller", "token", "create", "client", "ops", "--state-dir", str(state),
                             "--max-priority", "20")
        assert ranked.returncode == 0, ranked.stderr
        revoked = jumpstarter("controller", "token", "revoke", "client", "ci", "--state-dir", str(state))
        assert revoked.stdout.strip() == "revoked 1 token(s) of client ci"
        refused = jumpstarter("exporters", "--client-config", str(tmp_path / "ci.yaml"))
        assert refused.returncode == 1 and "unknown or revoked token" in refused.stderr
        assert endpoint.startswith("127.0.0.1:")
    finally:
        stop_process(controller)
        controller.stdout.close()
    assert not (state / "etcd.notify").exists()


def test_a_killed_controller_takes_its_private_etcd_with_it(tmp_path: Path) -> None:
    controller = _controller(tmp_path, "--insecure")
    try:
        assert _line(controller)
        children = Path(f"/proc/{controller.pid}/task/{controller.pid}/children").read_text().split()
        (etcd,) = [pid for pid in children if "etcd" in Path(f"/proc/{pid}/comm").read_text()]
        controller.kill()
        controller.wait(10)
        deadline = time.monotonic() + 10
        while Path(f"/proc/{etcd}").exists() and "Z" not in Path(f"/proc/{etcd}/stat").read_text().split()[2]:
            assert time.monotonic() < deadline, "the private etcd outlived its controller by 10 s"
            time.sleep(0.05)  # polling /proc: an unrelated process cannot be waited for
    finally:
        stop_process(controller)
        controller.stdout.close()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--relay-listen", "nowhere"], "--relay-listen 'nowhere': expected HOST:PORT"),
        (["--relay-listen", "127.0.0.1:0", "--no-relay"], "give --relay-listen or --no-relay, not both"),
    ],
)
def test_bad_relay_options_are_named(tmp_path: Path, options: list[str], message: str) -> None:
    result = jumpstarter("controller", "--listen", "127.0.0.1:0", "--state-dir", str(tmp_path), *options)
    assert result.returncode != 0
    assert message in result.stderr
