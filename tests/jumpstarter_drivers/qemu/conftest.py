"""A network namespace with a tap device, where QEMU and the exporter's servers meet."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from jumpstarter_drivers.qemu.driver import DEFAULT_BIOS

HOST_ADDRESS = "10.0.3.1"
BOARD_ADDRESS = "10.0.3.2"


def qemu_missing() -> str | None:
    """Why the QEMU board cannot run here, or ``None``."""
    if shutil.which("qemu-system-aarch64") is None:
        return "qemu-system-aarch64 not installed (Debian package qemu-system-arm)"
    if not Path(DEFAULT_BIOS).is_file():
        return f"{DEFAULT_BIOS} missing (Debian package u-boot-qemu)"
    return None


@dataclass
class Netns:
    name: str
    tap: str
    host: str
    board: str

    def exec(self, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", self.name, *argv]


def _ip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10, check=False)


@pytest.fixture
def netns() -> Iterator[Netns]:
    """A fresh network namespace holding tap0 at 10.0.3.1/24 (root and iproute2 needed)."""
    if shutil.which("ip") is None:
        pytest.skip("iproute2 not installed")
    if os.geteuid() != 0 or not os.path.exists("/dev/net/tun"):
        pytest.skip("creating a network namespace and a tap device needs root and /dev/net/tun")
    name = f"jt-{uuid.uuid4().hex[:8]}"
    created = _ip("netns", "add", name)
    if created.returncode != 0:
        pytest.skip(f"cannot create a network namespace: {created.stderr.strip()}")
    try:
        for args in (
            ("link", "set", "lo", "up"),
            ("tuntap", "add", "dev", "tap0", "mode", "tap"),
            ("addr", "add", f"{HOST_ADDRESS}/24", "dev", "tap0"),
            ("link", "set", "tap0", "up"),
        ):
            done = _ip("-n", name, *args)
            if done.returncode != 0:
                pytest.skip(f"cannot set up tap0 in {name}: ip {' '.join(args)}: {done.stderr.strip()}")
        yield Netns(name, "tap0", HOST_ADDRESS, BOARD_ADDRESS)
    finally:
        _ip("netns", "del", name)
