"""Flasher bundles: the manifest and where a bundle comes from.

A bundle is a directory with a ``manifest.yaml`` and the files it names. It may come as that
directory, as a ``.tar``/``.tar.gz`` of it, or as an OCI artifact from a registry.

Bundles are untrusted input: the files a manifest names must be inside the bundle, archives
and OCI layers are unpacked member by member (a link must point down into the bundle, no
``..``, no absolute name, no device), and a bundle holds at most ``max_size`` bytes
(:data:`MAX_BUNDLE_SIZE` by default) in at most :data:`MAX_MEMBERS` archive members. An OCI
artifact has at most :data:`MAX_LAYERS` layers and is pulled within ``timeout`` seconds
(:data:`DOWNLOAD_TIMEOUT` by default), however slowly the registry sends.

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

import contextlib
import hashlib
import ipaddress
import json
import logging
import os
import posixpath
import re
import shutil
import tarfile
import tempfile
import time
import types
import typing
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path, PurePosixPath
from collections.abc import Iterator
from typing import Any

import yaml

from ..core.config import BoundedSafeLoader, short_repr, yaml_error
from ..core.driver import conforms, type_name
from ..core.errors import ConfigurationError, DriverError
from ..storage.driver import inside
from .common import sha256_file

logger = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.yaml"
_COMPLETE = ".complete"

#: Default bound of a bundle's size: the bytes its archive or layers unpack to, or its named files hold.
MAX_BUNDLE_SIZE = 1 << 30
#: Most members one bundle archive (or OCI layer) may hold.
MAX_MEMBERS = 10_000
#: Largest manifest (``manifest.yaml`` or an OCI image manifest) read.
MAX_MANIFEST = 1 << 20
#: Most layers an OCI bundle may have.
MAX_LAYERS = 256
#: Default bound, in seconds, of a whole download: an OCI pull, an image fetched for ``flash(url)``.
DOWNLOAD_TIMEOUT = 3600.0
#: Seconds one read from a server may take (less when the download's deadline is nearer).
READ_TIMEOUT = 30.0
#: OCI media type of a layer that is a gzipped tar of a directory (what ``oras push`` makes of one).
OCI_DIR_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_TITLE = "org.opencontainers.image.title"


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
            raise ConfigurationError(f"{source}: field '{where}' expects a mapping, got {short_repr(value)}")
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
            raise ConfigurationError(f"{source}: field '{where}' expects a mapping, got {short_repr(value)}")
        return {str(k): _build(args[1], v if v is not None else {}, f"{where}.{k}", source) for k, v in value.items()}
    if origin is list:
        if not isinstance(value, list):
            raise ConfigurationError(f"{source}: field '{where}' expects a list, got {short_repr(value)}")
        return [_build(args[0], v, f"{where}[{i}]", source) for i, v in enumerate(value)]
    if not conforms(value, tp):
        raise ConfigurationError(
            f"{source}: field '{where}' expects {type_name(tp)}, got {short_repr(value)} ({type(value).__name__})"
        )
    return value


def parse_manifest(text: str, source: str = MANIFEST_NAME) -> Manifest:
    """Parse manifest YAML; a bad manifest raises :class:`ConfigurationError` naming ``source`` and the field.

    The YAML is loaded with the bounds of exporter files (alias expansion, nesting, duplicate keys).
    """
    try:
        data = yaml.load(text, Loader=BoundedSafeLoader)  # a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise yaml_error(source, exc) from None
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
    label: str = ""

    @classmethod
    def load(cls, root: str | os.PathLike, manifest: str = MANIFEST_NAME, *, label: str | None = None,
             max_size: int = MAX_BUNDLE_SIZE) -> Bundle:
        """Read ``root/manifest`` and check the files it names: inside the bundle, present, at most ``max_size`` bytes.

        Errors name the bundle as ``label`` (default: its path), so a bundle a client named is
        reported in the client's words, not with the exporter's paths.
        """
        root = Path(os.path.realpath(root))
        label = label or str(root)
        source = f"{label.rstrip('/')}/{manifest}"
        path, reason = inside(root, manifest)
        if path is None:
            raise ConfigurationError(f"flasher bundle {label}: its manifest {manifest!r} leads out of the bundle ({reason})")
        try:
            with path.open("rb") as f:
                raw = f.read(MAX_MANIFEST + 1)
        except OSError as exc:
            raise ConfigurationError(f"flasher bundle {label}: cannot read its manifest {manifest}: {exc.strerror}") from None
        if len(raw) > MAX_MANIFEST:
            raise ConfigurationError(f"{source}: larger than {MAX_MANIFEST} bytes; not a flasher bundle manifest")
        try:
            text = raw.decode()
        except UnicodeDecodeError as exc:
            raise ConfigurationError(f"{source}: byte {exc.start} is not UTF-8; a manifest is YAML text") from None
        bundle = cls(root, parse_manifest(text, source=source), text, label)
        total = 0
        for where, name in bundle.files():
            file, reason = inside(root, name)
            if file is None:
                raise ConfigurationError(
                    f"{source}: field '{where}' names {name!r}, which leads out of the bundle (it {reason}); "
                    "name a file inside the bundle"
                )
            if not file.is_file():
                raise ConfigurationError(f"{source}: field '{where}' names {name!r}, which is not a file in the bundle")
            total += file.stat().st_size
        if total > max_size:
            raise ConfigurationError(
                f"{source}: the files the manifest names hold {total} bytes, more than {max_size} (max_bundle_size)"
            )
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
        """The real local path of a bundle file (checked again: still inside the bundle)."""
        path, reason = inside(self.root, relative)
        if path is None:
            raise ConfigurationError(f"flasher bundle {self.label or self.root}: {relative!r} leads out of the bundle ({reason})")
        return path


# sources --------------------------------------------------------------------------------------

_OCI = re.compile(r"^(oci://)?(?P<host>[A-Za-z0-9.-]+(:\d+)?)/(?P<rest>[^\s]+)$")


def is_oci_reference(ref: str) -> bool:
    """Whether ``ref`` reads as an OCI reference rather than a local path.

    >>> is_oci_reference("quay.io/jumpstarter-dev/bundle:latest"), is_oci_reference("./bundle")
    (True, False)
    >>> is_oci_reference("127.0.0.1:5000/b@sha256:" + "0" * 64)
    True
    """
    return looks_like_oci_reference(ref) and (ref.startswith("oci://") or not os.path.exists(ref))


def looks_like_oci_reference(ref: str) -> bool:
    """Whether ``ref`` is written as an OCI reference (``host/repository...``), whatever exists on disk.

    >>> looks_like_oci_reference("boards.lab/b.tar.gz"), looks_like_oci_reference("mine/b.tar.gz")
    (True, False)
    """
    if ref.startswith("oci://"):
        return True
    if ref.startswith((".", "/", "~")):
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


def _member_problem(member: tarfile.TarInfo) -> str | None:
    """Why an archive member may not be unpacked into a bundle, or ``None``."""
    name = PurePosixPath(member.name)
    if "\0" in member.name or "\0" in member.linkname:
        return "holds a NUL byte"
    if name.is_absolute():
        return "has an absolute name"
    if ".." in name.parts:
        return "climbs out with '..'"
    if not (member.isfile() or member.isdir() or member.issym() or member.islnk()):
        return "is a device, FIFO or other special file"
    if member.issym() or member.islnk():
        kind = "symbolic link" if member.issym() else "hard link"
        target = PurePosixPath(member.linkname)
        if target.is_absolute():
            return f"is a {kind} to an absolute path"
        if ".." in target.parts:
            return f"is a {kind} that climbs out with '..' (links must point down into the bundle)"
    return None


#: Largest extended header (a GNU long name or link, a pax header) an archive member may have,
#: and most such headers in a row before one member (tarfile holds them all while it reads on).
MAX_MEMBER_HEADER = 1 << 20
MAX_EXTENDED_IN_A_ROW = 8
_EXTENDED_HEADERS = (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.XHDTYPE, tarfile.XGLTYPE,
                     tarfile.SOLARIS_XHDTYPE)


class _HeaderRefused(Exception):
    """An archive member header that would make :mod:`tarfile` read without bound."""


class _BoundedTarInfo(tarfile.TarInfo):
    """Member headers read with bounds: tarfile reads an extended header or a sparse map whole into
    memory, so a few hundred kB of gzip could make it hold gigabytes. Sparse files are refused
    (a bundle needs none); ``_proc_member`` is the hook tarfile leaves to subclasses."""

    def _proc_member(self, tarfile_: tarfile.TarFile) -> tarfile.TarInfo:
        if self.type == tarfile.GNUTYPE_SPARSE:
            raise _HeaderRefused("is a sparse file")
        if self.type not in _EXTENDED_HEADERS:
            return super()._proc_member(tarfile_)
        if self.size > MAX_MEMBER_HEADER:
            raise _HeaderRefused(f"has an extended header of {self.size} bytes (more than {MAX_MEMBER_HEADER})")
        in_a_row = getattr(tarfile_, "_extended_in_a_row", 0) + 1  # tarfile reads the next header from within
        if in_a_row > MAX_EXTENDED_IN_A_ROW:
            raise _HeaderRefused(f"has more than {MAX_EXTENDED_IN_A_ROW} extended headers in a row")
        tarfile_._extended_in_a_row = in_a_row  # type: ignore[attr-defined]
        try:
            return super()._proc_member(tarfile_)
        finally:
            tarfile_._extended_in_a_row = in_a_row - 1  # type: ignore[attr-defined]

    def _proc_gnusparse_10(self, next: tarfile.TarInfo, pax_headers: dict, tarfile_: tarfile.TarFile) -> None:
        raise _HeaderRefused("is a sparse file (pax GNU sparse 1.0, whose map is read whole)")


def _is_tar(path: Path) -> bool:
    """:func:`tarfile.is_tarfile`, reading the first member header with the bounds of :func:`unpack`."""
    try:
        tarfile.open(path, tarinfo=_BoundedTarInfo).close()
    except _HeaderRefused:
        return True  # a tar archive: unpack refuses it, saying why
    except tarfile.TarError:
        return False
    return True


def unpack(archive: str | os.PathLike, dest: Path, label: str, max_size: int) -> int:
    """Unpack the tar ``archive`` into the real directory ``dest`` member by member; the bytes of its files.

    Every member is checked before it is written (:func:`_member_problem`), its directory must
    really be inside ``dest`` (no link leads out), and the running size of its files stays within
    ``max_size`` and its member count within :data:`MAX_MEMBERS`; the first that is not is a
    :class:`ConfigurationError` naming ``label`` and the member. The caller removes ``dest`` then.
    """
    total = 0
    try:
        with tarfile.open(archive, tarinfo=_BoundedTarInfo) as tar:
            for count, member in enumerate(tar, 1):
                if count > MAX_MEMBERS:
                    raise ConfigurationError(f"flasher bundle {label}: holds more than {MAX_MEMBERS} members; refused")
                problem = _member_problem(member)
                if problem is None:
                    parent, _ = inside(dest, posixpath.dirname(member.name) or ".")
                    if parent is None:
                        problem = "is below a link that leads out of the bundle"
                    elif member.islnk() and inside(dest, member.linkname)[0] is None:
                        problem = "is a hard link through a link that leads out of the bundle"
                if problem is not None:
                    raise ConfigurationError(f"flasher bundle {label}: archive member {member.name!r} {problem}; refused")
                if member.isfile():
                    total += member.size
                    if total > max_size:
                        raise ConfigurationError(
                            f"flasher bundle {label}: unpacks to more than {max_size} bytes (max_bundle_size); "
                            f"refused at member {member.name!r}"
                        )
                tar.extract(member, dest, filter="data")  # the standard library's checks as a second line
    except _HeaderRefused as exc:
        raise ConfigurationError(f"flasher bundle {label}: an archive member {exc}; refused") from None
    except (tarfile.TarError, OSError) as exc:
        detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise ConfigurationError(f"flasher bundle {label}: cannot unpack it: {detail}") from None
    return total


def _extract_tar(archive: Path, cache_dir: Path, label: str, max_size: int) -> Path:
    final = cache_dir / "tar" / sha256_file(archive)
    if (final / _COMPLETE).exists():
        logger.debug("bundle %s already unpacked at %s", label, final)
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=".unpack-"))
    try:
        unpack(archive, Path(os.path.realpath(tmp)), label, max_size)
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


def read_timeout(deadline: float) -> float:
    """The timeout of one read: :data:`READ_TIMEOUT`, or what is left before ``deadline`` (``time.monotonic``)."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError
    return min(READ_TIMEOUT, left)


