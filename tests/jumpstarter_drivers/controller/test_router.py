"""The router path: what one connection through a lease costs, and bytes arriving intact."""

from __future__ import annotations

import hashlib
import os

from jumpstarter_drivers.controller.client import leased
from jumpstarter_drivers.core.access import connect


def test_one_connection_through_a_lease_is_one_router_tunnel(lab) -> None:
    """connect() probes the socket before gRPC connects: that probe must not cost a Dial and a pairing."""
    lab.serve("board-1", {"board": "rpi4"})
    router = lab.replicas[0].router
    with leased(lab.client("alice"), "board=rpi4", duration=60, wait=30) as lease:
        before = router.paired
        with connect(lease.socket) as client:
            client.power.on()
        assert router.paired - before == 1


def test_an_upload_through_the_router_arrives_intact(lab, tmp_path) -> None:
    """Megabytes in large frames both ways through the router, byte for byte."""
    storage = tmp_path / "storage"
    lab.serve("board-1", {"board": "rpi4"}, {"storage": {"type": "Storage", "config": {"root_dir": str(storage)}}})
    source = tmp_path / "source.bin"
    source.write_bytes(os.urandom(9 << 20))
    with leased(lab.client("alice"), "board=rpi4", duration=60, wait=30) as lease, connect(lease.socket) as client:
        client.storage.write_from_path("upload.bin", source)
        copy = tmp_path / "copy.bin"
        client.storage.read_into_path("upload.bin", copy)
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    assert hashlib.sha256((storage / "upload.bin").read_bytes()).hexdigest() == digest
    assert hashlib.sha256(copy.read_bytes()).hexdigest() == digest
