"""A 3-member etcd cluster: the controller keeps serving when one member dies."""

from __future__ import annotations

from pathlib import Path

from jumpstarter_drivers.controller.client import leased
from jumpstarter_drivers.controller.store import StoreUnavailable
from jumpstarter_drivers.core.access import connect
from jumpstarter_testing import eventually

from .conftest import Lab


class ClusterEtcd:
    """What the Lab helper needs of an etcd: ``endpoint`` (here, every member's)."""

    def __init__(self, endpoints: list[str]) -> None:
        self.endpoints = endpoints
        self.endpoint = endpoints[0]


def test_a_dead_etcd_member_does_not_stop_the_lab(etcd_cluster, tmp_path: Path, tls_pair) -> None:
    members, endpoints = etcd_cluster
    lab = Lab(ClusterEtcd(endpoints), tmp_path, tls_pair)
    try:
        lab.replica(etcd=endpoints)
        lab.serve("board-1", {"board": "rpi4"})
        members[0].kill()
        members[0].wait(10)
        lab.etcd.endpoint = endpoints[1]
        # The two members left elect a new leader first (about a second, more on a loaded machine).
        alice = eventually(lambda: lab.client("alice"), timeout=60, interval=0.5, exceptions=StoreUnavailable)
        with leased(alice, "board=rpi4", duration=60, wait=60) as lease, connect(lease.socket) as client:
            client.power.on()
    finally:
        lab.close()