def iter_body(response: Any, limit: int, deadline: float) -> Iterator[bytes]:
    """The body of a streamed ``requests`` response, chunk by chunk as it arrives (content encoding
    undone); ``OverflowError`` past ``limit`` bytes, ``TimeoutError`` past ``deadline`` (``time.monotonic``).

    Each read returns what has arrived, so a server that drips a byte at a time meets the deadline
    (``iter_content`` waits for whole chunks, a read timeout only for silence).
    """
    import urllib3

    size = 0
    while True:
        read_timeout(deadline)
        try:
            chunk = response.raw.read1(1 << 20, decode_content=True)
        except urllib3.exceptions.HTTPError as exc:  # a read timeout, a reply cut short or badly encoded
            raise ConnectionError(f"the reply broke off: {exc}") from None
        if not chunk:
            return
        size += len(chunk)
        if size > limit:
            raise OverflowError(size)
        yield chunk


def _registry_get(client: Any, url: str, reference: str, what: str, cacert: str | None, deadline: float,
                  **kwargs: Any) -> Any:
    """GET from the registry, the response streamed; an error names ``reference`` and ``what``.

    A connection that breaks before any reply is tried once more on a new one: the session reuses
    kept-alive connections, and a registry (or a proxy before it) may close one just as it is reused.
    """
    import requests

    for attempt in (1, 2):
        try:
            response = client.session.get(url, timeout=read_timeout(deadline), verify=cacert or True, stream=True,
                                          **kwargs)
            break
        except requests.ConnectionError as exc:
            if attempt == 2 or isinstance(exc, requests.Timeout):
                raise DriverError(f"flasher bundle {reference}: cannot reach the registry: {exc}") from None
            logger.debug("bundle %s: the %s request broke off (%s); trying a new connection", reference, what, exc)
        except requests.RequestException as exc:
            raise DriverError(f"flasher bundle {reference}: cannot reach the registry: {exc}") from None
    if response.status_code != 200:
        response.close()
        raise DriverError(
            f"flasher bundle {reference}: the registry answered {response.status_code} for the {what}; "
            "check the reference (host/repository:tag) and that the artifact was pushed"
        )
    return response


