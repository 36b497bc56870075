"""Lease groups: one board per role, leased together or not at all, in FIFO order with other waiters."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from jumpstarter_drivers.controller.client import ControllerClient, LeaseTimeout, leased, leased_roles
from jumpstarter_drivers.controller.groups import plan
from jumpstarter_drivers.controller.store import Record
from jumpstarter_drivers.core import loop
from jumpstarter_drivers.core.access import connect
from jumpstarter_drivers.core.errors import ConfigurationError

ROLES = {"host": "board=rpi4", "dut": "board=imx8"}


def _lease(name: str, revision: int) -> Record:
    return Record(name, {}, revision, revision)


def test_plan_gives_the_scarce_board_to_the_lease_that_needs_it() -> None:
    wide, narrow = _lease("wide", 1), _lease("narrow", 2)
    allowed = {"wide": {"b1", "b2"}, "narrow": {"b1"}}
    chosen = plan([wide, narrow], ["b1", "b2"], lambda lease, name: name in allowed[lease.name])
    assert chosen == {"narrow": "b1", "wide": "b2"}
    assert plan([wide, narrow], ["b1"], lambda lease, name: name in allowed[lease.name]) is None


def test_a_group_gets_every_board_at_once_and_holds_none_while_one_is_busy(lab) -> None:
    lab.serve("host-1", {"board": "rpi4"})
    lab.serve("dut-1", {"board": "imx8"})
    got: dict = {}
    errors: list[BaseException] = []

    def bob() -> None:
        try:
            with leased_roles(lab.client("bob"), ROLES, duration=60, wait=60) as held:
                got.update(held)
                for lease in held.values():
                    with connect(lease.socket) as client:
                        client.power.on()
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            errors.append(exc)

    with leased(lab.client("alice"), "board=imx8", duration=60, wait=30):
        thread = threading.Thread(target=bob)
        thread.start()
        lab.wait_for(lambda state: len(state.queue()) == 2)  # bob's group waits for dut-1
        carol = ControllerClient(lab.client("carol"))
        try:
            late = loop.run(carol.create_lease("board=rpi4", 60))
            with pytest.raises(LeaseTimeout):  # host-1 is free, but bob's group asked first for it
                loop.run(carol.wait_ready(late.name, 2.0))
            state = lab.store(lambda store: store.snapshot())
            assert "host-1" not in state.assignments, "the group held one board while waiting for the other"
        finally:
            loop.run(carol.release(late.name))
            loop.run(carol.close())
    thread.join(60)
    assert not errors, errors
    assert {role: lease.exporter for role, lease in got.items()} == {"host": "host-1", "dut": "dut-1"}
    history = lab.store(lambda store: store.ended_leases())
    begins = {record.value["begin"] for record in history if record.name in {lease.name for lease in got.values()}}
    assert len(begins) == 1, "the group's leases began in different transactions"


def test_groups_wanting_the_same_boards_never_deadlock(bare_lab) -> None:
    """Two replicas, four clients each asking for both boards as a group (half of them naming the roles in the
    other order, the classic lock-order deadlock), three rounds: every group runs, one at a time."""
    bare_lab.replica()
    bare_lab.replica()
    bare_lab.serve("host-1", {"board": "rpi4"})
    bare_lab.serve("dut-1", {"board": "imx8"})
    accesses = [bare_lab.client(f"client-{index}") for index in range(4)]
    lock = threading.Lock()
    holding: list[int] = []
    served: list[int] = []
    errors: list[BaseException] = []

    def run(index: int) -> None:
        roles = ROLES if index % 2 else dict(reversed(ROLES.items()))
        try:
            for _ in range(3):
                with leased_roles(accesses[index], roles, duration=60, wait=45) as held:
                    with lock:
                        holding.append(index)
                        assert len(holding) == 1, f"two groups hold boards at once: {holding}"
                    assert {lease.exporter for lease in held.values()} == {"host-1", "dut-1"}
                    with lock:
                        holding.remove(index)
                        served.append(index)
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(index,)) for index in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(180)
    assert not errors, errors
    assert sorted(served) == sorted(list(range(4)) * 3)


def test_a_group_needs_two_roles() -> None:
    with pytest.raises(ConfigurationError, match="2 to 8 roles"), leased_roles(None, {"host": "a=b"}, 60):  # type: ignore[arg-type]
        pass


DOCS = Path(__file__).parents[3] / "docs" / "shared-lab.md"


def roles_example() -> str:
    """The docs' example of a test taking two boards by role (the one Python block of its section)."""
    section = DOCS.read_text().split("### Several boards in one test", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)[0]


