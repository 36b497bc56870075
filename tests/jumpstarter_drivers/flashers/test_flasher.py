"""BaseFlasher with the reference bundle, flashing the virtual board end to end."""

from __future__ import annotations

import functools
import http.server
import logging
import os
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from jumpstarter_drivers.composite.driver import Composite, Proxy, resolve_refs
from jumpstarter_drivers.core import serve
from jumpstarter_drivers.core.access import connect
from jumpstarter_drivers.core.errors import ConfigurationError, DriverError, DriverInvalidArgument
from jumpstarter_drivers.flashers.client import FlasherClient
from jumpstarter_drivers.flashers.driver import BaseFlasher
from jumpstarter_drivers.flashers.testing import make_reference_bundle
from jumpstarter_drivers.power import MockPower
from jumpstarter_drivers.pyserial.driver import PySerial
from jumpstarter_drivers.uboot import UBoot
from jumpstarter_drivers.virtualboard import VirtualBoard

from .conftest import Hostile


def make_lab(tmp_path: Path, bundle: Path, **flasher: object) -> Composite:
    board = VirtualBoard(autoboot_delay=1, disk=str(tmp_path / "disk.img"), disk_size=8 << 20)
    config = {"flasher_bundle": str(bundle), "cache_dir": str(tmp_path / "cache"),
              "uboot_targets": {"usd": "mmc 0"}, "chunk_size": 1 << 20} | flasher
    children = {
        "serial": Proxy(ref="board.serial"),
        "power": Proxy(ref="board.power"),
        "uboot": UBoot(boot_timeout=10, power_off_time=0),
    }
    root = Composite(children={"board": board, "flasher": BaseFlasher(children=children, **config)})
    resolve_refs(root)
    return root


@pytest.fixture
def lab(tmp_path: Path, reference_bundle: Path) -> Iterator[tuple[Composite, object]]:
    root = make_lab(tmp_path, reference_bundle)
    try:
        with serve(root) as client:
            yield root, client
    finally:
        root.close()


@pytest.mark.parametrize("missing", ["serial", "power"])
def test_missing_child_is_named(tmp_path: Path, reference_bundle: Path, missing: str) -> None:
    children = {"serial": PySerial(url="loop://"), "power": MockPower()}
    del children[missing]
    with pytest.raises(ConfigurationError, match=f"BaseFlasher: missing required child '{missing}'"):
        BaseFlasher(flasher_bundle=str(reference_bundle), children=children)


def test_bad_uboot_target_is_a_configuration_error(reference_bundle: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"uboot_targets.usd.*'sdcard' is not a U-Boot block device"):
        BaseFlasher(flasher_bundle=str(reference_bundle), uboot_targets={"usd": "sdcard"},
                    children={"serial": PySerial(url="loop://"), "power": MockPower()})


def test_servers_and_uboot_children_are_created(lab) -> None:
    _, client = lab
    assert isinstance(client.flasher, FlasherClient)
    assert set(client.flasher.children) == {"serial", "power", "uboot", "tftp", "http"}
    assert set(client.flasher.tftp.children) == {"storage"} and set(client.flasher.http.children) == {"storage"}


def test_getters_with_the_reference_bundle(lab) -> None:
    _, client = lab
    flasher = client.flasher
    assert flasher.manifest.spec.kernel.file == "data/kernel"
    assert flasher.get_kernel_filename() == "kernel"
    assert flasher.get_initram_filename() == "initramfs"
    assert flasher.get_dtb_filename() == "test-dtb.dtb"
    assert flasher.get_kernel_address() == "0x82000000"
    assert flasher.get_initram_address() == "0x83000000"
    assert flasher.get_dtb_address() == "0x84000000"
    assert flasher.get_bootcmd() == "booti 0x82000000 - 0x84000000"
    assert flasher.get_default_target() == "usd"
    assert "kind: FlashBundleManifest" in flasher.get_flasher_manifest_yaml()


def test_staging_puts_files_in_the_tftp_root(lab) -> None:
    _, client = lab
    flasher = client.flasher
    flasher.setup_flasher_bundle()
    storage = flasher.tftp.storage
    assert storage.read_bytes("kernel") == b"\x00" * 1024
    assert storage.read_bytes("initramfs") == b"\x00" * 2048
    assert storage.read_bytes("test-dtb.dtb") == b"\x00" * 3072
    flasher.use_dtb_variant("alternate")
    flasher.setup_flasher_bundle()
    assert storage.read_bytes("alternate.dtb") == b"\x00" * 4096


