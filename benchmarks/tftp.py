"""TFTP download speed: our server beside tftpd-hpa, same file, same client (curl), same run.

Run: python benchmarks/tftp.py [--size-mib 64] [--repeat 3]

tftpd-hpa (Debian ``tftpd-hpa``) runs in the foreground (``in.tftpd -L -s DIR -a 127.0.0.1:PORT``);
it drops privileges, so the served directory is world-readable. Each server's download is checked
by SHA-256 once per block size, then timed into /dev/null.
"""

from __future__ import annotations

import shutil
import socket
import statistics
import subprocess
import sys

from _served import IMAGE, checksum, download, free_port, options, served_image, wait_until_serving

from jumpstarter_drivers.core.processes import stop_process
from jumpstarter_drivers.tftp import Tftp


def main() -> int:
    args = options(__doc__, size_mib=64)
    hpa = shutil.which("in.tftpd")
    with served_image(args.size_mib, "tftp-bench-") as (root, expected):
        ours = Tftp(root_dir=str(root))
        ours.start()
        servers = {"ours": ours.get_port()}
        process = None
        try:
            if hpa:
                port = free_port(socket.SOCK_DGRAM)
                process = subprocess.Popen([hpa, "-L", "-s", str(root), "-a", f"127.0.0.1:{port}"])
                wait_until_serving(f"tftp://127.0.0.1:{port}")
                servers["tftpd-hpa"] = port
            print(f"TFTP, {args.size_mib} MiB file, curl client, best and median of {args.repeat} (MB/s)")
            print(f"  {'blksize':>8} {'ours best':>10} {'ours med':>9} {'hpa best':>10} {'hpa med':>9} {'ours/hpa':>9}")
            size = (root / IMAGE).stat().st_size
            for blksize in (512, 1468):
                block = ("--tftp-blksize", str(blksize))
                urls = {name: f"tftp://127.0.0.1:{port}/{IMAGE}" for name, port in servers.items()}
                for name, url in urls.items():
                    if checksum(url, *block) != expected:
                        raise RuntimeError(f"{name}: downloaded bytes differ at blksize {blksize}")
                rates: dict[str, list[float]] = {name: [] for name in urls}
                for _ in range(args.repeat):
                    for name, url in urls.items():
                        rates[name].append(size / download(url, *block) / 1e6)
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
                stop_process(process)
    return 0


if __name__ == "__main__":
    sys.exit(main())
