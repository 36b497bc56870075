"""Storage transfer speed and exporter memory: a 1 GiB file up and down through resources.

Run: python benchmarks/storage.py [--size-mib 1024]

The exporter (a Session hosting a Storage driver on a unix socket) runs in a child process, so
its peak RSS (VmHWM) is its own; the client here uploads with ``write_from_path`` and downloads
with ``read_into_path``. Both copies are checked by SHA-256. In the same run, Jumpstarter 0.9.0
moves the same file through its own resources (its session in a child process, a driver that
writes the resource to a file and reads a file into one, ``benchmarks/_jumpstarter.py``).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import select
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from jumpstarter_drivers.core import connect
from jumpstarter_drivers.core.processes import stop_process

EXPORTER = """
import sys
from jumpstarter_drivers.core import Session
from jumpstarter_drivers.storage import Storage

with Session(root_device=Storage(root_dir=sys.argv[1])) as session, session.serve_unix(sys.argv[2]):
    print("ready", flush=True)
    sys.stdin.read()
"""


def memory_mib(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM (peak) of a process, in MiB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) / 1024
    return fields


def sha256(path: Path) -> str:
    with path.open("rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


def jumpstarter_figures(source: Path, tmp: Path, expected: str) -> dict[str, float]:
    """Seconds Jumpstarter 0.9.0 takes to move ``source`` up and back down; empty when it is not installed."""
    sys.path.insert(0, str(Path(__file__).parent))
    try:
        import _jumpstarter
    except ImportError:
        return {}
    uploaded, back = tmp / "jumpstarter-upload.bin", tmp / "jumpstarter-back.bin"
    with _jumpstarter.served_process() as client:
        upload = _jumpstarter.resource_upload(client, 0, 0, "write_file", str(uploaded), path=source)
        download = _jumpstarter.resource_download(client, 0, 0, "read_file", str(uploaded), path=back)
    if sha256(uploaded) != expected or sha256(back) != expected:
        raise RuntimeError("Jumpstarter's copies differ")
    return {"upload": upload, "download": download}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=1024)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="storage-bench-") as tmp:
        source = Path(tmp) / "image.bin"
        block = os.urandom(1 << 20)
        with source.open("wb") as file:
            for i in range(args.size_mib):
                file.write(block[i % 4096 :] + block[: i % 4096])
        expected = sha256(source)
        size = source.stat().st_size
        socket_path = Path(tmp) / "exporter.sock"
        exporter = subprocess.Popen(
            [sys.executable, "-c", EXPORTER, str(Path(tmp) / "root"), str(socket_path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert exporter.stdout is not None
            if not select.select([exporter.stdout], [], [], 30)[0] or exporter.stdout.readline().strip() != "ready":
                raise RuntimeError("the exporter process did not start within 30 s")
            with connect(socket_path) as client:
                idle = memory_mib(exporter.pid)
                started = time.perf_counter()
                client.write_from_path("image.bin", source, progress=lambda done, total: None)
                upload = time.perf_counter() - started
                after_upload = memory_mib(exporter.pid)
                if client.hash("image.bin") != expected:
                    raise RuntimeError("the uploaded copy differs")
                back = Path(tmp) / "back.bin"
                started = time.perf_counter()
                client.read_into_path("image.bin", back, progress=lambda done, total: None)
                download = time.perf_counter() - started
                after_download = memory_mib(exporter.pid)
                if sha256(back) != expected:
                    raise RuntimeError("the downloaded copy differs")
        finally:
            if exporter.stdin is not None:
                exporter.stdin.close()
            try:
                exporter.wait(30)
            except subprocess.TimeoutExpired:
                stop_process(exporter)
            if exporter.stdout is not None:
                exporter.stdout.close()

        theirs = jumpstarter_figures(source, Path(tmp), expected)

    print(f"Storage through resources, {args.size_mib} MiB file, exporter in its own process")
    print(f"  {'':<28} {'ours':>12} {'Jumpstarter 0.9.0 (same run)':>30}")
    for name, seconds, key in (("upload (write_from_path)", upload, "upload"), ("download (read_into_path)", download, "download")):
        baseline = f"{size / theirs[key] / 1e6:.0f} MB/s ({theirs[key] / seconds:.1f}x)" if key in theirs else "not installed"
        print(f"  {name:<28} {size / seconds / 1e6:>8.0f} MB/s {baseline:>30}")
    print(f"  {'exporter RSS idle':<28} {idle['VmRSS']:>9.0f} MiB")
    print(f"  {'exporter peak RSS, upload':<28} {after_upload['VmHWM']:>9.0f} MiB")
    print(f"  {'exporter peak RSS, download':<28} {after_download['VmHWM']:>9.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
