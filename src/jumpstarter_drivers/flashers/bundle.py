"""Flasher bundles: the manifest and where a bundle comes from.

A bundle is a directory with a ``manifest.yaml`` and the files it names. It may come as that
directory, as a ``.tar``/``.tar.gz`` of it, or as an OCI artifact pulled with ``oras``.

>>> m = parse_manifest('''
... apiVersion: jumpstarter.dev/v1alpha1
... kind: FlashBundleManifest
... metadata: {name: demo}
... spec:
...   kernel: {file: data/kernel, address: "0x82000000"}
...   color: ignored
... ''', source="demo.yaml")
>>> m.spec.kernel.file, m.spec.bootcmd is None
('data/kernel', True)
>>> parse_manifest("spec: {kernel: {file: 3}}", source="bad.yaml")
Traceback (most recent call last):
...
jumpstarter_drivers.core.errors.ConfigurationError: bad.yaml: field 'spec.kernel.file' expects str, got 3 (int)
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import os
import re
import shutil
import tarfile
import tempfile
import types
import typing
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from ..core.driver import conforms, type_name
from ..core.errors import ConfigurationError, DriverError
from .common import sha256_file

logger = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.yaml"
_COMPLETE = ".complete"


@dataclass(frozen=True)
class Metadata:
    """Who the bundle is."""

    name: str = ""


@dataclass(frozen=True)
class FileAt:
    """A bundle file and the memory address U-Boot loads it to."""

    file: str
    address: str


@dataclass(frozen=True)
class DtbVariant:
    """One device tree choice: its own file, its own boot command, or both."""

    file: str | None = None
    bootcmd: str | None = None


@dataclass(frozen=True)
class Dtb:
    """The device trees a bundle offers, and which one is the default."""

    default: str
    address: str
    variants: dict[str, DtbVariant] = field(default_factory=dict)


@dataclass(frozen=True)
class Login:
    """How to log into the flashing shell."""

    login_prompt: str = "login:"
    username: str = "root"
    password: str | None = None
    prompt: str = "#"


@dataclass(frozen=True)
class Spec:
    """What the flasher needs from a bundle."""

    kernel: FileAt
    manufacturer: str = ""
    link: str | None = None
    bootcmd: str | None = None
    shelltype: str = "busybox"
    login: Login = field(default_factory=Login)
    default_target: str | None = None
    targets: dict[str, str] = field(default_factory=dict)
    preflash_commands: list[str] = field(default_factory=list)
    initram: FileAt | None = None
    dtb: Dtb | None = None


@dataclass(frozen=True)
class Manifest:
    """A parsed ``manifest.yaml`` (``FlashBundleManifest``)."""

    spec: Spec
    apiVersion: str = "jumpstarter.dev/v1alpha1"
    kind: str = "FlashBundleManifest"
    metadata: Metadata = field(default_factory=Metadata)


def _build(tp: Any, value: Any, where: str, source: str) -> Any:
    """Convert parsed YAML ``value`` to ``tp``; errors name ``source`` and the dotted field."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _build(inner[0], value, where, source)
    if isinstance(tp, type) and hasattr(tp, "__dataclass_fields__"):
        if not isinstance(value, dict):
            raise ConfigurationError(f"{source}: field '{where}' expects a mapping, got {value!r}")
        hints = typing.get_type_hints(tp)
        kwargs = {}
        for f in fields(tp):
            sub = f"{where}.{f.name}" if where else f.name
            if f.name in value and value[f.name] is not None:
                kwargs[f.name] = _build(hints[f.name], value[f.name], sub, source)
            elif f.default is MISSING and f.default_factory is MISSING:
                raise ConfigurationError(f"{source}: missing required field '{sub}'")
        return tp(**kwargs)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigurationError(f"{source}: field '{where}' expects a mapping, got {value!r}")
        return {str(k): _build(args[1], v if v is not None else {}, f"{where}.{k}", source) for k, v in value.items()}
    if origin is list:
        if not isinstance(value, list):
            raise ConfigurationError(f"{source}: field '{where}' expects a list, got {value!r}")
        return [_build(args[0], v, f"{where}[{i}]", source) for i, v in enumerate(value)]
    if not conforms(value, tp):
        raise ConfigurationError(
            f"{source}: field '{where}' expects {type_name(tp)}, got {value!r} ({type(value).__name__})"
        )
    return value