WITHOUT_ROLES = """

def test_without_roles(jumpstarter_boards):
    pass
"""


def test_the_plugin_leases_a_tests_roles_together(lab, tmp_path) -> None:
    lab.serve("host-1", {"board": "rpi4"})
    lab.serve("dut-1", {"board": "imx8"})
    (tmp_path / "test_roles.py").write_text(roles_example() + WITHOUT_ROLES)
    config = lab.client_file("ci")
    junit = tmp_path / "junit.xml"
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-p",
        "no:cacheprovider",
        "-q",
        str(tmp_path / "test_roles.py"),
        "--jumpstarter-client-config",
        str(config),
        "--junitxml",
        str(junit),
        "-rf",
    ]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=240, check=False)
    output = result.stdout + result.stderr
    assert "1 passed, 1 error" in output, output
    assert "jumpstarter_boards needs @pytest.mark.jumpstarter_roles(role='selector', ...)" in output
    xml = junit.read_text()
    assert (
        'name="jumpstarter_host_exporter" value="host-1"' in xml
        and 'name="jumpstarter_dut_exporter" value="dut-1"' in xml
    )
    assert "leased to ci" in lab.log("host-1") and "leased to ci" in lab.log("dut-1")
    assert lab.store(lambda store: store.snapshot()).leases == {}


def test_a_waiting_group_keeps_only_the_boards_it_needs(lab) -> None:
    """Two free rpi4 boards, the imx8 busy: the group keeps one rpi4 for its host, a later rpi4 lease gets the other."""
    lab.serve("host-1", {"board": "rpi4"})
    lab.serve("host-2", {"board": "rpi4"})
    lab.serve("dut-1", {"board": "imx8"})
    group = ControllerClient(lab.client("bob"))
    carol = ControllerClient(lab.client("carol"))
    try:
        with leased(lab.client("alice"), "board=imx8", duration=60, wait=30):
            ids = ["group-host", "group-dut"]
            tags = {"jumpstarter.dev/lease-group": ",".join(ids)}
            for lease_id, selector in zip(ids, ROLES.values(), strict=True):
                loop.run(group.create_lease(selector, 60, keepalive=0, lease_id=lease_id, tags=tags))
            late = loop.run(carol.create_lease("board=rpi4", 60, keepalive=0))
            assert loop.run(carol.wait_ready(late.name, 30)).exporter.endswith("host-2")
            state = lab.store(lambda store: store.snapshot())
            assert "host-1" not in state.assignments and [lease.name for lease in state.queue()] == ids
        for lease_id in ids:
            assert loop.run(group.wait_ready(lease_id, 30)).exporter.endswith(("host-1", "dut-1"))
        loop.run(carol.release(late.name))
        for lease_id in ids:
            loop.run(group.release(lease_id))
    finally:
        loop.run(group.close())
        loop.run(carol.close())


def test_a_group_tag_naming_someone_elses_lease_does_not_hold_it_back(lab) -> None:
    lab.serve("host-1", {"board": "rpi4"})
    mallory, bob = ControllerClient(lab.client("mallory")), ControllerClient(lab.client("bob"))
    try:
        with leased(lab.client("alice"), "board=rpi4", duration=60, wait=30):
            tags = {"jumpstarter.dev/lease-group": "bob-lease,mallory-lease"}
            loop.run(mallory.create_lease("board=rpi4", 60, keepalive=0, lease_id="mallory-lease", tags=tags))
            loop.run(bob.create_lease("board=rpi4", 60, keepalive=0, lease_id="bob-lease"))
        assert loop.run(bob.wait_ready("bob-lease", 30)).exporter.endswith("host-1")
        loop.run(bob.release("bob-lease"))
        loop.run(mallory.release("mallory-lease"))
    finally:
        loop.run(mallory.close())
        loop.run(bob.close())
