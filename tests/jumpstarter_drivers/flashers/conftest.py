"""Fixtures for flasher tests: the reference bundle, a real OCI registry on loopback, and a hostile HTTP server."""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import io
import json
import shutil
import socket
import subprocess
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from jumpstarter_drivers.core.processes import stop_process
from jumpstarter_drivers.flashers.testing import make_reference_bundle

REGISTRY = "/usr/bin/docker-registry"


@pytest.fixture
def reference_bundle(tmp_path: Path) -> Path:
    """The reference test bundle, as a directory."""
    return make_reference_bundle(tmp_path / "bundle")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Registry:
    host: str
    log: Path

    def blob_fetches(self, repository: str) -> int:
        """How many blob downloads of ``repository`` the registry has logged."""
        return self.log.read_text().count(f'"GET /v2/{repository}/blobs/')

    def push(self, directory: Path, reference: str) -> None:
        import oras.client

        client = oras.client.OrasClient(hostname=self.host, insecure=True)
        files = sorted(p.name for p in directory.iterdir())
        with pytest.MonkeyPatch.context() as mp:
            mp.chdir(directory)
            response = client.push(target=f"{self.host}/{reference}", files=files, quiet=True)
        assert response.status_code == 201, response.text

    def push_layers(self, reference: str, layers: list[tuple[str, str, bytes]]) -> None:
        """Push an artifact of hand-made ``(title, media type, blob)`` layers, with the registry's HTTP API
        (the way a hostile publisher would, bypassing what a client library checks)."""
        repository, tag = reference.rsplit(":", 1)
        base = f"http://{self.host}/v2/{repository}"

        def blob(data: bytes) -> dict:
            digest = "sha256:" + hashlib.sha256(data).hexdigest()
            start = requests.post(f"{base}/blobs/uploads/", timeout=10)
            assert start.status_code == 202, start.text
            location = start.headers["Location"]
            put = requests.put(location, params={"digest": digest}, data=data, timeout=10,
                               headers={"Content-Type": "application/octet-stream"})
            assert put.status_code == 201, put.text
            return {"digest": digest, "size": len(data)}

        manifest = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.unknown.config.v1+json", **blob(b"{}")},
            "layers": [{"mediaType": media_type, **blob(data),
                        "annotations": {"org.opencontainers.image.title": title}}
                       for title, media_type, data in layers],
        }
        put = requests.put(f"{base}/manifests/{tag}", data=json.dumps(manifest), timeout=10,
                           headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"})
        assert put.status_code == 201, put.text


def tar_bytes(members: list[tarfile.TarInfo | tuple[tarfile.TarInfo, bytes]], mode: str = "w:gz") -> bytes:
    """A tar archive (gzipped by default) of the given members, built by hand so it may hold anything."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode=mode) as tar:
        for member in members:
            info, data = member if isinstance(member, tuple) else (member, b"")
            if info.isfile():
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if info.isfile() else None)
    return out.getvalue()


def member(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    """A tar member header: a file (default), a directory, or a link to ``linkname``."""
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = kind, linkname, 0o755 if kind == tarfile.DIRTYPE else 0o644
    return info


@pytest.fixture
def oci_registry(tmp_path: Path) -> Iterator[Registry]:
    """A Debian ``docker-registry`` serving plain HTTP on a free loopback port."""
    if shutil.which(REGISTRY) is None:
        pytest.skip(f"{REGISTRY} not installed (Debian package docker-registry)")
    port = free_port()
    config = tmp_path / "registry.yml"
    config.write_text(
        "version: 0.1\nlog: {level: info}\n"
        f"storage: {{filesystem: {{rootdirectory: {tmp_path / 'registry'}}}}}\n"
        f"http: {{addr: '127.0.0.1:{port}'}}\n"
    )
    log = tmp_path / "registry.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([REGISTRY, "serve", str(config)], stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                if requests.get(f"http://127.0.0.1:{port}/v2/", timeout=1).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"docker-registry did not come up: {log.read_text()[-2000:]}")
            time.sleep(0.05)  # polling the registry's readiness, bounded by the deadline
        yield Registry(f"127.0.0.1:{port}", log)
    finally:
        stop_process(proc)


@dataclass
class Hostile:
    """A plain HTTP server on loopback whose replies are set per path: ``routes[path] = reply``, where
    a reply is :meth:`body`, :meth:`endless` or :meth:`drip`; unknown paths get 404."""

    url: str
    routes: dict[str, Callable[[http.server.BaseHTTPRequestHandler], None]]
    stopping: threading.Event
    #: A hostile reply ends on its own after this many seconds or bytes, so a test of old code ends too.
    give_up: float = 15.0
    most: int = 64 << 20
    #: Keep each connection open after a reply, then hang up on the next request it carries without
    #: answering it: a registry or proxy closing a kept-alive connection just as the client reuses it.
    drop_reused: bool = False

    @staticmethod
    def body(data: bytes) -> Callable:
        def reply(handler: http.server.BaseHTTPRequestHandler) -> None:
            handler.send_response(200)
            handler.send_header("Content-Length", str(len(data)))
            handler.end_headers()
            handler.wfile.write(data)
        return reply

    def endless(self) -> Callable:
        """Zeros, without a length, as fast as the peer takes them."""
        def reply(handler: http.server.BaseHTTPRequestHandler) -> None:
            handler.send_response(200)
            handler.send_header("Connection", "close")
            handler.end_headers()
            chunk, sent = bytes(1 << 16), 0
            while sent < self.most and not self.stopping.is_set():
                handler.wfile.write(chunk)
                sent += len(chunk)
        return reply

    def drip(self, data: bytes) -> Callable:
        """``data`` (announced whole) one byte every 0.1 s."""
        def reply(handler: http.server.BaseHTTPRequestHandler) -> None:
            handler.send_response(200)
            handler.send_header("Content-Length", str(len(data)))
            handler.end_headers()
            until = time.monotonic() + self.give_up
            for i in range(len(data)):
                if self.stopping.wait(0.1) or time.monotonic() > until:  # the drip's pace
                    return
                handler.wfile.write(data[i:i + 1])
                handler.wfile.flush()
        return reply


@pytest.fixture
def hostile_http() -> Iterator[Hostile]:
    """A :class:`Hostile` HTTP server; stopped (and its replies cut) at the end of the test."""
    hostile: Hostile

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        served = 0  # requests answered on this connection (one handler per connection)

        def do_GET(self) -> None:
            if hostile.drop_reused and self.served:
                self.close_connection = True
                return
            self.served += 1
            reply = hostile.routes.get(self.path.split("?", 1)[0])
            if reply is None:
                self.send_error(404)
                return
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the client gave up: fine
                reply(self)
            self.close_connection = not hostile.drop_reused

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    hostile = Hostile(f"http://127.0.0.1:{server.server_address[1]}", {}, threading.Event())
    thread = threading.Thread(target=server.serve_forever)
    thread.start()
    try:
        yield hostile
    finally:
        hostile.stopping.set()
        server.shutdown()
        server.server_close()
        thread.join(10)
