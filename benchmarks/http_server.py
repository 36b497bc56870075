"""HTTP download speed: our file server beside ``python -m http.server`` and nginx, via curl.

Run: python benchmarks/http_server.py [--size-mib 1024] [--repeat 3]

nginx (Debian ``nginx-light``) runs in the foreground with a generated configuration on a
free port, when installed. Each server's download is checked once by SHA-256, then timed into /dev/null;
the memory our server process gains while serving is reported too.
"""

from __future__ import annotations

import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys

from _served import IMAGE, checksum, download, free_port, options, served_image, wait_until_serving

from jumpstarter_drivers.core.processes import stop_process
from jumpstarter_drivers.http import HttpServer

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
    args = options(__doc__, size_mib=1024)
    with served_image(args.size_mib, "http-bench-") as (root, expected):
        size = (root / IMAGE).stat().st_size
        tmp = root.parent
        rss_before = max_rss_mib()
        ours = HttpServer(root_dir=str(root))
        ours.start()
        servers = {"ours": ours.get_url()}
        processes = []
        try:
            port = free_port(socket.SOCK_STREAM)
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
                port = free_port(socket.SOCK_STREAM)
                conf = tmp / "nginx.conf"
                conf.write_text(NGINX_CONF.format(tmp=tmp, port=port, root=root))
                processes.append(subprocess.Popen([nginx, "-c", str(conf), "-p", str(tmp)], stderr=subprocess.DEVNULL))
                servers["nginx"] = f"http://127.0.0.1:{port}"
            for url in servers.values():
                wait_until_serving(url)
            for name, url in servers.items():
                if checksum(f"{url}/{IMAGE}") != expected:
                    raise RuntimeError(f"{name}: downloaded bytes differ")
            rates: dict[str, list[float]] = {name: [] for name in servers}
            for _ in range(args.repeat):
                for name, url in servers.items():
                    rates[name].append(size / download(f"{url}/{IMAGE}") / 1e6)
            print(f"HTTP GET of a {args.size_mib} MiB file with curl, best and median of {args.repeat} (MB/s)")
            print(f"  {'server':<22} {'best':>8} {'median':>8}")
            for name, values in rates.items():
                print(f"  {name:<22} {max(values):>8.0f} {statistics.median(values):>8.0f}")
            print(f"  peak RSS growth of this process while ours served: {max_rss_mib() - rss_before:.1f} MiB")
        finally:
            ours.close()
            for process in processes:
                stop_process(process)
    return 0


if __name__ == "__main__":
    sys.exit(main())