def _read_bounded(response: Any, limit: int, deadline: float, out: Any = None) -> tuple[bytes, int, str]:
    """Read a streamed response: ``(content if no out, bytes read, sha256 digest)``; see :func:`iter_body`."""
    digest, size, kept = hashlib.sha256(), 0, []
    with response:
        for chunk in iter_body(response, limit, deadline):
            size += len(chunk)
            digest.update(chunk)
            if out is not None:
                out.write(chunk)
            else:
                kept.append(chunk)
    return b"".join(kept), size, "sha256:" + digest.hexdigest()


def _manifest(client: Any, container: Any, reference: str, cacert: str | None, deadline: float) -> tuple[bytes, str]:
    """The raw image manifest a reference names and its digest."""
    import oras.defaults

    url = f"{client.prefix}://{container.manifest_url()}"
    response = _registry_get(client, url, reference, "manifest", cacert, deadline,
                             headers={"Accept": ", ".join(oras.defaults.default_manifest_accepted_media_types)})
    try:
        content, _, digest = _read_bounded(response, MAX_MANIFEST, deadline)
    except OverflowError:
        raise DriverError(f"flasher bundle {reference}: its manifest is larger than {MAX_MANIFEST} bytes") from None
    return content, digest


def resolve_digest(reference: str, cacert: str | None = None, timeout: float = DOWNLOAD_TIMEOUT) -> str:
    """The manifest digest (``sha256:...``) an OCI reference names, asked of its registry within ``timeout`` s."""
    ref = reference.removeprefix("oci://")
    if "@sha256:" in ref:
        return "sha256:" + ref.split("@sha256:", 1)[1]
    client = _oras_client(ref.split("/", 1)[0], cacert)
    with _pulling(reference, timeout):
        return _manifest(client, client.get_container(ref), reference, cacert, time.monotonic() + timeout)[1]


