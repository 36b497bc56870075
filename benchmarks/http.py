"""HTTP download speed: our file server beside ``python -m http.server`` and nginx, via curl.

Run: python benchmarks/http.py [--size-mib 1024] [--repeat 3]

nginx (Debian ``nginx-light``) runs in the foreground with a generated configuration on a
free port, when installed. Each server's download is checked once by SHA-256, then timed into /dev/null;
the memory our server process gains while serving is reported too.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# This file is called http.py: keep its directory off the import path, so ``http`` is the stdlib's.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]


def free_tcp_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def checksum(url: str) -> str:
    """SHA-256 of what curl downloads from ``url``."""
    curl = subprocess.Popen(["curl", "-sS", "-f", "--max-time", "600", url], stdout=subprocess.PIPE)
    assert curl.stdout is not None
    digest = hashlib.file_digest(curl.stdout, "sha256").hexdigest()
    if curl.wait() != 0:
        raise RuntimeError(f"curl failed on {url}")
    return digest


def download(url: str) -> float:
    """Seconds curl takes to fetch ``url`` into /dev/null."""
    started = time.perf_counter()
    subprocess.run(["curl", "-sS", "-f", "--max-time", "600", "-o", "/dev/null", url], check=True)
    return time.perf_counter() - started


def wait_until_serving(url: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while subprocess.run(["curl", "-s", "-f", "-o", "/dev/null", "--max-time", "1", url], check=False).returncode:
        if time.monotonic() > deadline:
            raise RuntimeError(f"nothing serves {url} within {timeout:g} s")
        time.sleep(0.05)  # polling a subprocess's readiness, not synchronising threads


NGINX_CONF = """
worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log;
events {{ worker_connections 64; }}
http {{
    access_log off;
    sendfile on;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    server {{ listen 127.0.0.1:{port}; root {root}; }}
}}
"""


def max_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    if shutil.which("curl") is None:
        print("curl is needed (Debian package curl)", file=sys.stderr)
        return 2

    with tempfile.TemporaryDirectory(prefix="http-bench-") as tmp:
        root = Path(tmp) / "root"
        root.mkdir()
        for path in (Path(tmp), root):
            os.chmod(path, 0o755)
        image = root / "image.bin"
        digest = hashlib.sha256()
        block = os.urandom(1 << 20)
        with image.open("wb") as file:
            for i in range(args.size_mib):
                chunk = block[i % 4096 :] + block[: i % 4096]
                digest.update(chunk)
                file.write(chunk)
        os.chmod(image, 0o644)
        expected = digest.hexdigest()
        size = image.stat().st_size

        from jumpstarter_drivers.http import HttpServer

        rss_before = max_rss_mib()
        ours = HttpServer(root_dir=str(root))
        ours.start()
        servers = {"ours": ours.get_url()}
        processes = []
        port = free_tcp_port()
        processes.append(
            subprocess.Popen(
                [sys.executable, "-m", "http.server", "-b", "127.0.0.1", "-d", str(root), str(port)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        servers["python http.server"] = f"http://127.0.0.1:{port}"
        nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
        if nginx:
            port = free_tcp_port()
            conf = Path(tmp) / "nginx.conf"
            conf.write_text(NGINX_CONF.format(tmp=tmp, port=port, root=root))
            processes.append(subprocess.Popen([nginx, "-c", str(conf), "-p", tmp], stderr=subprocess.DEVNULL))
            servers["nginx"] = f"http://127.0.0.1:{port}"
        try:
            for url in servers.values():
                wait_until_serving(f"{url}/{image.name}")
            for name, url in servers.items():
                if checksum(f"{url}/{image.name}") != expected:
                    raise RuntimeError(f"{name}: downloaded bytes differ")
            rates: dict[str, list[float]] = {name: [] for name in servers}
            for _ in range(args.repeat):
                for name, url in servers.items():
                    rates[name].append(size / download(f"{url}/{image.name}") / 1e6)
            print(f"HTTP GET of a {args.size_mib} MiB file with curl, best and median of {args.repeat} (MB/s)")
            print(f"  {'server':<22} {'best':>8} {'median':>8}")
            for name, values in rates.items():
                print(f"  {name:<22} {max(values):>8.0f} {statistics.median(values):>8.0f}")
            print(f"  peak RSS growth of this process while ours served: {max_rss_mib() - rss_before:.1f} MiB")
        finally:
            ours.close()
            for process in processes:
                process.terminate()
                process.wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
