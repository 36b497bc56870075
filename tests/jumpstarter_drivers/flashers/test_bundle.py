"""Bundles: manifest parsing and the three sources (directory, tar, OCI registry)."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import tarfile
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pytest

from jumpstarter_drivers.core.errors import ConfigurationError, DriverError
from jumpstarter_drivers.flashers.bundle import Bundle, fetch_bundle, is_oci_reference, parse_manifest
from jumpstarter_drivers.flashers.testing import REFERENCE_FILES, REFERENCE_MANIFEST

from .conftest import Hostile, member, tar_bytes

OCI_DIR_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


def test_reference_manifest_has_attribute_access(reference_bundle: Path) -> None:
    bundle = Bundle.load(reference_bundle)
    spec = bundle.manifest.spec
    assert bundle.manifest.metadata.name == "test-bundle"
    assert spec.kernel.file == "data/kernel" and spec.kernel.address == "0x82000000"
    assert spec.initram is not None and spec.initram.file == "data/initramfs"
    assert spec.dtb is not None and spec.dtb.default == "test-dtb"
    assert spec.dtb.variants["othercmd"].bootcmd == "bootm" and spec.dtb.variants["othercmd"].file is None
    assert spec.login.password == "password" and spec.targets["usd"] == "/sys/class/block#4fb0000"


def test_unknown_keys_are_ignored() -> None:
    manifest = parse_manifest("spec: {kernel: {file: k, address: '0x1', flavour: x}, colour: blue}\nextra: 1")
    assert manifest.spec.kernel.file == "k"


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("spec: {}", "spec.kernel"),
        ("spec: {kernel: {file: k}}", "spec.kernel.address"),
        ("spec: {kernel: {file: k, address: 1}}", "spec.kernel.address"),
        ("spec: {kernel: {file: k, address: '1'}, targets: [a]}", "spec.targets"),
        ("spec: {kernel: {file: k, address: '1'}, dtb: {default: x, address: '2', variants: {y: {file: f}}}}",
         "spec.dtb.default"),
    ],
)
def test_bad_manifest_names_file_and_field(text: str, field: str) -> None:
    with pytest.raises(ConfigurationError, match=rf"^m\.yaml: .*'{field}'"):
        parse_manifest(text, source="m.yaml")


def test_invalid_yaml_names_file() -> None:
    with pytest.raises(ConfigurationError, match=r"^m\.yaml: line 1, column 8: not valid YAML"):
        parse_manifest("spec: [", source="m.yaml")


def test_missing_bundle_file_is_named(reference_bundle: Path) -> None:
    (reference_bundle / "data" / "initramfs").unlink()
    with pytest.raises(ConfigurationError, match=r"manifest\.yaml: field 'spec\.initram\.file' names 'data/initramfs'"):
        Bundle.load(reference_bundle)


def test_directory_source_is_used_in_place(reference_bundle: Path, tmp_path: Path) -> None:
    assert fetch_bundle(str(reference_bundle), tmp_path / "cache") == reference_bundle


@pytest.mark.parametrize("mode", ["w", "w:gz"])
def test_tar_source_is_unpacked_once(reference_bundle: Path, tmp_path: Path, mode: str) -> None:
    archive = tmp_path / ("bundle.tar" + (".gz" if mode.endswith("gz") else ""))
    with tarfile.open(archive, mode) as tar:
        tar.add(reference_bundle, arcname="bundle")
    root = fetch_bundle(archive, tmp_path / "cache")
    assert {n: (root / n).stat().st_size for n in REFERENCE_FILES} == REFERENCE_FILES
    (root / "marker").touch()
    assert fetch_bundle(archive, tmp_path / "cache") == root and (root / "marker").exists()


def test_bad_source_says_what_is_accepted(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ConfigurationError, match="not a tar archive"):
        fetch_bundle(tmp_path / "notes.txt", tmp_path / "cache")
    with pytest.raises(ConfigurationError, match="neither an existing directory"):
        fetch_bundle(tmp_path / "missing", tmp_path / "cache")


def test_oci_reference_detection() -> None:
    assert is_oci_reference("quay.io/jumpstarter-dev/jumpstarter-flasher-test:latest")
    assert is_oci_reference("oci://localhost/bundle:1")
    assert not is_oci_reference("bundles/test")


def test_oci_pull_from_loopback_registry_is_cached(oci_registry, reference_bundle: Path, tmp_path: Path) -> None:
    oci_registry.push(reference_bundle, "flasher/test:v1")
    reference = f"{oci_registry.host}/flasher/test:v1"
    root = fetch_bundle(reference, tmp_path / "cache")
    assert Bundle.load(root).manifest.spec.kernel.file == "data/kernel"
    assert (root / "data/dtbs/alternate.dtb").read_bytes() == bytes(4096)
    fetched = oci_registry.blob_fetches("flasher/test")
    assert fetched >= 2
    assert fetch_bundle(reference, tmp_path / "cache") == root
    assert oci_registry.blob_fetches("flasher/test") == fetched, "the cached bundle was downloaded again"
    digest = root.name.replace("-", ":", 1)
    assert fetch_bundle(f"{oci_registry.host}/flasher/test@{digest}", tmp_path / "cache") == root


def test_oci_unknown_tag_is_a_clear_error(oci_registry, tmp_path: Path) -> None:
    with pytest.raises(DriverError, match="answered 404"):
        fetch_bundle(f"{oci_registry.host}/flasher/none:v9", tmp_path / "cache")


@pytest.mark.parametrize(("name", "reason"), [
    ("/etc/hostname", "is absolute"),
    ("../outside", "contains '..'"),
    ("data/link", "leads through a symbolic link"),
])
def test_manifest_paths_stay_inside_the_bundle(reference_bundle: Path, tmp_path: Path, name: str, reason: str) -> None:
    (tmp_path / "outside").write_bytes(b"a file of the exporter host")
    (reference_bundle / "data" / "link").symlink_to(tmp_path / "outside")
    manifest = reference_bundle / "manifest.yaml"
    manifest.write_text(manifest.read_text().replace("file: data/kernel", f"file: {name}"))
    expected = rf"field 'spec\.kernel\.file' names {re.escape(repr(name))}, which leads out of the bundle \(it {reason}"
    with pytest.raises(ConfigurationError, match=expected):
        Bundle.load(reference_bundle)


def test_a_manifest_alias_bomb_is_refused_at_once() -> None:
    items = ["&a0 [lol]"] + [f"&a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 8)]
    text = f"spec: {{kernel: {{file: k, address: '1'}}, targets: [{', '.join(items)}]}}"
    assert len(text) < 1000
    with pytest.raises(ConfigurationError, match=r"^m\.yaml: aliases expand to more than 100000 values") as excinfo:
        parse_manifest(text, source="m.yaml")
    assert len(str(excinfo.value)) < 200


def test_a_duplicate_manifest_key_is_an_error() -> None:
    with pytest.raises(ConfigurationError, match=r"^m\.yaml: line 1, column \d+: duplicate key 'kernel'"):
        parse_manifest("spec: {kernel: {file: k, address: '1'}, kernel: {file: j, address: '2'}}", source="m.yaml")


def escapes(outside: Path) -> list[list]:
    """Archive contents that try to write into ``outside``: links out, then a file through them; climbing names."""
    return [
        [member("bundle", tarfile.DIRTYPE), member("bundle/escape", tarfile.SYMTYPE, str(outside)),
         (member("bundle/escape/pwned.txt"), b"pwned")],
        [member("bundle", tarfile.DIRTYPE), member("bundle/escape", tarfile.SYMTYPE, "../" * 12 + str(outside)[1:]),
         (member("bundle/escape/pwned.txt"), b"pwned")],
        [member("bundle", tarfile.DIRTYPE), member("bundle/up", tarfile.SYMTYPE, ".."),
         member("bundle/up/up", tarfile.SYMTYPE, ".."), (member("bundle/up/up/pwned.txt"), b"pwned")],
        [(member("bundle/victim"), b"x"), member("bundle/hard", tarfile.LNKTYPE, str(outside / "victim"))],
        [(member("../pwned.txt"), b"pwned")],
        [(member(str(outside / "pwned.txt")), b"pwned")],
        [member("bundle/null", tarfile.CHRTYPE)],
    ]


@pytest.mark.parametrize("case", range(7))
def test_a_tar_bundle_cannot_reach_outside_the_cache(tmp_path: Path, case: int) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim").write_bytes(b"kept")
    archive = tmp_path / "evil.tar.gz"
    archive.write_bytes(tar_bytes(escapes(outside)[case]))
    with pytest.raises(ConfigurationError, match=r"flasher bundle .*evil\.tar\.gz: archive member .* refused"):
        fetch_bundle(archive, tmp_path / "cache")
    assert sorted(p.name for p in outside.iterdir()) == ["victim"] and (outside / "victim").read_bytes() == b"kept"
    assert not (tmp_path / "pwned.txt").exists()
    assert list((tmp_path / "cache" / "tar").iterdir()) == [], "nothing half-unpacked stays in the cache"


@pytest.mark.parametrize("case", range(7))
def test_an_oci_layer_cannot_reach_outside_the_cache(oci_registry, tmp_path: Path, case: int) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim").write_bytes(b"kept")
    oci_registry.push_layers("flasher/evil:v1", [("bundle", OCI_DIR_LAYER, tar_bytes(escapes(outside)[case]))])
    with pytest.raises(ConfigurationError, match=r"flasher bundle .*flasher/evil:v1: archive member .* refused"):
        fetch_bundle(f"{oci_registry.host}/flasher/evil:v1", tmp_path / "cache")
    assert sorted(p.name for p in outside.iterdir()) == ["victim"] and (outside / "victim").read_bytes() == b"kept"
    assert not (tmp_path / "pwned.txt").exists()
    assert list((tmp_path / "cache" / "oci").iterdir()) == [], "nothing half-pulled stays in the cache"


def test_an_oci_file_layer_cannot_be_titled_outside(oci_registry, tmp_path: Path) -> None:
    oci_registry.push_layers("flasher/evil:v2", [("../../pwned.txt", "application/octet-stream", b"pwned")])
    with pytest.raises(DriverError, match=r"layer title '\.\./\.\./pwned\.txt' leads out of the bundle"):
        fetch_bundle(f"{oci_registry.host}/flasher/evil:v2", tmp_path / "cache")
    assert not list(tmp_path.rglob("pwned.txt"))


def test_an_oci_bundle_with_links_inside_is_pulled(oci_registry, tmp_path: Path) -> None:
    layer = tar_bytes([member("data", tarfile.DIRTYPE), (member("data/kernel"), bytes(1024)),
                       member("data/vmlinuz", tarfile.SYMTYPE, "kernel"), member("data/again", tarfile.LNKTYPE, "data/kernel")])
    oci_registry.push_layers("flasher/links:v1", [("data", OCI_DIR_LAYER, layer),
                                                  ("manifest.yaml", "application/yaml", REFERENCE_MANIFEST.encode())])
    root = fetch_bundle(f"{oci_registry.host}/flasher/links:v1", tmp_path / "cache")
    assert (root / "data" / "vmlinuz").read_bytes() == bytes(1024) and (root / "data" / "again").stat().st_nlink == 2
    assert (root / "manifest.yaml").read_text() == REFERENCE_MANIFEST


def test_a_tar_bundle_bigger_than_the_bound_is_refused(tmp_path: Path) -> None:
    archive = tmp_path / "big.tar.gz"
    archive.write_bytes(tar_bytes([(member("manifest.yaml"), b"spec: {}"), (member("data/blob"), bytes(3 << 20))]))
    with pytest.raises(ConfigurationError, match=r"big\.tar\.gz: unpacks to more than 2097152 bytes \(max_bundle_size\)"):
        fetch_bundle(archive, tmp_path / "cache", max_size=2 << 20)
    assert not list((tmp_path / "cache").rglob("blob"))
    assert (fetch_bundle(archive, tmp_path / "cache", max_size=4 << 20) / "data" / "blob").stat().st_size == 3 << 20


def test_a_tar_bundle_with_too_many_members_is_refused(tmp_path: Path) -> None:
    archive = tmp_path / "many.tar.gz"
    archive.write_bytes(tar_bytes([member(f"f{i}") for i in range(10_001)]))
    with pytest.raises(ConfigurationError, match=r"many\.tar\.gz: holds more than 10000 members"):
        fetch_bundle(archive, tmp_path / "cache")


def test_an_oci_bundle_bigger_than_the_bound_is_not_downloaded(oci_registry, reference_bundle: Path,
                                                               tmp_path: Path) -> None:
    (reference_bundle / "data" / "big").write_bytes(os.urandom(3 << 20))  # does not compress
    oci_registry.push(reference_bundle, "flasher/big:v1")
    with pytest.raises(DriverError, match=r"flasher/big:v1: its layers hold \d+ bytes, more than 2097152 \(max_bundle_size\)"):
        fetch_bundle(f"{oci_registry.host}/flasher/big:v1", tmp_path / "cache", max_size=2 << 20)
    assert oci_registry.blob_fetches("flasher/big") == 0


def test_an_oci_layer_that_unpacks_beyond_the_bound_is_refused(oci_registry, reference_bundle: Path,
                                                               tmp_path: Path) -> None:
    (reference_bundle / "data" / "zeros").write_bytes(bytes(3 << 20))  # compresses to a few kB
    oci_registry.push(reference_bundle, "flasher/zeros:v1")
    with pytest.raises(ConfigurationError, match=r"flasher/zeros:v1: unpacks to more than 2097152 bytes"):
        fetch_bundle(f"{oci_registry.host}/flasher/zeros:v1", tmp_path / "cache", max_size=2 << 20)
    assert list((tmp_path / "cache" / "oci").iterdir()) == []


def test_files_a_directory_manifest_names_are_bounded(reference_bundle: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"the files the manifest names hold 10240 bytes, more than 10000"):
        Bundle.load(reference_bundle, max_size=10_000)
    assert Bundle.load(reference_bundle, max_size=10_240).manifest.metadata.name == "test-bundle"


def _header(kind: bytes, size: int, name: str = "././@LongLink") -> bytes:
    info = tarfile.TarInfo(name)
    info.type, info.size = kind, size
    return info.tobuf(format=tarfile.GNU_FORMAT)


def _sparse_with_endless_map() -> bytes:
    """An old GNU sparse member ('S') whose map goes on in 512-byte extension blocks (each says 'more follows')."""
    head = bytearray(_header(tarfile.GNUTYPE_SPARSE, 0, name="sparse"))
    head[482] = 1  # isextended
    head[148:156] = b"%06o\0 " % tarfile.calc_chksums(bytes(head[:148] + b" " * 8 + head[156:]))[0]
    extension = bytearray(512)
    extension[504] = 1  # isextended: another block follows
    return bytes(head) + bytes(extension) * (32 << 11)  # 32 MiB of map


def _pax_sparse_with_endless_map() -> bytes:
    """A pax GNU sparse 1.0 member whose map, at the start of its data, announces 10**8 entries."""
    info = tarfile.TarInfo("sparse")
    info.pax_headers = {"GNU.sparse.major": "1", "GNU.sparse.minor": "0", "GNU.sparse.realsize": "1"}
    info.size = 32 << 20
    return info.tobuf(format=tarfile.PAX_FORMAT) + b"100000000\n" + b"1\n" * (16 << 20)


@pytest.mark.parametrize(("what", "archive"), [
    ("long name", lambda: _header(tarfile.GNUTYPE_LONGNAME, 32 << 20) + bytes(32 << 20)),
    ("long link", lambda: _header(tarfile.GNUTYPE_LONGLINK, 32 << 20) + bytes(32 << 20)),
    ("pax", lambda: _header(tarfile.XHDTYPE, 32 << 20, name="pax") + bytes(32 << 20)),
    ("global pax", lambda: _header(tarfile.XGLTYPE, 32 << 20, name="pax") + bytes(32 << 20)),
    ("sparse", _sparse_with_endless_map),
    ("pax sparse", _pax_sparse_with_endless_map),
], ids=lambda value: value if isinstance(value, str) else "")
def test_archive_headers_are_bounded_in_memory(tmp_path: Path, what: str, archive) -> None:
    """tarfile reads a long name, a pax header or a sparse map whole into memory: a few hundred kB of gzip
    made it hold 32 MiB and more (a 1.3 MB archive took 2.4 GB), whatever max_bundle_size said."""
    path = tmp_path / "evil.tar.gz"
    path.write_bytes(gzip.compress(archive(), compresslevel=9))
    assert path.stat().st_size < 1 << 20
    tracemalloc.start()
    try:
        refused = r"evil\.tar\.gz: an archive member (has an extended header of|is a sparse file).*; refused"
        with pytest.raises(ConfigurationError, match=refused):
            fetch_bundle(path, tmp_path / "cache")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20, f"{what}: {peak >> 20} MiB held while reading the archive"


def test_a_chain_of_extended_headers_is_refused(tmp_path: Path) -> None:
    """tarfile reads the header after an extended header recursively, holding each: 5000 in a row raised
    RecursionError (and 1 MiB headers would have been held a thousand at a time)."""
    path = tmp_path / "chain.tar.gz"
    path.write_bytes(gzip.compress(b"".join(_header(tarfile.GNUTYPE_LONGNAME, 512) + bytes(511) + b"\n"
                                            for _ in range(5000)) + _header(tarfile.REGTYPE, 0, name="f")))
    with pytest.raises(ConfigurationError, match=r"chain\.tar\.gz: an archive member .*extended headers in a row"):
        fetch_bundle(path, tmp_path / "cache")


def _serve_artifact(hostile: Hostile, repository: str, layers: list[dict]) -> str:
    """Route an OCI image manifest of ``layers`` (by tag and by digest) on ``hostile``; its reference."""
    manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                           "config": {"mediaType": "application/vnd.unknown.config.v1+json",
                                      "digest": "sha256:" + hashlib.sha256(b"{}").hexdigest(), "size": 2},
                           "layers": layers}).encode()
    digest = "sha256:" + hashlib.sha256(manifest).hexdigest()
    for tag in ("v1", digest):
        hostile.routes[f"/v2/{repository}/manifests/{tag}"] = hostile.body(manifest)
    return f"{hostile.url.removeprefix('http://')}/{repository}:v1"


def test_an_oci_bundle_with_too_many_layers_is_refused_before_any_download(hostile_http: Hostile,
                                                                            tmp_path: Path) -> None:
    layers = [{"mediaType": "application/octet-stream", "digest": "sha256:" + "0" * 64, "size": 1,
               "annotations": {"org.opencontainers.image.title": f"f{i}"}} for i in range(257)]
    reference = _serve_artifact(hostile_http, "flasher/many", layers)
    with pytest.raises(DriverError, match=r"flasher/many:v1: it has 257 layers, more than 256; refused"):
        fetch_bundle(reference, tmp_path / "cache")


def _serve_kernel(hostile: Hostile, repository: str, blob: bytes, reply: Callable[[bytes], Callable]) -> str:
    """Route a one-layer artifact (``kernel``: ``blob``, sent by ``reply(blob)``) on ``hostile``; its reference."""
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    reference = _serve_artifact(hostile, repository, [
        {"mediaType": "application/octet-stream", "digest": digest, "size": len(blob),
         "annotations": {"org.opencontainers.image.title": "kernel"}}])
    hostile.routes[f"/v2/{repository}/blobs/{digest}"] = reply(blob)
    return reference


def test_an_oci_layer_dripped_a_byte_at_a_time_ends_at_the_download_timeout(hostile_http: Hostile,
                                                                            tmp_path: Path) -> None:
    reference = _serve_kernel(hostile_http, "flasher/slow", os.urandom(1000), hostile_http.drip)
    with pytest.raises(DriverError, match=r"flasher/slow:v1: not pulled within 1 s \(download_timeout\); refused"):
        fetch_bundle(reference, tmp_path / "cache", timeout=1)
    assert not list((tmp_path / "cache" / "oci").iterdir()), "a half-pulled bundle stayed in the cache"


def test_a_kept_alive_connection_the_registry_drops_on_reuse_is_retried_on_a_new_one(hostile_http: Hostile,
                                                                                     tmp_path: Path) -> None:
    hostile_http.drop_reused = True
    blob = os.urandom(1000)
    reference = _serve_kernel(hostile_http, "flasher/dropping", blob, hostile_http.body)
    bundle = fetch_bundle(reference, tmp_path / "cache", timeout=10)
    assert (bundle / "kernel").read_bytes() == blob


def test_an_oci_manifest_dripped_a_byte_at_a_time_ends_at_the_download_timeout(hostile_http: Hostile,
                                                                              tmp_path: Path) -> None:
    hostile_http.routes["/v2/flasher/drip/manifests/v1"] = hostile_http.drip(b"{" + b" " * 998 + b"}")
    with pytest.raises(DriverError, match=r"flasher/drip:v1: not pulled within 1 s"):
        fetch_bundle(f"{hostile_http.url.removeprefix('http://')}/flasher/drip:v1", tmp_path / "cache", timeout=1)