@contextlib.contextmanager
def _pulling(reference: str, timeout: float) -> Iterator[None]:
    """A registry's reply that breaks off or outlasts the pull's deadline is a :class:`DriverError`."""
    try:
        yield
    except TimeoutError:
        raise DriverError(f"flasher bundle {reference}: not pulled within {timeout:g} s (download_timeout); "
                          "refused") from None
    except ConnectionError as exc:
        raise DriverError(f"flasher bundle {reference}: {exc}") from None


def pull_oci(reference: str, cache_dir: str | os.PathLike, cacert: str | None = None, *,
             max_size: int = MAX_BUNDLE_SIZE, timeout: float = DOWNLOAD_TIMEOUT) -> Path:
    """Pull an OCI bundle into ``cache_dir`` under its digest; a cached digest is not pulled again.

    The layers are fetched and unpacked here, not by the OCI client library: a layer's title
    must stay inside the bundle, a directory layer is unpacked with :func:`unpack`, each blob
    must match its digest, the layers (at most :data:`MAX_LAYERS`) together hold at most
    ``max_size`` bytes, declared and unpacked, and the whole pull ends within ``timeout`` seconds.
    """
    ref = reference.removeprefix("oci://")
    deadline = time.monotonic() + timeout
    digest = resolve_digest(ref, cacert, timeout)
    final = Path(cache_dir) / "oci" / digest.replace(":", "-")
    if (final / _COMPLETE).exists():
        logger.info("flasher bundle %s (%s) is cached at %s", reference, digest, final)
        return final
    repository = ref.split("@", 1)[0]
    if ":" in repository.rsplit("/", 1)[-1]:
        repository = repository.rsplit(":", 1)[0]
    pinned = f"{repository}@{digest}"
    client = _oras_client(ref.split("/", 1)[0], cacert)
    container = client.get_container(pinned)
    with _pulling(reference, timeout):
        return _pull(client, container, reference, digest, final, cacert, max_size, deadline)