def test_variant_switching_back_and_forth(lab) -> None:
    _, client = lab
    flasher = client.flasher
    for _ in range(2):
        flasher.use_dtb_variant("alternate")
        assert (flasher.get_dtb_filename(), flasher.get_bootcmd()) == ("alternate.dtb", "booti 0x82000000 - 0x84000000")
        flasher.use_dtb_variant("othercmd")
        assert (flasher.get_dtb_filename(), flasher.get_bootcmd()) == ("test-dtb.dtb", "bootm")
        flasher.use_dtb_variant("test-dtb")
        assert (flasher.get_dtb_filename(), flasher.get_bootcmd()) == ("test-dtb.dtb", "booti 0x82000000 - 0x84000000")


def test_unknown_variant_lists_the_variants(lab) -> None:
    _, client = lab
    with pytest.raises(DriverInvalidArgument, match="'nosuch' is not in the bundle; available variants: test-dtb, alternate, othercmd"):
        client.flasher.use_dtb_variant("nosuch")
    assert client.flasher.get_dtb_filename() == "test-dtb.dtb"


def test_configured_unknown_variant_fails_on_first_use(tmp_path: Path, reference_bundle: Path) -> None:
    root = make_lab(tmp_path, reference_bundle, variant="nosuch")
    try:
        with pytest.raises(ValueError, match="available variants: test-dtb, alternate, othercmd"):
            root.children["flasher"].get_dtb_filename()
    finally:
        root.close()


def image_file(tmp_path: Path, size: int) -> Path:
    path = tmp_path / "image.raw"
    path.write_bytes(os.urandom(size))
    return path


