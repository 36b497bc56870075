"""The QEMU board: real U-Boot, and an end-to-end flash over TFTP through a tap device."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from jumpstarter_drivers.composite.driver import Composite, Proxy, resolve_refs
from jumpstarter_drivers.core import connect, serve
from jumpstarter_drivers.core.errors import ConfigurationError, DriverError
from jumpstarter_drivers.flashers.testing import make_reference_bundle
from jumpstarter_drivers.power import MockPower
from jumpstarter_drivers.qemu import QemuBoard
from jumpstarter_drivers.qemu.lab import (
    LabUnavailable,
    check_qemu,
    flasher_lab_config,
    serve_in_namespace,
    tap_namespace,
)
from jumpstarter_drivers.uboot import UBoot


def qemu_missing() -> str:
    try:
        check_qemu()
    except LabUnavailable as exc:
        return str(exc)
    return ""


needs_qemu = pytest.mark.skipif(bool(qemu_missing()), reason=qemu_missing())


def test_missing_bios_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="config field 'bios'.*does not exist"):
        QemuBoard(bios=str(tmp_path / "u-boot.bin"), qemu="sh")


@needs_qemu
def test_qemu_exiting_on_its_own_is_reported_at_power_off(tmp_path: Path) -> None:
    board = QemuBoard(network="none", disk=str(tmp_path / "disk.img"), disk_size=1 << 20, extra_args=["-no-such-option"])
    try:
        board.power_on()
        deadline = time.monotonic() + 10
        while board.powered:
            assert time.monotonic() < deadline, "QEMU with a bad option still runs after 10 s"
            time.sleep(0.02)  # polling the process, bounded by the deadline
        with pytest.raises(DriverError, match="QEMU exited with status 1: .*no-such-option"):
            board.power_off()
    finally:
        board.close()


@needs_qemu
def test_board_refuses_children() -> None:
    with pytest.raises(ConfigurationError, match="makes its own children 'serial' and 'power'; give it no children"):
        QemuBoard(children={"power": MockPower()})


@pytest.fixture
def board_and_uboot(tmp_path: Path) -> Iterator:
    board = QemuBoard(network="none", disk=str(tmp_path / "disk.img"), disk_size=16 << 20)
    uboot = UBoot(power_off_time=0, children={"serial": Proxy(ref="board.serial"), "power": Proxy(ref="board.power")})
    root = Composite(children={"board": board, "uboot": uboot})
    resolve_refs(root)
    try:
        with serve(root) as client:
            yield board, client
    finally:
        root.close()


@needs_qemu
def test_real_uboot_prompt_commands_and_disk(board_and_uboot) -> None:
    board, client = board_and_uboot
    client.uboot.reboot_to_console()
    assert "QEMU VirtIO Block Device" in client.uboot.run_command("virtio scan; virtio info")
    client.uboot.set_env("marker", "hello world")
    assert client.uboot.get_env("marker") == "hello world"
    client.uboot.set_env("cmd", "echo a; echo $b")
    assert client.uboot.get_env("cmd") == "echo a; echo $b"
    client.uboot.run_command("mw.b 40400000 5a 400; virtio write 40400000 2 2")
    assert Path(board.disk).read_bytes()[1024:2048] == b"\x5a" * 1024
    client.board.power.off()
    assert not board.powered


@pytest.fixture
def tftp_windowsize() -> int | None:
    """U-Boot's tftpwindowsize in the lab (``None``: U-Boot's default of one block in flight)."""
    return None


@pytest.fixture
def netns_lab(tmp_path: Path, tftp_windowsize: int | None) -> Iterator[tuple[object, Path]]:
    """An exporter serving a QEMU board and a flasher, run inside a namespace with a tap device.

    Skipped only when this machine cannot host the lab; an exporter that fails to start is an error.
    """
    with contextlib.ExitStack() as stack:
        try:
            check_qemu()
            ns = stack.enter_context(tap_namespace())
        except LabUnavailable as exc:
            pytest.skip(str(exc))
        config = flasher_lab_config(ns, make_reference_bundle(tmp_path / "bundle"), tmp_path, 64 << 20, 4 << 20)
        config["export"]["flasher"]["config"]["tftp_windowsize"] = tftp_windowsize
        socket = stack.enter_context(serve_in_namespace(ns, config, tmp_path))
        yield stack.enter_context(connect(socket)), tmp_path / "disk.img"


@pytest.mark.parametrize("tftp_windowsize", [None, 8], ids=["window1", "window8"])
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
    assert client.board.disk_sha256(len(data)) == client.flasher.http.storage.hash("image.raw")


def test_failed_tftpboot_on_real_uboot_is_detected(netns_lab) -> None:
    client, _ = netns_lab
    client.flasher.tftp.start()
    client.flasher.tftp.storage.write_bytes("present.bin", b"x" * 1000)
    uboot = client.flasher.uboot
    uboot.reboot_to_console()
    uboot.setup_network()
    assert "Bytes transferred = 1000 " in uboot.run_command("tftpboot 40400000 present.bin")
    with pytest.raises(DriverError, match=r"(?si)failed with status 1.*TFTP error: '[^']*not found'"):
        uboot.run_command("tftpboot 40400000 missing.bin")
    client.board.power.off()
