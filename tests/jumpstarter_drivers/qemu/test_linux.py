"""Real Linux on the QEMU board: Debian's arm64 kernel and busybox, booted by U-Boot over our TFTP.

One lab (a network namespace with a tap device, an exporter inside it, QEMU) serves the whole
module: booting under TCG is slow, so the tests share the booted board where they can. Skipped
with the reason when this machine cannot host the lab or the arm64 packages are missing
(``./run tests`` as root downloads them).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from jumpstarter_drivers.core import connect
from jumpstarter_drivers.core.errors import DriverError, JumpstarterError
from jumpstarter_drivers.qemu.lab import LabUnavailable, check_qemu, linux_lab_config, serve_in_namespace, tap_namespace
from jumpstarter_drivers.qemu.linux import (
    LinuxUnavailable,
    build_linux,
    dump_dtb,
    make_linux_bundle,
    modinfo,
    resolve_modules,
)
from jumpstarter_drivers.shell import ShellCommandFailed


@pytest.fixture(scope="module")
def linux_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[object, Path]]:
    """The QEMU board with its Linux bundle, served from a namespace; yields (client, disk file)."""
    work = tmp_path_factory.mktemp("qemu-linux")
    with contextlib.ExitStack() as stack:
        try:
            check_qemu()
            image = build_linux()
            ns = stack.enter_context(tap_namespace())
        except (LabUnavailable, LinuxUnavailable) as exc:
            pytest.skip(str(exc))
        bundle = make_linux_bundle(work / "bundle", image, dump_dtb(work / "virt.dtb"), ns.board, "255.255.255.0")
        socket = stack.enter_context(serve_in_namespace(ns, linux_lab_config(ns, bundle, work), work))
        client = stack.enter_context(connect(socket))
        yield client, work / "disk.img"
        with contextlib.suppress(JumpstarterError):  # the exporter, stopping next, powers it off anyway
            client.strategy.transition("off")


def test_initramfs_modules_come_with_their_dependencies() -> None:
    try:
        image = build_linux()
    except LinuxUnavailable as exc:
        pytest.skip(str(exc))
    cpio = image.initramfs.read_bytes()
    for name in ("virtio.ko", "virtio_ring.ko", "virtio_mmio.ko", "virtio_blk.ko", "failover.ko", "virtio_net.ko"):
        assert f"lib/modules/{name}".encode() in cpio, name
    assert cpio.index(b"lib/modules/failover.ko") < cpio.index(b"lib/modules/virtio_net.ko")


def test_modinfo_reads_dependencies(tmp_path: Path) -> None:
    try:
        build_linux()
    except LinuxUnavailable as exc:
        pytest.skip(str(exc))
    modules_dir = next(Path(tempfile_dir(tmp_path)).glob("lib/modules/*"))
    ordered = [name for name, _ in resolve_modules(modules_dir, ("virtio_net",))]
    assert ordered[-1] == "virtio_net" and "net_failover" in ordered and "virtio" in ordered
    assert modinfo((next(modules_dir.rglob("virtio_net.ko"))).read_bytes())["name"] == "virtio_net"


def tempfile_dir(tmp_path: Path) -> Path:
    """The kernel package unpacked into ``tmp_path``."""
    from jumpstarter_drivers.qemu.linux import find_debs

    kernel, _ = find_debs()
    subprocess.run(["dpkg-deb", "-x", str(kernel), str(tmp_path)], check=True, timeout=300)
    return tmp_path


def test_off_to_shell_and_commands_with_exit_status(linux_lab) -> None:
    client, _ = linux_lab
    result = client.strategy.transition("shell")
    assert result.state == "shell" and result.path[-1] == "shell", result
    print(result.summary())
    shell = client.shell
    assert shell.run_check("uname -m").strip() == "aarch64"
    assert shell.run("sh -c 'exit 3'").status == 3
    with pytest.raises(ShellCommandFailed, match="No such file or directory"):
        shell.run_check("ls /no/such/dir")
    assert "eth0" in shell.run_check("ifconfig eth0")
    assert client.strategy.transition("shell").steps == {}, "a second transition reuses the booted board"


def test_file_put_and_read_back(linux_lab) -> None:
    client, _ = linux_lab
    client.strategy.transition("shell")
    data = os.urandom(20000)
    client.shell.put(data, "/tmp/random.bin")
    assert client.shell.run_check("sha256sum /tmp/random.bin").split()[0] == hashlib.sha256(data).hexdigest()
    assert client.shell.get("/tmp/random.bin") == data


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed (Debian package curl)")
def test_forwarded_http_port_reached_with_curl(linux_lab) -> None:
    client, _ = linux_lab
    client.strategy.transition("shell")
    client.shell.run_check("echo served by busybox httpd > /www/hello.txt")
    with client.network.forward(80) as (host, port):
        done = subprocess.run(["curl", "-sSf", "--max-time", "60", f"http://{host}:{port}/hello.txt"],
                              capture_output=True, text=True, timeout=90, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "served by busybox httpd\n"


def test_kernel_panic_is_reported_at_once_with_the_console_tail(linux_lab) -> None:
    client, _ = linux_lab
    client.strategy.transition("off")
    client.flasher.use_dtb_variant("panic")
    try:
        started = time.monotonic()
        panic = r"(?s)failed: 'Kernel panic - not syncing'.*--- console tail ---.*Unable to mount root fs"
        with pytest.raises(DriverError, match=panic):
            client.strategy.transition("shell")
        print(f"panic reported {time.monotonic() - started:.1f} s after the transition began")
    finally:
        client.flasher.use_dtb_variant("virt")
    assert client.strategy.get_state() == "off"


@pytest.mark.parametrize("method", ["busybox", "uboot"])
def test_flash_checked_byte_for_byte_on_the_disk_file(linux_lab, tmp_path: Path, method: str) -> None:
    client, disk = linux_lab
    image = tmp_path / "image.raw"
    image.write_bytes(os.urandom(3 * (1 << 20) + 1000))
    result = client.flasher.flash(image, method=method)
    print(result.summary())
    data = image.read_bytes()
    assert disk.read_bytes()[: len(data)] == data