def _pull(client: Any, container: Any, reference: str, digest: str, final: Path, cacert: str | None, max_size: int,
          deadline: float) -> Path:
    content, got = _manifest(client, container, reference, cacert, deadline)
    if got != digest:
        raise DriverError(f"flasher bundle {reference}: the registry sent a manifest that does not match {digest}")
    try:
        layers = list(json.loads(content).get("layers") or [])
        declared = sum(int(layer.get("size", 0)) for layer in layers)
    except (ValueError, TypeError, AttributeError):
        raise DriverError(f"flasher bundle {reference}: its manifest is not an OCI image manifest") from None
    if len(layers) > MAX_LAYERS:
        raise DriverError(f"flasher bundle {reference}: it has {len(layers)} layers, more than {MAX_LAYERS}; refused")
    if declared > max_size:
        raise DriverError(
            f"flasher bundle {reference}: its layers hold {declared} bytes, more than {max_size} (max_bundle_size)"
        )
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=".pull-"))
    logger.info("pulling flasher bundle %s (%s)", reference, digest)
    try:
        root = Path(os.path.realpath(tmp))
        total = 0
        for layer in layers:
            total += _pull_layer(client, container, layer, root, reference, cacert, max_size - total, deadline)
        return _publish(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # nothing half-pulled stays in the cache
        raise


def _pull_layer(client: Any, container: Any, layer: dict, root: Path, reference: str, cacert: str | None,
                room: int, deadline: float) -> int:
    """Fetch one layer into the bundle directory ``root``; the bytes it added."""
    title = (layer.get("annotations") or {}).get(OCI_TITLE)
    if not title:
        logger.debug("flasher bundle %s: skipping layer %s without a title", reference, layer.get("digest"))
        return 0
    where, reason = inside(root, str(title))
    parent, _ = inside(root, posixpath.dirname(str(title)) or ".")
    if where is None or parent is None or where == root:
        raise DriverError(f"flasher bundle {reference}: layer title {title!r} leads out of the bundle "
                          f"({reason or 'it names the bundle itself'}); refused")
    parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=root.parent, prefix=".blob-")  # beside the bundle, where no member can reach
    os.close(fd)
    blob = Path(name)
    try:
        url = f"{client.prefix}://{container.get_blob_url(layer['digest'])}"
        response = _registry_get(client, url, reference, f"layer {title!r}", cacert, deadline)
        try:
            with blob.open("wb") as out:
                _, size, got = _read_bounded(response, min(room, int(layer.get("size", 0))), deadline, out)
        except OverflowError:
            raise DriverError(
                f"flasher bundle {reference}: layer {title!r} is larger than its declared size or than what is left "
                "of max_bundle_size; refused"
            ) from None
        if got != layer["digest"]:
            raise DriverError(f"flasher bundle {reference}: layer {title!r} does not match its digest {layer['digest']}")
        if layer.get("mediaType") == OCI_DIR_LAYER:
            return unpack(blob, parent, reference, room)
        os.replace(blob, where)
        return size
    finally:
        blob.unlink(missing_ok=True)


def fetch_bundle(
    source: str | os.PathLike, cache_dir: str | os.PathLike, cacert: str | None = None, *,
    label: str | None = None, max_size: int = MAX_BUNDLE_SIZE, timeout: float = DOWNLOAD_TIMEOUT,
) -> Path:
    """The local directory of a bundle given as a directory, a ``.tar``/``.tar.gz`` or an OCI reference.

    Errors name the bundle as ``label`` (default: ``source`` as given); an archive or OCI
    artifact unpacks to at most ``max_size`` bytes; an OCI pull ends within ``timeout`` seconds.
    """
    text = os.fspath(source)
    label = label or text
    path = Path(text).expanduser()
    if path.is_dir():
        return path
    if path.is_file():
        if not _is_tar(path):
            raise ConfigurationError(
                f"flasher bundle {label} is a file but not a tar archive; give a directory, a .tar/.tar.gz or an "
                "OCI reference"
            )
        return _extract_tar(path, Path(cache_dir), label, max_size)
    if is_oci_reference(text):
        return pull_oci(text, cache_dir, cacert, max_size=max_size, timeout=timeout)
    raise ConfigurationError(
        f"flasher bundle {label!r} is neither an existing directory or tar file nor an OCI reference "
        "(host/repository:tag)"
    )

