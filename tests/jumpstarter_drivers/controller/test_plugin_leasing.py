"""The pytest plugin leasing its boards from the controller: one per xdist worker, waiting in the queue."""

from __future__ import annotations

import os
import re
import select
import socket
import subprocess
import sys
import time
from pathlib import Path

from jumpstarter_drivers.core.processes import stop_process

SUITE = '''
import os
import socket

import pytest


@pytest.fixture(autouse=True)
def hold_until_released():
    """With HOLD_SOCKET set, block until the outer test closes that socket (so the boards stay taken)."""
    path = os.environ.get("HOLD_SOCKET")
    if path:
        try:
            with socket.socket(socket.AF_UNIX) as sock:
                sock.settimeout(120)
                sock.connect(path)
                sock.recv(1)
        except (FileNotFoundError, ConnectionRefusedError, ConnectionResetError):
            pass  # released already


@pytest.mark.parametrize("round", range(3))
def test_power(client, round):
    client.power.on()
    client.power.off()


@pytest.mark.parametrize("round", range(3))
def test_read(client, round):
    assert list(client.power.read())
'''


def command(directory: Path, *args: str) -> list[str]:
    (directory / "test_board.py").write_text(SUITE)
    return [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", str(directory / "test_board.py"), *args]


def run_pytest(directory: Path, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(
        command(directory, *args), cwd=directory, capture_output=True, text=True, timeout=timeout, check=False
    )


def leases_in(log: str) -> list[str]:
    return re.findall(r"leased to \S+ \(lease (\S+)\)", log)


def test_each_xdist_worker_leases_its_own_board(lab, tmp_path: Path) -> None:
    for index in range(3):
        lab.serve(f"board-{index}", {"board": "rpi4"})
    config = lab.client_file("ci")
    suite = tmp_path / "suite"
    suite.mkdir()
    result = run_pytest(
        suite,
        "-n",
        "3",
        "--jumpstarter-selector",
        "board=rpi4",
        "--jumpstarter-client-config",
        str(config),
        "--junitxml",
        str(suite / "junit.xml"),
        "--jumpstarter-log-dir",
        str(suite / "logs"),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert [len(leases_in(lab.log(f"board-{index}"))) for index in range(3)] == [1, 1, 1]
    junit = (suite / "junit.xml").read_text()
    assert all(f'name="jumpstarter_leased_exporter" value="board-{index}"' in junit for index in range(3)), junit
    headers = [path.read_text().splitlines()[1] for path in (suite / "logs").glob("*.log")]
    assert len(headers) == 6 and all("leased from the controller (lease " in line for line in headers), headers
    assert lab.store(lambda store: store.snapshot()).assignments == {}


def test_three_workers_two_boards_one_waits_then_runs(lab, tmp_path: Path) -> None:
    for index in range(2):
        lab.serve(f"board-{index}", {"board": "rpi4"})
    config = lab.client_file("ci")
    suite = tmp_path / "suite"
    suite.mkdir()
    hold = socket.socket(socket.AF_UNIX)
    hold.bind(str(tmp_path / "hold"))
    hold.listen(16)
    args = ("-n", "3", "--jumpstarter-selector", "board=rpi4", "--jumpstarter-client-config", str(config))
    env = {**os.environ, "HOLD_SOCKET": str(tmp_path / "hold")}
    process = subprocess.Popen(
        command(suite, *args), cwd=suite, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    said = []
    try:
        deadline = time.monotonic() + 120
        while not any("place 1 in the queue" in line for line in said):  # the third worker says it waits
            ready, _, _ = select.select([process.stderr], [], [], max(0.0, deadline - time.monotonic()))
            assert ready, f"no worker said it waits within 120 s: {said}"
            said.append(process.stderr.readline())
        assert len(lab.store(lambda store: store.snapshot()).assignments) == 2
        hold.close()  # the two holders' tests go on, finish, and give their boards back
        stdout, stderr = process.communicate(timeout=240)
    finally:
        hold.close()
        stop_process(process)
    assert process.returncode == 0, stdout + "".join(said) + stderr
    assert sum(len(leases_in(lab.log(f"board-{index}"))) for index in range(2)) == 3


def test_a_lease_timeout_ends_the_run_with_one_line_and_exit_code_4(lab, tmp_path: Path) -> None:
    lab.serve("board-0", {"board": "rpi4"})
    holder = lab.client("holder")
    from jumpstarter_drivers.controller.client import leased

    config = lab.client_file("ci")
    suite = tmp_path / "suite"
    suite.mkdir()
    with leased(holder, "board=rpi4", duration=600, wait=30):
        result = run_pytest(
            suite,
            "--jumpstarter-selector",
            "board=rpi4",
            "--jumpstarter-client-config",
            str(config),
            "--jumpstarter-lease-timeout",
            "2s",
        )
    assert result.returncode == 4, result.stdout + result.stderr
    assert "no board for board=rpi4 within 2 s" in result.stdout
    assert "waiting for an exporter matching board=rpi4; place 1 in the queue" in result.stdout
