"""Holders and exporters that die, replicas that die: the lab notices within its bounds."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading

import pytest

from jumpstarter_drivers.controller.client import KEEPALIVE, ControllerClient, LeaseError, leased
from jumpstarter_drivers.controller.store import PRESENCE_TTL, StoreUnavailable
from jumpstarter_drivers.core import loop
from jumpstarter_drivers.core.access import connect
from jumpstarter_drivers.core.errors import JumpstarterError
from jumpstarter_drivers.core.processes import stop_process
from jumpstarter_testing import eventually

#: Slack on top of a stated bound for a loaded machine (etcd checks lease expiry every 0.5 s).
SLACK = 5.0


def test_a_killed_client_frees_its_board_within_the_keepalive_bound(lab) -> None:
    lab.serve("board-1", {"board": "rpi4"})
    config = lab.client_file("ci")
    shell = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jumpstarter_drivers.cli",
            "shell",
            "--selector",
            "board=rpi4",
            "--client-config",
            str(config),
            "--",
            "sleep",
            "600",
        ],
        start_new_session=True,
        stderr=subprocess.DEVNULL,
    )
    try:
        lab.wait_for(lambda state: "board-1" in state.assignments)
        os.killpg(shell.pid, signal.SIGKILL)  # the job and its command, as a cancelled CI job
        shell.wait(10)
        lab.wait_for(lambda state: "board-1" not in state.assignments, timeout=KEEPALIVE + SLACK)
    finally:
        stop_process(shell)
    (ended,) = lab.store(lambda store: store.ended_leases())
    assert ended.value["reason"] == "HolderGone"


def test_a_killed_exporter_goes_offline_and_its_holder_gets_an_error(lab) -> None:
    exporter = lab.serve("board-1", {"board": "rpi4"})
    alice = lab.client("alice")
    with leased(alice, "board=rpi4", duration=600, wait=30) as lease, connect(lease.socket) as client:
        client.power.on()
        exporter.kill()
        lab.wait_online("board-1", online=False, timeout=PRESENCE_TTL + SLACK)
        outcome: list[BaseException | None] = []

        def call() -> None:
            try:
                client.power.on()
                outcome.append(None)
            except JumpstarterError as exc:
                outcome.append(exc)

        caller = threading.Thread(target=call, daemon=True)
        caller.start()
        caller.join(30)
        assert outcome, "the holder's call hung after its exporter died"
        assert isinstance(outcome[0], JumpstarterError)
        client_of_alice = ControllerClient(lab.client("alice-again"))
        with pytest.raises(LeaseError, match="belongs to another client"):
            loop.run(client_of_alice.dial(lease.name))
        loop.run(client_of_alice.close())
        holder = ControllerClient(alice)
        with pytest.raises(LeaseError, match=f"exporter board-1 of lease {lease.name} is offline"):
            loop.run(holder.dial(lease.name))
        loop.run(holder.close())


def test_a_killed_replica_leaves_the_lease_and_new_dials_go_to_the_other(bare_lab) -> None:
    lab = bare_lab
    first, _ = lab.replica_process("a")
    lab.replica_process("b")
    lab.serve("board-1", {"board": "rpi4"})
    with leased(lab.client("alice"), "board=rpi4", duration=600, wait=30) as lease:
        with connect(lease.socket) as client:
            client.power.on()
        first.kill()
        first.wait(10)
        with connect(lease.socket, timeout=30) as client:
            client.power.off()
        state = lab.store(lambda store: store.snapshot())
        assert state.assignments == {"board-1": lease.name}
    assert "registered with the controller at" in lab.log("board-1")


def test_the_controller_recovers_without_losing_leases_when_etcd_restarts(lab) -> None:
    lab.serve("board-1", {"board": "rpi4"})
    with leased(lab.client("alice"), "board=rpi4", duration=600, wait=30) as lease:
        lab.etcd.stop()
        lab.etcd.start()
        # This test's own probe reconnects too: the first call on a fresh channel may still be refused.
        eventually(
            lambda: lab.store(lambda store: store.snapshot()), timeout=30, interval=0.2, exceptions=StoreUnavailable
        )
        lab.wait_online("board-1", timeout=30)
        with connect(lease.socket, timeout=30) as client:
            client.power.on()
        assert lab.store(lambda store: store.snapshot()).assignments == {"board-1": lease.name}
