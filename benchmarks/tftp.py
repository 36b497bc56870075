"""TFTP download speed: our server beside tftpd-hpa, same file, same client (curl), same run.

Run: python benchmarks/tftp.py [--size-mib 64] [--repeat 3]

tftpd-hpa (Debian ``tftpd-hpa``) runs in the foreground (``in.tftpd -L -s DIR -a 127.0.0.1:PORT``);
it drops privileges, so the served directory is made world-readable. Every download is checked
byte for byte (SHA-256) before its time counts.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from jumpstarter_drivers.tftp import Tftp


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def fetch(port: int, name: str, blksize: int, out: Path) -> float:
    """Seconds curl takes to download ``name``; raises if curl fails."""
    started = time.perf_counter()
    subprocess.run(
        [
            "curl",
            "-sS",
            "--max-time",
            "300",
            "--tftp-blksize",
            str(blksize),
            "-o",
            str(out),
            f"tftp://127.0.0.1:{port}/{name}",
        ],
        check=True,
    )
    return time.perf_counter() - started


def sha256(path: Path) -> str:
    with path.open("rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


def wait_until_serving(port: int, probe: Path, out: Path, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        result = subprocess.run(
            ["curl", "-s", "--max-time", "1", "-o", str(out), f"tftp://127.0.0.1:{port}/{probe.name}"], check=False
        )
        if result.returncode == 0 and out.read_bytes() == probe.read_bytes():
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"tftpd-hpa did not serve on port {port} within {timeout:g} s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    if shutil.which("curl") is None:
        print("curl is needed (Debian package curl)", file=sys.stderr)
        return 2
    hpa = shutil.which("in.tftpd")

    with tempfile.TemporaryDirectory(prefix="tftp-bench-") as tmp:
        root = Path(tmp) / "root"
        root.mkdir()
        os.chmod(tmp, 0o755)
        os.chmod(root, 0o755)
        image = root / "image.bin"
        with image.open("wb") as file:
            for _ in range(args.size_mib):
                file.write(os.urandom(1 << 20))
        (root / "probe").write_bytes(b"probe")
        for path in (image, root / "probe"):
            os.chmod(path, 0o644)
        expected = sha256(image)
        out = Path(tmp) / "out.bin"

        ours = Tftp(root_dir=str(root))
        ours.start()
        servers = {"ours": ours.get_port()}
        process = None
        if hpa:
            port = free_udp_port()
            process = subprocess.Popen([hpa, "-L", "-s", str(root), "-a", f"127.0.0.1:{port}"])
            wait_until_serving(port, root / "probe", Path(tmp) / "probe.out")
            servers["tftpd-hpa"] = port
        try:
            print(f"TFTP, {args.size_mib} MiB file, curl client, best and median of {args.repeat} (MB/s)")
            print(f"  {'blksize':>8} {'ours best':>10} {'ours med':>9} {'hpa best':>10} {'hpa med':>9} {'ours/hpa':>9}")
            size = image.stat().st_size
            for blksize in (512, 1468):
                rates: dict[str, list[float]] = {}
                for _ in range(args.repeat):
                    for name, port in servers.items():
                        seconds = fetch(port, image.name, blksize, out)
                        if sha256(out) != expected:
                            raise RuntimeError(f"{name}: downloaded bytes differ at blksize {blksize}")
                        rates.setdefault(name, []).append(size / seconds / 1e6)
                ours_best, ours_med = max(rates["ours"]), statistics.median(rates["ours"])
                if "tftpd-hpa" in rates:
                    hpa_best, hpa_med = max(rates["tftpd-hpa"]), statistics.median(rates["tftpd-hpa"])
                    print(
                        f"  {blksize:>8} {ours_best:>10.1f} {ours_med:>9.1f} {hpa_best:>10.1f} {hpa_med:>9.1f}"
                        f" {ours_med / hpa_med:>8.2f}x"
                    )
                else:
                    print(f"  {blksize:>8} {ours_best:>10.1f} {ours_med:>9.1f} {'(tftpd-hpa not installed)':>30}")
        finally:
            ours.close()
            if process is not None:
                process.terminate()
                process.wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
