"""A QEMU lab on a tap network: a namespace with a tap device, and an exporter serving inside it.

QEMU's user-mode network answers TFTP on 10.0.2.2 itself, so to let U-Boot reach *our* TFTP
server the board gets a tap device in a network namespace of its own, and the exporter (TFTP and
HTTP servers, flasher, QEMU) runs inside that namespace, as on a lab host. Its unix socket is a
file, so a test or script outside the namespace connects to it as to any local exporter.
Needs root, ``/dev/net/tun`` and iproute2; :class:`LabUnavailable` says what is missing.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..core.errors import DriverError, JumpstarterError
from ..core.processes import stop_process
from .driver import DEFAULT_BIOS
from .linux import PASSWORD

logger = logging.getLogger(__name__)

HOST_ADDRESS = "10.0.3.1"
BOARD_ADDRESS = "10.0.3.2"
NETMASK = "255.255.255.0"


class LabUnavailable(JumpstarterError):
    """This machine cannot host the QEMU lab (no QEMU, no U-Boot, no root, no tap devices)."""


@dataclass(frozen=True)
class Namespace:
    """A network namespace holding ``tap`` at ``host``; the board takes ``board``."""

    name: str
    tap: str = "tap0"
    host: str = HOST_ADDRESS
    board: str = BOARD_ADDRESS

    def exec(self, *argv: str) -> list[str]:
        """``argv`` run inside the namespace."""
        return ["ip", "netns", "exec", self.name, *argv]


def check_qemu() -> None:
    """Raise :class:`LabUnavailable` unless QEMU and Debian's U-Boot for it are installed."""
    if shutil.which("qemu-system-aarch64") is None:
        raise LabUnavailable("qemu-system-aarch64 is not installed (Debian package qemu-system-arm)")
    if not Path(DEFAULT_BIOS).is_file():
        raise LabUnavailable(f"{DEFAULT_BIOS} is missing (Debian package u-boot-qemu)")


def _ip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10, check=False)


@contextlib.contextmanager
def tap_namespace() -> Iterator[Namespace]:
    """A fresh namespace with ``lo`` up and ``tap0`` at 10.0.3.1/24; deleted on exit."""
    if shutil.which("ip") is None:
        raise LabUnavailable("iproute2 is not installed (the ip command)")
    if os.geteuid() != 0 or not os.path.exists("/dev/net/tun"):
        raise LabUnavailable("a network namespace with a tap device needs root and /dev/net/tun")
    ns = Namespace(f"jt-{uuid.uuid4().hex[:8]}")
    created = _ip("netns", "add", ns.name)
    if created.returncode != 0:
        raise LabUnavailable(f"cannot create a network namespace: {created.stderr.strip()}")
    try:
        for args in (
            ("link", "set", "lo", "up"),
            ("tuntap", "add", "dev", ns.tap, "mode", "tap"),
            ("addr", "add", f"{ns.host}/24", "dev", ns.tap),
            ("link", "set", ns.tap, "up"),
        ):
            done = _ip("-n", ns.name, *args)
            if done.returncode != 0:
                raise LabUnavailable(f"cannot set up {ns.tap} in {ns.name}: ip {' '.join(args)}: {done.stderr.strip()}")
        yield ns
    finally:
        deleted = _ip("netns", "del", ns.name)
        if deleted.returncode != 0:
            logger.warning("could not delete network namespace %s (remove it with 'ip netns del %s'): %s",
                           ns.name, ns.name, deleted.stderr.strip())


def flasher_lab_config(ns: Namespace, bundle: str | os.PathLike, workdir: str | os.PathLike,
                       disk_size: int = 256 << 20, chunk_size: int = 16 << 20) -> dict[str, Any]:
    """Exporter config: a QEMU board on the namespace's tap and a flasher writing ``virtio 0``."""
    work = Path(workdir)
    return {"export": {
        "board": {"type": "jumpstarter_drivers.qemu.driver.QemuBoard",
                  "config": {"network": "tap", "tap": ns.tap, "disk": str(work / "disk.img"), "disk_size": disk_size}},
        "flasher": {
            "type": "BaseFlasher",
            "config": {"flasher_bundle": str(bundle), "cache_dir": str(work / "cache"),
                       "uboot_targets": {"usd": "virtio 0"}, "chunk_size": chunk_size},
            "children": {
                "serial": {"ref": "board.serial"},
                "power": {"ref": "board.power"},
                "tftp": {"type": "Tftp", "config": {"root_dir": str(work / "tftp"), "host": ns.host, "port": 69}},
                "http": {"type": "HttpServer", "config": {"root_dir": str(work / "http"), "host": ns.host}},
                "uboot": {"type": "UBoot", "config": {"network": "static", "ipaddr": ns.board, "netmask": NETMASK,
                                                      "serverip": ns.host, "power_off_time": 0.2}},
            },
        },
    }}


def linux_lab_config(ns: Namespace, bundle: str | os.PathLike, workdir: str | os.PathLike,
                     disk_size: int = 64 << 20) -> dict[str, Any]:
    """:func:`flasher_lab_config` plus what a test of the board's Linux uses: a ``shell`` on its
    console, a boot ``strategy`` and ``network`` (the board's HTTP port 80, reached from the namespace)."""
    config = flasher_lab_config(ns, bundle, workdir, disk_size)
    flasher = config["export"]["flasher"]
    flasher["config"].update(tftp_windowsize=8, login_timeout=300.0)
    flasher["children"]["uboot"]["config"]["boot_timeout"] = 120.0
    config["export"].update({
        "shell": {"type": "Shell", "config": {"password": PASSWORD, "login_timeout": 60.0},
                  "children": {"serial": {"ref": "board.serial"}}},
        "strategy": {"type": "BootStrategy", "config": {"retries": 1, "step_timeout": 900.0},
                     "children": {"flasher": {"ref": "flasher"}, "shell": {"ref": "shell"}}},
        "network": {"type": "Network", "config": {"host": ns.board, "ports": [80]}},
    })
    return config


@contextlib.contextmanager
def serve_in_namespace(ns: Namespace, config: dict[str, Any], workdir: str | os.PathLike,
                       timeout: float = 30.0) -> Iterator[Path]:
    """Run ``jumpstarter serve`` on ``config`` inside the namespace; yield its unix socket path.

    The exporter's log is ``workdir/exporter.log``; it is stopped (SIGTERM, then SIGKILL) on exit.
    An exporter that exits or does not listen within ``timeout`` is a :class:`DriverError` with
    its log's tail (a fault of the lab or its config, not a machine that cannot host the lab).
    """
    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    (work / "lab.yaml").write_text(yaml.safe_dump(config))
    socket = work / "exporter.sock"
    with (work / "exporter.log").open("wb") as log:
        exporter = subprocess.Popen(
            ns.exec(sys.executable, "-m", "jumpstarter_drivers.cli", "serve", str(work / "lab.yaml"),
                    "--unix", str(socket), "--log-level", "info"),
            stdout=log, stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + timeout
        while not socket.exists():
            if exporter.poll() is not None or time.monotonic() > deadline:
                tail = (work / "exporter.log").read_text(errors="replace")[-3000:]
                what = f"exited with status {exporter.returncode}" if exporter.returncode is not None else (
                    f"did not listen within {timeout:g} s")
                raise DriverError(f"the exporter in {ns.name} {what}; its log ({work / 'exporter.log'}) ends:\n{tail}")
            time.sleep(0.05)  # polling for the socket file, bounded by the deadline
        yield socket
    finally:
        stop_process(exporter, 20, "the namespaced exporter")
