"""The QEMU board: real U-Boot, and an end-to-end flash over TFTP through a tap device."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from jumpstarter_drivers.composite.driver import Composite, Proxy, resolve_refs
from jumpstarter_drivers.core import connect, serve
from jumpstarter_drivers.flashers.testing import make_reference_bundle
from jumpstarter_drivers.uboot import UBoot

from .conftest import Netns, qemu_missing

pytestmark = pytest.mark.skipif(qemu_missing() is not None, reason=qemu_missing() or "")


@pytest.fixture
def board_and_uboot(tmp_path: Path) -> Iterator:
    from jumpstarter_drivers.qemu import QemuBoard

    board = QemuBoard(network="none", disk=str(tmp_path / "disk.img"), disk_size=16 << 20)
    uboot = UBoot(power_off_time=0, children={"serial": Proxy(ref="board.serial"), "power": Proxy(ref="board.power")})
    root = Composite(children={"board": board, "uboot": uboot})
    resolve_refs(root)
    try:
        with serve(root) as client:
            yield board, client
    finally:
        root.close()


def test_real_uboot_prompt_commands_and_disk(board_and_uboot) -> None:
    board, client = board_and_uboot
    client.uboot.reboot_to_console()
    assert "QEMU VirtIO Block Device" in client.uboot.run_command("virtio scan; virtio info")
    client.uboot.set_env("marker", "hello world")
    assert client.uboot.get_env("marker") == "hello world"
    client.uboot.run_command("mw.b 40400000 5a 400; virtio write 40400000 2 2")
    assert Path(board.disk).read_bytes()[1024:2048] == b"\x5a" * 1024
    client.board.power.off()
    assert not board.powered


@pytest.fixture
def netns_lab(tmp_path: Path, netns: Netns) -> Iterator[tuple[object, Path]]:
    """An exporter serving a QEMU board and a flasher, run inside the namespace like a lab host."""
    bundle = make_reference_bundle(tmp_path / "bundle")
    disk = tmp_path / "disk.img"
    config = {"export": {
        "board": {"type": "jumpstarter_drivers.qemu.driver.QemuBoard",
                  "config": {"network": "tap", "tap": netns.tap, "disk": str(disk), "disk_size": 64 << 20}},
        "flasher": {
            "type": "BaseFlasher",
            "config": {"flasher_bundle": str(bundle), "cache_dir": str(tmp_path / "cache"),
                       "uboot_targets": {"usd": "virtio 0"}, "chunk_size": 4 << 20},
            "children": {
                "serial": {"ref": "board.serial"},
                "power": {"ref": "board.power"},
                "tftp": {"type": "Tftp", "config": {"root_dir": str(tmp_path / "tftp"), "host": netns.host, "port": 69}},
                "http": {"type": "HttpServer", "config": {"root_dir": str(tmp_path / "http"), "host": netns.host}},
                "uboot": {"type": "UBoot", "config": {"network": "static", "ipaddr": netns.board,
                                                      "netmask": "255.255.255.0", "serverip": netns.host,
                                                      "power_off_time": 0.2}},
            },
        },
    }}
    (tmp_path / "lab.yaml").write_text(yaml.safe_dump(config))
    socket = tmp_path / "exporter.sock"
    log = (tmp_path / "exporter.log").open("wb")
    exporter = subprocess.Popen(
        netns.exec(sys.executable, "-m", "jumpstarter_drivers.cli", "serve", str(tmp_path / "lab.yaml"),
                   "--unix", str(socket), "--log-level", "info"),
        stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        while not socket.exists():
            if exporter.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the exporter did not start: {(tmp_path / 'exporter.log').read_text()[-3000:]}")
            time.sleep(0.05)  # polling for the socket, bounded by the deadline
        with connect(socket) as client:
            yield client, disk
    finally:
        exporter.terminate()
        try:
            exporter.wait(20)
        except subprocess.TimeoutExpired:
            exporter.kill()
            exporter.wait(5)
        log.close()


def test_flash_qemu_board_with_uboot_over_tap(netns_lab, tmp_path: Path) -> None:
    client, disk = netns_lab
    image = tmp_path / "image.raw"
    image.write_bytes(os.urandom(9 * (1 << 20) + 300))
    result = client.flasher.flash(image, method="uboot")
    assert result.size == image.stat().st_size and result.steps["load"] > 0
    data = image.read_bytes()
    flashed = disk.read_bytes()
    assert flashed[: len(data)] == data
    assert flashed[len(data) : len(data) + 212] == bytes(212), "the last block is padded with zeros"
