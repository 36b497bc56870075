"""What the TFTP and HTTP download benchmarks share: options, a served image, curl as the client."""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from jumpstarter_drivers.core.processes import stop_process

IMAGE = "image.bin"
#: A small file beside the image: fetched to learn that a server is up.
PROBE = "probe"


def options(doc: str, size_mib: int) -> argparse.Namespace:
    """``--size-mib`` and ``--repeat``; exits with a message when curl (the client) is missing."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=size_mib)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    if shutil.which("curl") is None:
        sys.exit("curl is needed (Debian package curl)")
    return args


@contextlib.contextmanager
def served_image(size_mib: int, prefix: str) -> Iterator[tuple[Path, str]]:
    """A temporary root holding ``image.bin`` of ``size_mib`` MiB and a small ``probe``; yields the root and the image's SHA-256.

    Everything is world-readable, for servers that drop privileges (tftpd-hpa, nginx workers).
    """
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        root = Path(tmp) / "root"
        root.mkdir()
        for path in (Path(tmp), root):
            os.chmod(path, 0o755)
        digest = hashlib.sha256()
        block = os.urandom(1 << 20)
        with (root / IMAGE).open("wb") as file:
            for i in range(size_mib):
                chunk = block[i % 4096 :] + block[: i % 4096]
                digest.update(chunk)
                file.write(chunk)
        (root / PROBE).write_bytes(b"probe")
        for name in (IMAGE, PROBE):
            os.chmod(root / name, 0o644)
        yield root, digest.hexdigest()


def free_port(kind: socket.SocketKind) -> int:
    """A port of ``kind`` (``SOCK_STREAM`` or ``SOCK_DGRAM``) free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def checksum(url: str, *curl_options: str) -> str:
    """SHA-256 of what curl downloads from ``url``."""
    curl = subprocess.Popen(["curl", "-sS", "-f", "--max-time", "600", *curl_options, url], stdout=subprocess.PIPE)
    assert curl.stdout is not None
    try:
        with curl.stdout:
            digest = hashlib.file_digest(curl.stdout, "sha256").hexdigest()
        if curl.wait(30) != 0:
            raise RuntimeError(f"curl failed on {url}")
    finally:
        stop_process(curl)
    return digest


def download(url: str, *curl_options: str) -> float:
    """Seconds curl takes to fetch ``url`` into /dev/null."""
    started = time.perf_counter()
    subprocess.run(["curl", "-sS", "-f", "--max-time", "600", *curl_options, "-o", "/dev/null", url], check=True)
    return time.perf_counter() - started


def wait_until_serving(base_url: str, timeout: float = 10.0) -> None:
    """Poll the probe under ``base_url`` with curl until it downloads; ``RuntimeError`` after ``timeout`` seconds."""
    url = f"{base_url}/{PROBE}"
    deadline = time.monotonic() + timeout
    while subprocess.run(["curl", "-s", "-f", "-o", "/dev/null", "--max-time", "1", url], check=False).returncode:
        if time.monotonic() > deadline:
            raise RuntimeError(f"nothing serves {url} within {timeout:g} s")
        time.sleep(0.05)  # polling a subprocess's readiness, not synchronising threads
