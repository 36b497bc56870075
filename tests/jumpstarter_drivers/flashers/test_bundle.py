"""Bundles: manifest parsing and the three sources (directory, tar, OCI registry)."""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest

from jumpstarter_drivers.core.errors import ConfigurationError, DriverError
from jumpstarter_drivers.flashers.bundle import Bundle, fetch_bundle, is_oci_reference, parse_manifest
from jumpstarter_drivers.flashers.testing import REFERENCE_FILES


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
    with pytest.raises(ConfigurationError, match="^m.yaml: not valid YAML"):
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