def parse_manifest(text: str, source: str = MANIFEST_NAME) -> Manifest:
    """Parse manifest YAML; a bad manifest raises :class:`ConfigurationError` naming ``source`` and the field."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigurationError(f"{source}: not valid YAML: {exc}") from None
    manifest = _build(Manifest, data, "", source)
    dtb = manifest.spec.dtb
    if dtb is not None and dtb.default not in dtb.variants:
        raise ConfigurationError(
            f"{source}: field 'spec.dtb.default' names {dtb.default!r}, which is not one of spec.dtb.variants "
            f"({', '.join(dtb.variants) or 'none'})"
        )
    if dtb is not None and dtb.variants[dtb.default].file is None:
        raise ConfigurationError(f"{source}: field 'spec.dtb.variants.{dtb.default}.file': the default variant needs a file")
    target = manifest.spec.default_target
    if target is not None and manifest.spec.targets and target not in manifest.spec.targets:
        raise ConfigurationError(
            f"{source}: field 'spec.default_target' names {target!r}, not one of spec.targets "
            f"({', '.join(manifest.spec.targets)})"
        )
    return manifest


@dataclass(frozen=True)
class Bundle:
    """A bundle on local disk: its root directory and parsed manifest."""

    root: Path
    manifest: Manifest
    manifest_yaml: str

    @classmethod
    def load(cls, root: str | os.PathLike, manifest: str = MANIFEST_NAME) -> Bundle:
        """Read ``root/manifest`` and check that the files it names exist."""
        root = Path(root)
        path = root / manifest
        try:
            text = path.read_text()
        except OSError as exc:
            raise ConfigurationError(f"flasher bundle {root}: cannot read its manifest {path}: {exc.strerror}") from None
        parsed = parse_manifest(text, source=str(path))
        bundle = cls(root, parsed, text)
        for where, name in bundle.files():
            if not (root / name).is_file():
                raise ConfigurationError(f"{path}: field '{where}' names {name!r}, which is not a file in the bundle")
        return bundle

    def files(self) -> list[tuple[str, str]]:
        """``(field, relative path)`` of every file the manifest names."""
        spec = self.manifest.spec
        named = [("spec.kernel.file", spec.kernel.file)]
        if spec.initram is not None:
            named.append(("spec.initram.file", spec.initram.file))
        if spec.dtb is not None:
            named += [(f"spec.dtb.variants.{k}.file", v.file) for k, v in spec.dtb.variants.items() if v.file]
        return named

    def path(self, relative: str) -> Path:
        """The local path of a bundle file."""
        return self.root / relative


# sources --------------------------------------------------------------------------------------

_OCI = re.compile(r"^(oci://)?(?P<host>[A-Za-z0-9.-]+(:\d+)?)/(?P<rest>[^\s]+)$")


def is_oci_reference(ref: str) -> bool:
    """Whether ``ref`` reads as an OCI reference rather than a local path.

    >>> is_oci_reference("quay.io/jumpstarter-dev/bundle:latest"), is_oci_reference("./bundle")
    (True, False)
    >>> is_oci_reference("127.0.0.1:5000/b@sha256:" + "0" * 64)
    True
    """
    if ref.startswith("oci://"):
        return True
    if ref.startswith((".", "/", "~")) or os.path.exists(ref):
        return False
    match = _OCI.match(ref)
    return bool(match) and ("." in match["host"] or ":" in match["host"] or match["host"] == "localhost")


def _is_loopback(host: str) -> bool:
    name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name.strip("[]")).is_loopback
    except ValueError:
        return False


def _publish(tmp: Path, final: Path) -> Path:
    """Move a filled temporary directory into the cache, tolerating a concurrent winner."""
    (tmp / _COMPLETE).touch()
    try:
        tmp.rename(final)
    except OSError:
        if not (final / _COMPLETE).exists():
            raise
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _extract_tar(archive: Path, cache_dir: Path) -> Path:
    final = cache_dir / "tar" / sha256_file(archive)
    if (final / _COMPLETE).exists():
        logger.debug("bundle %s already unpacked at %s", archive, final)
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=".unpack-"))
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(tmp, filter="data")
    except (tarfile.TarError, OSError) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ConfigurationError(f"flasher bundle {archive}: cannot unpack it: {exc}") from None
    try:
        entries = list(tmp.iterdir())
        if not (tmp / MANIFEST_NAME).exists() and len(entries) == 1 and entries[0].is_dir():
            inner = entries[0]
            for item in inner.iterdir():
                item.rename(tmp / item.name)
            inner.rmdir()
        return _publish(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # nothing half-unpacked stays in the cache
        raise


def _oras_client(host: str, cacert: str | None) -> Any:
    import oras.client

    insecure = _is_loopback(host)
    tls_verify: bool | str = cacert if cacert else True
    return oras.client.OrasClient(hostname=host, insecure=insecure, tls_verify=tls_verify)


def resolve_digest(reference: str, cacert: str | None = None) -> str:
    """The manifest digest (``sha256:...``) an OCI reference names, asked of its registry."""
    import requests

    ref = reference.removeprefix("oci://")
    if "@sha256:" in ref:
        return "sha256:" + ref.split("@sha256:", 1)[1]
    import oras.defaults

    client = _oras_client(ref.split("/", 1)[0], cacert)
    container = client.get_container(ref)
    url = f"{client.prefix}://{container.manifest_url()}"
    try:
        response = client.session.get(
            url,
            headers={"Accept": ", ".join(oras.defaults.default_manifest_accepted_media_types)},
            timeout=30,
            verify=cacert or True,
        )
    except requests.RequestException as exc:
        raise DriverError(f"flasher bundle {reference}: cannot reach the registry: {exc}") from None
    if response.status_code != 200:
        raise DriverError(
            f"flasher bundle {reference}: the registry answered {response.status_code} for the manifest; "
            "check the reference (host/repository:tag) and that the artifact was pushed"
        )
    return "sha256:" + hashlib.sha256(response.content).hexdigest()


def pull_oci(reference: str, cache_dir: str | os.PathLike, cacert: str | None = None) -> Path:
    """Pull an OCI bundle into ``cache_dir`` under its digest; a cached digest is not pulled again."""
    ref = reference.removeprefix("oci://")
    digest = resolve_digest(ref, cacert)
    final = Path(cache_dir) / "oci" / digest.replace(":", "-")
    if (final / _COMPLETE).exists():
        logger.info("flasher bundle %s (%s) is cached at %s", reference, digest, final)
        return final
    repository = ref.split("@", 1)[0]
    if ":" in repository.rsplit("/", 1)[-1]:
        repository = repository.rsplit(":", 1)[0]
    pinned = f"{repository}@{digest}"
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=".pull-"))
    logger.info("pulling flasher bundle %s (%s)", reference, digest)
    try:
        client = _oras_client(ref.split("/", 1)[0], cacert)
        client.pull(target=pinned, outdir=str(tmp))
    except Exception as exc:  # noqa: BLE001 - oras raises plain exceptions of many kinds
        shutil.rmtree(tmp, ignore_errors=True)
        raise DriverError(f"flasher bundle {reference}: pull of {pinned} failed: {exc}") from None
    try:
        return _publish(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def fetch_bundle(
    source: str | os.PathLike, cache_dir: str | os.PathLike, cacert: str | None = None
) -> Path:
    """The local directory of a bundle given as a directory, a ``.tar``/``.tar.gz`` or an OCI reference."""
    text = os.fspath(source)
    path = Path(text).expanduser()
    if path.is_dir():
        return path
    if path.is_file():
        if not tarfile.is_tarfile(path):
            raise ConfigurationError(
                f"flasher bundle {text} is a file but not a tar archive; give a directory, a .tar/.tar.gz or an "
                "OCI reference"
            )
        return _extract_tar(path, Path(cache_dir))
    if is_oci_reference(text):
        return pull_oci(text, cache_dir, cacert)
    raise ConfigurationError(
        f"flasher bundle {text!r} is neither an existing directory or tar file nor an OCI reference "
        "(host/repository:tag)"
    )

