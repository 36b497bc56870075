"""`jumpstarter serve` hosting a flasher and storage, used the way a hostile or careless client would."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from jumpstarter_drivers.cli.process import ServeFailed, ServeProcess
from jumpstarter_drivers.core.access import connect
from jumpstarter_drivers.core.errors import DriverError, DriverInvalidArgument, ExporterUnreachable
from jumpstarter_drivers.flashers.testing import make_renamed_bundle_archive

LAB = """\
export:
  board:
    type: VirtualBoard
  flasher:
    type: VirtualFlasher
    config: {{tftp_dir: {root}/tftp, http_dir: {root}/http, cache_dir: {root}/cache}}
    children:
      serial: {{ref: board.serial}}
      power: {{ref: board.power}}
  storage:
    type: Storage
    config: {{root_dir: {root}/files}}
"""


@pytest.fixture
def lab_file(tmp_path: Path) -> Path:
    """A virtual board with its flasher, and a storage, all under ``tmp_path/lab``."""
    path = tmp_path / "lab.yaml"
    path.write_text(LAB.format(root=tmp_path / "lab"))
    return path


def test_a_client_cannot_read_host_files_through_the_flasher(lab_file: Path, tmp_path: Path) -> None:
    with ServeProcess(lab_file) as lab, connect(lab.address) as client:
        flasher = client.flasher
        flasher.http.storage.write_bytes("evil/manifest.yaml", b"spec: {kernel: {file: /etc/hostname, address: '0x1'}}\n")
        with pytest.raises(DriverError, match="names '/etc/hostname', which leads out of the bundle") as manifest:
            flasher.setup_flasher_bundle("evil")
        with pytest.raises(DriverInvalidArgument, match="'/etc' is not allowed here"):
            flasher.setup_flasher_bundle("/etc")
        with pytest.raises(DriverError, match="no file 'ghost' in the storage root") as missing:
            client.storage.stat("ghost")
        assert str(tmp_path) not in str(manifest.value) + str(missing.value), "an error names the exporter's paths"
        assert not flasher.tftp.storage.exists("hostname")
        assert flasher.get_kernel_filename() == "kernel"


def test_a_client_bundle_ends_with_its_session(lab_file: Path, tmp_path: Path) -> None:
    archive = make_renamed_bundle_archive(tmp_path)
    with ServeProcess(lab_file) as lab:
        with connect(lab.address) as first:
            first.flasher.http.storage.write_from_path("mine.tar.gz", archive)
            first.flasher.setup_flasher_bundle("mine.tar.gz")
            assert first.flasher.get_kernel_filename() == "vmlinuz"
            first.end_session()
        with connect(lab.address) as later:
            assert later.flasher.get_kernel_filename() == "kernel"


def test_a_partial_upload_of_a_killed_exporter_is_removed_at_restart(lab_file: Path, tmp_path: Path) -> None:
    files = tmp_path / "lab" / "files"
    failures: list[BaseException] = []
    with (
        ServeProcess(lab_file) as lab,
        connect(lab.address) as client,
        client.storage.resource() as (handle, stream),
    ):
        stream.send(b"x" * (1 << 20))

        def upload() -> None:  # waits for the rest of the stream, which never comes
            try:
                client.storage.call("write_from_resource", "big.img", handle, 8 << 20)
            except (DriverError, ExporterUnreachable) as exc:
                failures.append(exc)

        uploader = threading.Thread(target=upload)
        uploader.start()
        try:
            _wait_for(lambda: list(files.glob(".big.img.*.part")), 20)
        finally:
            lab.stop(signal.SIGKILL)
            uploader.join(20)
    assert failures and not uploader.is_alive(), "the upload ends once the exporter is gone"
    partial = list(files.glob(".big.img.*.part"))
    assert partial, "SIGKILL left the partial file behind"
    with ServeProcess(lab_file):
        assert not partial[0].exists()
        assert not (files / "big.img").exists()


def _wait_for(condition: Callable[[], object], timeout: float) -> None:
    """Poll ``condition`` until it is true; ``AssertionError`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the partial file did not appear"
        time.sleep(0.02)  # polling a file the exporter writes, bounded by the deadline


@pytest.mark.parametrize(("text", "message"), [
    ("export:\n  a: {type: MockPower}\nexport:\n  b: {type: MockPower}\n", "line 3, column 1: duplicate key 'export'"),
    ("export:\n  a: {type: Storage, config: {root_dir: /}}\n", "root_dir '/' is /, a system directory"),
    ("export:\n  a: {type: HttpServer, config: {root_dir: ROOT, host: no-such-host.invalid}}\n",
     "host 'no-such-host.invalid' does not resolve"),
])
def test_serve_refuses_a_careless_exporter_file_in_one_line(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "lab.yaml"
    path.write_text(text.replace("ROOT", str(tmp_path / "www")))
    with pytest.raises(ServeFailed, match=message) as excinfo, ServeProcess(path):
        pass
    assert "Traceback" not in str(excinfo.value)
