"""The virtual board: U-Boot commands with real TFTP and HTTP servers, the disk file, the shell."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import http.server
import re
import socket
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import tftpy

from jumpstarter_drivers.composite.driver import Composite, Proxy, resolve_refs
from jumpstarter_drivers.core.access import serve
from jumpstarter_drivers.core.errors import ConfigurationError, DriverError
from jumpstarter_drivers.power import MockPower
from jumpstarter_drivers.uboot import UBoot
from jumpstarter_drivers.virtualboard import VirtualBoard
from jumpstarter_drivers.virtualboard.simulator import split_commands


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def tftp_root(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    root = tmp_path / "tftp"
    root.mkdir()
    server = tftpy.TftpServer(str(root))
    port = free_udp_port()
    thread = threading.Thread(target=server.listen, args=("127.0.0.1", port, 0.5), daemon=True)
    thread.start()
    assert server.is_running.wait(5)
    yield root, port
    server.stop(now=True)
    thread.join(5)


@pytest.fixture
def http_root(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(5)


@pytest.fixture
def lab(tmp_path: Path) -> Iterator:
    board = VirtualBoard(autoboot_delay=1, disk=str(tmp_path / "disk.img"), disk_size=4 << 20)
    uboot = UBoot(boot_timeout=10, power_off_time=0,
                  children={"serial": Proxy(ref="board.serial"), "power": Proxy(ref="board.power")})
    root = Composite(children={"board": board, "uboot": uboot})
    resolve_refs(root)
    try:
        with serve(root) as client:
            client.uboot.reboot_to_console()
            yield board, client
    finally:
        root.close()


def test_tftpboot_downloads_for_real_and_writes_the_disk(lab, tftp_root) -> None:
    board, client = lab
    root, port = tftp_root
    payload = bytes(range(256)) * 40 + b"tail"
    (root / "blob.bin").write_bytes(payload)
    client.uboot.setup_network(serverip="127.0.0.1", tftp_port=port)
    out = client.uboot.run_command("tftpboot 0x42000000 blob.bin")
    assert f"Bytes transferred = {len(payload)} " in out
    assert client.uboot.get_env("filesize") == f"{len(payload):x}"
    crc = client.uboot.run_command(f"crc32 42000000 {len(payload):x}")
    assert re.search(r"==> ([0-9a-f]{8})", crc).group(1) == f"{zlib.crc32(payload):08x}"
    assert "21 blocks written: OK" in client.uboot.run_command("mmc write 42000000 8 15")
    disk = Path(board.disk).read_bytes()
    assert disk[8 * 512 : 8 * 512 + len(payload)] == payload
    assert "21 blocks read: OK" in client.uboot.run_command("mmc read 43000000 8 15")
    again = client.uboot.run_command(f"crc32 43000000 {len(payload):x}")
    assert again.split("==>")[1] == crc.split("==>")[1]


def test_failed_tftpboot_is_an_error_with_the_reason(lab, tftp_root) -> None:
    _, client = lab
    _, port = tftp_root
    client.uboot.setup_network(serverip="127.0.0.1", tftp_port=port)
    with pytest.raises(DriverError, match=r"(?s)failed with status 1.*TFTP error: 'File not found'"):
        client.uboot.run_command("tftpboot 0x42000000 missing.bin")


def test_tftpboot_without_serverip_fails(lab) -> None:
    _, client = lab
    out = client.uboot.run_command("setenv ipaddr 10.0.0.2; setenv serverip; tftpboot 42000000 x", check=False)
    assert "`serverip' not set" in out


def test_block_write_outside_the_disk_fails(lab) -> None:
    _, client = lab
    with pytest.raises(DriverError, match="0 blocks write: ERROR"):
        client.uboot.run_command("mmc write 42000000 2000 10")
    with pytest.raises(DriverError, match="No virtio device"):
        client.uboot.run_command("virtio write 42000000 0 1")


def test_saveenv_survives_a_power_cycle(lab) -> None:
    _, client = lab
    client.uboot.run_command("setenv kept yes; setenv lost yes; saveenv; setenv lost")
    client.uboot.run_command("setenv lost again")
    client.uboot.reboot_to_console()
    assert client.uboot.get_env("kept") == "yes"
    assert client.uboot.get_env("lost") == "yes"


def test_booti_needs_a_loaded_kernel(lab) -> None:
    _, client = lab
    with pytest.raises(DriverError, match="Bad Linux ARM64 Image magic"):
        client.uboot.run_command("booti 0x82000000 - 0x84000000")


def test_linux_shell_login_and_http_write(lab, tftp_root, http_root) -> None:
    board, client = lab
    root, port = tftp_root
    www, url = http_root
    (root / "kernel").write_bytes(bytes(1024))
    image = hashlib.sha256(b"seed").digest() * 4096
    (www / "image.bin").write_bytes(image)
    with linux_shell(client, port) as console:
        console.send(f"wget -O - {url}/image.bin | dd of=/dev/mmcblk0 bs=1M; echo rc:$?:\r".encode())
        seen = read_until(console, rb"rc:\d+:")
        assert b"rc:0:" in seen and b"100%" in seen
        console.send(f"head -c {len(image)} /dev/mmcblk0 | sha256sum\r".encode())
        read_until(console, re.escape(hashlib.sha256(image).hexdigest().encode()))
    assert Path(board.disk).read_bytes()[: len(image)] == image


@contextlib.contextmanager
def linux_shell(client, tftp_port: int) -> Iterator:
    """The board's console, logged in to its Linux shell (a kernel named 'kernel' in the TFTP root)."""
    client.uboot.setup_network(serverip="127.0.0.1", tftp_port=tftp_port)
    client.uboot.run_command("tftpboot 0x82000000 kernel")
    with client.board.serial.stream() as console:
        console.send(b"booti 0x82000000 - 0x84000000\r")
        for step, reply in ((b"login: ", b"root\r"), (b"Password: ", b"password\r"), (b"# ", None)):
            read_until(console, re.escape(step))
            if reply:
                console.send(reply)
        yield console


