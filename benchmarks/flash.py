"""Flashing speed: a 64 MiB image to the virtual board and to the QEMU board, split by step.

Run: python benchmarks/flash.py [--size-mib 64] [--chunk-mib 16] [--tftp-blocksize N] [--tftp-windowsize 8]
     [--no-qemu]

Both boards are flashed with method ``uboot`` (chunks over TFTP, block writes, read-back CRC)
through a real session; every flash is checked byte for byte on the disk file before its time
counts. QEMU runs twice: with U-Boot's default of one TFTP block in flight, and with
``tftpwindowsize`` (RFC 7440; the flasher's ``tftp_windowsize``). Beside the steps: the raw rate of the same TFTP server to a plain client (tftpy, what the
virtual board uses), and the reference figure from the issue (QEMU's U-Boot fetching from a tftpy
server at 16 MiB/s).
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
from pathlib import Path

from jumpstarter_drivers.composite.driver import Composite, Proxy, resolve_refs
from jumpstarter_drivers.core import connect, serve
from jumpstarter_drivers.flashers.common import STEP_ORDER, FlashResult
from jumpstarter_drivers.flashers.driver import BaseFlasher
from jumpstarter_drivers.flashers.testing import make_reference_bundle
from jumpstarter_drivers.qemu.lab import (
    LabUnavailable,
    check_qemu,
    flasher_lab_config,
    serve_in_namespace,
    tap_namespace,
)
from jumpstarter_drivers.tftp import Tftp
from jumpstarter_drivers.uboot import UBoot
from jumpstarter_drivers.virtualboard import VirtualBoard

MIB = 1 << 20
REFERENCE_QEMU_TFTP = 16.0  # MiB/s, issue 5: Debian's U-Boot in QEMU from a tftpy server


def check_disk(disk: Path, image: Path) -> None:
    size = image.stat().st_size
    with disk.open("rb") as flashed, image.open("rb") as wanted:
        while data := wanted.read(MIB):
            if flashed.read(len(data)) != data:
                raise SystemExit(f"{disk} does not hold the image ({size} bytes)")


def virtual_board(image: Path, work: Path, chunk: int, blocksize: int | None) -> FlashResult:
    board = VirtualBoard(autoboot_delay=1, disk=str(work / "virtual-disk.img"), disk_size=image.stat().st_size + chunk)
    flasher = BaseFlasher(
        flasher_bundle=str(make_reference_bundle(work / "bundle")), cache_dir=str(work / "cache"),
        uboot_targets={"usd": "mmc 0"}, chunk_size=chunk, tftp_blocksize=blocksize,
        children={"serial": Proxy(ref="board.serial"), "power": Proxy(ref="board.power"),
                  "uboot": UBoot(power_off_time=0.1)},
    )
    root = Composite(children={"board": board, "flasher": flasher})
    resolve_refs(root)
    try:
        with serve(root) as client:
            client.flasher.http.storage.write_from_path(image.name, image, progress=lambda done, total: None)
            result = client.flasher.flash(image, method="uboot")
        check_disk(work / "virtual-disk.img", image)
        return result
    finally:
        root.close()


def qemu_board(image: Path, work: Path, chunk: int, blocksize: int | None, windowsize: int | None = None,
               ) -> FlashResult | str:
    try:
        check_qemu()
        with tap_namespace() as ns:
            lab = work / f"qemu-{windowsize or 1}"
            config = flasher_lab_config(ns, make_reference_bundle(lab / "bundle"), lab, image.stat().st_size + chunk, chunk)
            if blocksize:
                config["export"]["flasher"]["config"]["tftp_blocksize"] = blocksize
            if windowsize:
                config["export"]["flasher"]["config"]["tftp_windowsize"] = windowsize
            with serve_in_namespace(ns, config, lab) as socket, connect(socket) as client:
                client.flasher.http.storage.write_from_path(image.name, image, progress=lambda done, total: None)
                result = client.flasher.flash(image, method="uboot")
        check_disk(lab / "disk.img", image)
        return result
    except LabUnavailable as exc:
        return str(exc)


def raw_tftp(image: Path, work: Path, blocksize: int) -> float:
    """Seconds for tftpy to fetch the image from our TFTP server on loopback."""
    import tftpy

    root = work / "raw-tftp"
    root.mkdir()
    os.link(image, root / image.name)
    server = Tftp(root_dir=str(root))
    server.start()
    try:
        sink = io.BytesIO()
        started = time.perf_counter()
        tftpy.TftpClient("127.0.0.1", server.get_port(), options={"blksize": blocksize}).download(image.name, sink)
        elapsed = time.perf_counter() - started
        if sink.getbuffer().nbytes != image.stat().st_size:
            raise SystemExit("raw TFTP download came back short")
        return elapsed
    finally:
        server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=64)
    parser.add_argument("--chunk-mib", type=int, default=16)
    parser.add_argument("--tftp-blocksize", type=int, default=None, help="U-Boot's tftpblocksize (default 1468)")
    parser.add_argument("--tftp-windowsize", type=int, default=8,
                        help="U-Boot's tftpwindowsize (RFC 7440) for the second QEMU run (default 8)")
    parser.add_argument("--no-qemu", action="store_true")
    args = parser.parse_args()
    size, chunk = args.size_mib * MIB, args.chunk_mib * MIB
    with tempfile.TemporaryDirectory(prefix="flash-bench-") as tmp:
        work = Path(tmp)
        image = work / "image.raw"
        with image.open("wb") as f:
            for _ in range(args.size_mib):
                f.write(os.urandom(MIB))
        print(f"flashing a {args.size_mib} MiB image with method uboot, {args.chunk_mib} MiB chunks, "
              f"tftpblocksize {args.tftp_blocksize or 1468}", flush=True)
        results: dict[str, FlashResult | str] = {"virtual board": virtual_board(image, work, chunk, args.tftp_blocksize)}
        window = f"QEMU, window {args.tftp_windowsize}"
        if args.no_qemu:
            results["QEMU board"] = results[window] = "skipped (--no-qemu)"
        else:
            results["QEMU board"] = qemu_board(image, work, chunk, args.tftp_blocksize)
            results[window] = qemu_board(image, work, chunk, args.tftp_blocksize, args.tftp_windowsize)
        raw = raw_tftp(image, work, args.tftp_blocksize or 1468)

    print(f"\n{'step (s)':<12}" + "".join(f"{name:>18}" for name in results))
    for step in (s for s in STEP_ORDER if s != "boot linux"):
        cells = [f"{r.steps.get(step, 0.0):18.2f}" if isinstance(r, FlashResult) else f"{'-':>18}" for r in results.values()]
        print(f"{step:<12}" + "".join(cells))
    rates = [f"{size / MIB / r.steps['load']:18.1f}" if isinstance(r, FlashResult) else f"{'-':>18}"
             for r in results.values()]
    print(f"{'load MiB/s':<12}" + "".join(rates))
    print(f"\nraw TFTP, tftpy client from our server on loopback: {size / MIB / raw:.1f} MiB/s ({raw:.2f} s)")
    print(f"reference (issue 5): QEMU's U-Boot from a tftpy server: {REFERENCE_QEMU_TFTP:.1f} MiB/s")
    for name, result in results.items():
        if isinstance(result, str):
            print(f"{name}: {result}", file=sys.stderr)


if __name__ == "__main__":
    main()