def test_flash_with_uboot_writes_the_disk(lab, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root, client = lab
    image = image_file(tmp_path, 3 * (1 << 20) + 100)
    result = client.flasher.flash(image, method="uboot")
    assert (result.target, result.method, result.size) == ("usd", "uboot", image.stat().st_size)
    assert {"stage", "boot", "network", "load", "write", "verify", "total"} <= set(result.steps)
    disk = Path(root.children["board"].disk).read_bytes()
    assert disk[: image.stat().st_size] == image.read_bytes()
    assert not root.children["board"].powered, "the board is left powered off"
    with caplog.at_level(logging.INFO):
        client.flasher.flash(image, target="mmc 0")
    assert "already on the exporter" in caplog.text


def test_flash_retries_a_transient_tftp_timeout(lab, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root, client = lab
    image = image_file(tmp_path, 200_000)
    client.board.set_faults(tftp_timeout_once=True)
    with caplog.at_level(logging.WARNING):
        client.flasher.flash(image)
    assert "transient failure, retrying" in caplog.text
    assert Path(root.children["board"].disk).read_bytes()[:200_000] == image.read_bytes()


@pytest.mark.parametrize(("command", "step"), [("mmc", "select mmc 0"), ("tftpboot", "tftpboot .flash-chunk-00000")])
def test_panic_during_flash_names_the_step_and_is_not_retried(lab, tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                               command: str, step: str) -> None:
    root, client = lab
    client.board.set_faults(panic_on=command)
    with caplog.at_level(logging.WARNING), pytest.raises(
        DriverError, match=rf"(?s)step '{step}' failed: the board failed.*console tail.*Synchronous Abort"
    ):
        client.flasher.flash(image_file(tmp_path, 4096))
    assert "retrying" not in caplog.text
    assert not root.children["board"].powered


def test_flash_of_a_file_outside_the_http_storage_is_refused(lab, tmp_path: Path) -> None:
    root, client = lab
    outside = image_file(tmp_path, 4096)
    http_root = root.children["flasher"].children["http"].children["storage"].root
    (http_root / "link.img").symlink_to(outside)  # planted by someone else on the exporter host
    for name in (os.path.relpath(outside, http_root), "link.img"):
        with pytest.raises(DriverInvalidArgument, match="is not in the flasher's HTTP storage"):
            client.flasher.call("flash", name, "usd", "uboot")
    assert not root.children["board"].powered, "refused before the board was touched"


def test_flash_to_an_unmapped_target_is_refused(lab, tmp_path: Path) -> None:
    _, client = lab
    with pytest.raises(DriverInvalidArgument, match="'emmc' is not a U-Boot block device"):
        client.flasher.flash(image_file(tmp_path, 4096), target="emmc")


def test_flash_with_busybox_boots_linux_and_writes_over_http(lab, tmp_path: Path) -> None:
    root, client = lab
    image = image_file(tmp_path, 2 * (1 << 20) + 7)
    client.flasher.use_dtb_variant("alternate")
    result = client.flasher.flash(image, method="busybox")
    assert {"load", "boot linux", "write", "verify"} <= set(result.steps)
    assert Path(root.children["board"].disk).read_bytes()[: image.stat().st_size] == image.read_bytes()


@pytest.mark.parametrize("name", ["a;reboot", "$(reboot)", "a b'c"])
def test_busybox_image_name_is_not_run_by_the_board_shell(lab, tmp_path: Path, name: str) -> None:
    root, client = lab
    root.children["flasher"].write_timeout = 20  # a board the name reboots answers no more: bound the wait
    image = tmp_path / name
    image.write_bytes(os.urandom(4096))
    client.flasher.flash(image, method="busybox")
    assert Path(root.children["board"].disk).read_bytes()[:4096] == image.read_bytes()


def test_busybox_target_is_not_run_by_the_board_shell(lab, tmp_path: Path) -> None:
    root, client = lab
    root.children["flasher"].write_timeout = 20
    with pytest.raises(DriverError, match=r"dd: can't open '/dev/mmcblk0;reboot'"):
        client.flasher.flash(image_file(tmp_path, 4096), target="/dev/mmcblk0;reboot", method="busybox")


def test_failed_tftpboot_is_detected_and_not_retried(tmp_path: Path, reference_bundle: Path,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    manifest = reference_bundle / "manifest.yaml"
    manifest.write_text(manifest.read_text().replace('address: "0x82000000"', 'address: "0x10000000"'))
    root = make_lab(tmp_path, reference_bundle)
    try:
        expected = (r"(?s)step 'tftpboot kernel' failed: tftpboot of kernel failed "
                    r"\(status 1; TFTP error: trying to overwrite reserved memory.*console tail")
        with serve(root) as client, caplog.at_level(logging.WARNING), pytest.raises(DriverError, match=expected):
            client.flasher.flash(image_file(tmp_path, 4096), method="busybox")
        assert "retrying" not in caplog.text
    finally:
        root.close()


def test_a_board_hanging_at_boot_is_power_cycled_again(tmp_path: Path, reference_bundle: Path,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    root = make_lab(tmp_path, reference_bundle)
    root.children["flasher"].children["uboot"].boot_timeout = 1.0
    try:
        with serve(root) as client, caplog.at_level(logging.WARNING):
            client.board.set_faults(hang_boot_once=True)
            image = image_file(tmp_path, 10_000)
            client.flasher.flash(image)
        assert "boot to U-Boot: transient failure, retrying" in caplog.text
        assert Path(root.children["board"].disk).read_bytes()[:10_000] == image.read_bytes()
    finally:
        root.close()


@pytest.fixture
def web(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A plain HTTP server on loopback serving a directory: (its base URL, the directory)."""
    www = tmp_path / "www"
    www.mkdir()

    class Handler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.startswith("/redirect/"):  # /redirect/<url>: a redirect to anywhere
                self.send_response(302)
                self.send_header("Location", self.path.removeprefix("/redirect/"))
                self.end_headers()
                return
            super().do_GET()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(www)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", www
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_flash_from_a_url(web: tuple[str, Path], tmp_path: Path, reference_bundle: Path) -> None:
    base, www = web
    image = www / "images" / "remote.img"
    image.parent.mkdir()
    image.write_bytes(os.urandom(300_000))
    root = make_lab(tmp_path, reference_bundle, allowed_urls=[base + "images/"])
    try:
        with serve(root) as client:
            result = client.flasher.flash(base + "images/remote.img")
            assert result.image == "remote.img" and result.size == 300_000
            assert Path(root.children["board"].disk).read_bytes()[:300_000] == image.read_bytes()
            with pytest.raises(DriverInvalidArgument, match="cannot download the image"):
                client.flasher.flash(base + "images/none.img")
    finally:
        root.close()


def test_url_sources_are_refused_unless_configured(lab, web: tuple[str, Path]) -> None:
    _, client = lab
    base, www = web
    (www / "secret").write_bytes(b"a loopback-only service's answer")
    with pytest.raises(DriverInvalidArgument, match=r"image URL .* is refused: this flasher fetches only URLs under "
                                                    r"config field 'allowed_urls' \(none configured\)"):
        client.flasher.flash(base + "secret")
    assert not client.flasher.http.storage.exists("secret")


@pytest.mark.parametrize("path", ["other/secret", "images/../secret", "redirect/{base}secret"])
def test_urls_outside_the_allowed_prefixes_are_refused(web: tuple[str, Path], tmp_path: Path, reference_bundle: Path,
                                                       path: str) -> None:
    base, www = web
    (www / "secret").write_bytes(b"not for the board")
    root = make_lab(tmp_path, reference_bundle, allowed_urls=[base + "images/", base + "redirect/"])
    try:
        with serve(root) as client, pytest.raises(DriverInvalidArgument, match="is refused"):
            client.flasher.flash(base + path.format(base=base))
        assert not (Path(root.children["flasher"].children["http"].children["storage"].root) / "secret").exists()
    finally:
        root.close()


@pytest.mark.parametrize(("path", "expected"), [
    ("/endless.img", r"larger than 1048576 bytes \(config field 'max_download_size'\); refused"),
    ("/drip.img", r"not done within 1 s \(config field 'download_timeout'\); refused"),
])
def test_an_image_download_is_bounded_in_size_and_time(hostile_http: Hostile, tmp_path: Path,
                                                       reference_bundle: Path, path: str, expected: str) -> None:
    hostile_http.routes["/endless.img"] = hostile_http.endless()
    hostile_http.routes["/drip.img"] = hostile_http.drip(bytes(1000))
    root = make_lab(tmp_path, reference_bundle, allowed_urls=[hostile_http.url + "/"], max_download_size=1 << 20,
                    download_timeout=1)
    try:
        with serve(root) as client:
            with pytest.raises(DriverInvalidArgument, match=expected):
                client.flasher.flash(hostile_http.url + path)
            assert not client.flasher.http.storage.exists(path.lstrip("/")), "a partial download was kept"
    finally:
        root.close()


@pytest.mark.parametrize("field", ["max_download_size", "download_timeout"])
def test_download_bounds_must_be_positive(tmp_path: Path, reference_bundle: Path, field: str) -> None:
    with pytest.raises(ConfigurationError, match=rf"config field '{field}' must be positive, got 0"):
        make_lab(tmp_path, reference_bundle, **{field: 0})


@pytest.mark.parametrize("prefix", ["ftp://x/", "https://x:port/", "/images/"])
def test_a_bad_allowed_url_is_a_configuration_error(tmp_path: Path, reference_bundle: Path, prefix: str) -> None:
    with pytest.raises(ConfigurationError, match=rf"allowed_urls.*'{prefix}' is not an http\(s\) URL prefix"):
        make_lab(tmp_path, reference_bundle, allowed_urls=[prefix])


def test_flasher_with_an_oci_bundle_pulls_it_once(oci_registry, tmp_path: Path, reference_bundle: Path) -> None:
    oci_registry.push(reference_bundle, "flasher/bundle:v1")
    cache = tmp_path / "cache"
    for attempt in range(2):
        flasher = BaseFlasher(flasher_bundle=f"{oci_registry.host}/flasher/bundle:v1", cache_dir=str(cache),
                              children={"serial": PySerial(url="loop://"), "power": MockPower()})
        try:
            with serve(flasher) as client:
                client.use_dtb_variant("alternate")
                client.setup_flasher_bundle()
                assert client.tftp.storage.read_bytes("alternate.dtb") == bytes(4096)
                assert client.manifest.spec.kernel.file == "data/kernel"
        finally:
            flasher.close()
        if attempt == 0:
            fetched = oci_registry.blob_fetches("flasher/bundle")
            assert fetched >= 2, "the first session pulled the bundle's manifest and files from the registry"
    assert oci_registry.blob_fetches("flasher/bundle") == fetched, "the second session pulled the bundle again"


def test_command_line(lab, tmp_path: Path) -> None:
    from click.testing import CliRunner

    root, client = lab
    commands = client.flasher.cli()
    runner = CliRunner()
    assert runner.invoke(commands, ["variant", "othercmd"]).output == "dtb test-dtb.dtb, bootcmd bootm\n"
    assert "name: test-bundle" in runner.invoke(commands, ["manifest"]).output
    image = image_file(tmp_path, 5000)
    done = runner.invoke(commands, ["flash", str(image), "--target", "usd"])
    assert done.exit_code == 0 and done.output.startswith("flashed image.raw (5000 bytes) to usd with uboot: stage ")
    assert Path(root.children["board"].disk).read_bytes()[:5000] == image.read_bytes()
    uboot = client.flasher.uboot.cli()
    assert runner.invoke(uboot, ["prompt"]).exit_code == 0
    assert runner.invoke(uboot, ["env", "colour", "blue"]).exit_code == 0
    assert runner.invoke(uboot, ["env", "colour"]).output == "blue\n"
    assert runner.invoke(uboot, ["run", "echo hi"]).output == "hi\n"


def test_tftp_block_and_window_sizes_reach_uboot(tmp_path: Path, reference_bundle: Path) -> None:
    root = make_lab(tmp_path, reference_bundle, tftp_blocksize=4096, tftp_windowsize=4)
    commands: list[str] = []
    root.children["board"].board.on_command = lambda line, status: commands.append(line)
    try:
        with serve(root) as client:
            client.flasher.flash(image_file(tmp_path, 10_000))
    finally:
        root.close()
    assert "setenv tftpblocksize 4096" in commands and "setenv tftpwindowsize 4" in commands
    assert commands.index("setenv tftpwindowsize 4") < next(i for i, c in enumerate(commands) if c.startswith("tftpboot"))


def bundle_archive(tmp_path: Path, kernel: str = "vmlinuz", manifest_kernel: str | None = None) -> Path:
    """A tar.gz of the reference bundle whose kernel file is called ``kernel`` (or the manifest names another)."""
    bundle = make_reference_bundle(tmp_path / f"bundle-{kernel}")
    (bundle / "data" / "kernel").rename(bundle / "data" / kernel)
    manifest = bundle / "manifest.yaml"
    manifest.write_text(manifest.read_text().replace("file: data/kernel", f"file: {manifest_kernel or 'data/' + kernel}"))
    archive = tmp_path / f"{kernel}.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(bundle, arcname="bundle")
    return archive


def test_a_client_bundle_lasts_until_its_session_ends(lab, tmp_path: Path) -> None:
    _, client = lab
    archive = bundle_archive(tmp_path)
    client.flasher.http.storage.write_from_path("mine/bundle.tar.gz", archive)
    client.flasher.setup_flasher_bundle("mine/bundle.tar.gz")
    assert client.flasher.get_kernel_filename() == "vmlinuz"
    assert client.flasher.tftp.storage.read_bytes("vmlinuz") == bytes(1024)
    client.flasher.use_dtb_variant("alternate")
    assert client.end_session()
    with connect(client.connection.address) as later:
        assert later.flasher.get_kernel_filename() == "kernel"
        assert later.flasher.get_dtb_filename() == "test-dtb.dtb"


@pytest.mark.parametrize("name", ["v1.2/bundle.tar.gz", "boards.lab/bundle.tar.gz", "localhost/bundle.tar.gz"])
def test_an_uploaded_bundle_whose_folder_looks_like_a_registry_is_used(lab, tmp_path: Path, name: str) -> None:
    """A name in the HTTP storage is the client's upload, even when its first folder reads like a registry host."""
    _, client = lab
    client.flasher.http.storage.write_from_path(name, bundle_archive(tmp_path))
    client.flasher.setup_flasher_bundle(name)
    assert client.flasher.get_kernel_filename() == "vmlinuz"


def test_reset_brings_back_the_configured_bundle(lab, tmp_path: Path) -> None:
    root, client = lab
    client.flasher.http.storage.write_from_path("b.tar.gz", bundle_archive(tmp_path))
    client.flasher.setup_flasher_bundle("b.tar.gz")
    root.reset()
    assert client.flasher.get_kernel_filename() == "kernel"


@pytest.mark.parametrize("name", ["{outside}", "{outside}/../bundle", "../../../bundle", "quay.io/evil/bundle:1"])
def test_a_client_cannot_name_bundles_elsewhere(lab, tmp_path: Path, reference_bundle: Path, name: str) -> None:
    _, client = lab
    outside = make_reference_bundle(tmp_path / "elsewhere" / "bundle").parent
    with pytest.raises(DriverInvalidArgument, match=r"(is not allowed|leaves the storage root)") as excinfo:
        client.flasher.setup_flasher_bundle(name.format(outside=outside / "bundle"))
    assert str(tmp_path) not in str(excinfo.value).replace(str(outside), "")
    assert client.flasher.get_kernel_filename() == "kernel"


def test_configured_bundle_sources_admit_a_client_bundle(tmp_path: Path, reference_bundle: Path) -> None:
    shelf = tmp_path / "shelf"
    archive = bundle_archive(shelf)
    root = make_lab(tmp_path, reference_bundle, bundle_sources=[f"{shelf}/*.tar.gz"])
    try:
        with serve(root) as client:
            client.flasher.setup_flasher_bundle(str(archive))
            assert client.flasher.get_kernel_filename() == "vmlinuz"
            with pytest.raises(DriverInvalidArgument, match="is not allowed"):
                client.flasher.setup_flasher_bundle(str(reference_bundle))
    finally:
        root.close()


@pytest.mark.parametrize("kernel", ["/etc/hostname", "../../../../../../../../etc/hostname"])
def test_an_uploaded_manifest_cannot_name_host_files(lab, tmp_path: Path, kernel: str) -> None:
    _, client = lab
    storage = client.flasher.http.storage
    storage.write_bytes("evil/manifest.yaml", f"spec: {{kernel: {{file: '{kernel}', address: '0x1'}}}}\n".encode())
    with pytest.raises(DriverError, match="leads out of the bundle") as excinfo:
        client.flasher.setup_flasher_bundle("evil")
    assert "/tmp" not in str(excinfo.value), "the error names the exporter's paths"
    assert not client.flasher.tftp.storage.exists("hostname")
    archive = bundle_archive(tmp_path, "vmlinuz", manifest_kernel=kernel)
    storage.write_from_path("evil.tar.gz", archive)
    with pytest.raises(DriverError, match="leads out of the bundle"):
        client.flasher.setup_flasher_bundle("evil.tar.gz")
    assert not client.flasher.tftp.storage.exists("hostname")


def test_the_bundle_size_bound_is_configurable(tmp_path: Path, reference_bundle: Path) -> None:
    root = make_lab(tmp_path, reference_bundle, max_bundle_size=8192)
    try:
        with serve(root) as client, pytest.raises(DriverError, match=r"more than 8192 \(max_bundle_size\)"):
            client.flasher.get_kernel_filename()
    finally:
        root.close()
    with pytest.raises(ConfigurationError, match="'max_bundle_size' must be positive"):
        make_lab(tmp_path, reference_bundle, max_bundle_size=0)


def test_leftovers_of_a_killed_flash_are_removed_at_start(tmp_path: Path, reference_bundle: Path) -> None:
    tftp, http = tmp_path / "tftp", tmp_path / "http"
    tftp.mkdir()
    http.mkdir()
    (tftp / ".flash-chunk-00000").write_bytes(bytes(4096))  # what a flash killed with SIGKILL leaves
    (tftp / ".kernel.k2j3h4.part").write_bytes(bytes(100))
    (http / ".image.raw.x8y7z6.part").write_bytes(bytes(100))
    (tftp / "kept").write_bytes(b"a file of the operator")
    root = make_lab(tmp_path, reference_bundle, tftp_dir=str(tftp), http_dir=str(http))
    try:
        assert sorted(p.name for p in tftp.iterdir()) == ["kept"]
        assert list(http.iterdir()) == []
    finally:
        root.close()


def test_a_directory_named_like_a_chunk_does_not_stop_the_flasher(tmp_path: Path, reference_bundle: Path) -> None:
    """A client may write any name into the TFTP storage, '.flash-chunk-00000/x' too; the flasher still starts."""
    tftp = tmp_path / "tftp"
    root = make_lab(tmp_path, reference_bundle, tftp_dir=str(tftp))
    try:
        with serve(root) as client:
            client.flasher.tftp.storage.write_bytes(".flash-chunk-00000/x", b"in the way")
    finally:
        root.close()
    root = make_lab(tmp_path, reference_bundle, tftp_dir=str(tftp))
    root.close()
    assert not (tftp / ".flash-chunk-00000").exists()