def test_linux_shell_substitutes_commands_outside_single_quotes(lab, tftp_root) -> None:
    _, client = lab
    root, port = tftp_root
    (root / "kernel").write_bytes(bytes(1024))
    with linux_shell(client, port) as console:
        console.send(b"echo x$(echo hi)y \"$(echo there)\" '$(echo no)'\r")
        read_until(console, rb"xhiy there \$\(echo no\)")  # only the output reads so, not the echoed line


def read_until(console, pattern: bytes, timeout: float = 10.0) -> bytes:
    """Console output up to the first match of ``pattern``; fails after ``timeout`` s or at the stream's end."""
    seen = b""
    deadline = time.monotonic() + timeout
    while not re.search(pattern, seen):
        left = deadline - time.monotonic()
        assert left > 0, f"no {pattern!r} on the console within {timeout} s; it showed: {seen[-500:]!r}"
        data = console.receive(left)
        assert data, f"the console ended before {pattern!r}; it showed: {seen[-500:]!r}"
        seen += data
    return seen


def test_split_commands_keeps_quotes() -> None:
    assert split_commands("a 'b;c' || d && e") == [(";", "a 'b;c'"), ("||", "d"), ("&&", "e")]


def test_board_refuses_children_and_odd_disks() -> None:
    with pytest.raises(ConfigurationError, match="multiple of 512"):
        VirtualBoard(disk_size=1000)
    with pytest.raises(ConfigurationError, match="makes its own children 'serial' and 'power'; give it no children"):
        VirtualBoard(children={"serial": MockPower()})


def test_virtual_flasher_brings_the_reference_bundle(tmp_path: Path) -> None:
    from jumpstarter_drivers.virtualboard import VirtualFlasher

    board = VirtualBoard(autoboot_delay=1, disk=str(tmp_path / "disk.img"), disk_size=1 << 20)
    flasher = VirtualFlasher(children={"serial": Proxy(ref="board.serial"), "power": Proxy(ref="board.power")})
    root = Composite(children={"board": board, "flasher": flasher})
    resolve_refs(root)
    try:
        with serve(root) as client:
            assert client.flasher.manifest.metadata.name == "test-bundle"
            image = tmp_path / "image.raw"
            image.write_bytes(b"virtual" * 1000)
            client.flasher.flash(image)
            assert Path(board.disk).read_bytes()[:7000] == image.read_bytes()
    finally:
        root.close()
    assert not Path(flasher.flasher_bundle).exists(), "the generated bundle is removed on close"


def test_a_board_that_does_not_stop_is_reported_and_stays_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from jumpstarter_drivers.virtualboard import driver

    monkeypatch.setattr(driver, "STOP_TIMEOUT", 0.2)
    board = VirtualBoard(disk=str(tmp_path / "disk.img"), disk_size=1 << 20)
    release = threading.Event()
    board.board.run = lambda uart: release.wait(10)  # a board stuck where it does not look at its power
    try:
        board.power_on()
        with pytest.raises(DriverError, match="did not stop within 0.2 s of power off"):
            board.power_off()
        assert board.powered, "a board still running is not reported as off"
        stuck = board._thread
        board.power_on()
        assert board._thread is stuck, "power on started a second board on the same pty"
    finally:
        release.set()
        board.close()
    assert not board.powered

