"""BaseFlasher: writes an image to a board through U-Boot, with the files of a flasher bundle.

The flasher stages the bundle's kernel, initramfs and chosen device tree in its TFTP root,
boots the board into U-Boot and then either lets U-Boot write the image itself (method
``uboot``: chunks over TFTP, ``mmc write``/``virtio write``, read back and CRC-checked) or boots
the bundle's Linux and lets it fetch the image over HTTP (method ``busybox``). Every step is
named in errors, with the console tail; transient failures are retried, configuration errors
never.
"""

from __future__ import annotations

import contextlib
import fnmatch
import functools
import os
import posixpath
import re
import shlex
import shutil
import tempfile
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar
from urllib.parse import quote, unquote, urljoin, urlsplit

import anyio

from ..core.driver import Driver, export
from ..core.errors import ConfigurationError
from ..http.driver import HttpServer
from ..storage.common import CHUNK
from ..storage.driver import Storage, host_errors, inside, resolve_inside
from ..tftp.driver import Tftp
from ..uboot.common import ConsoleError, StepFailed
from ..uboot.console import ShellConsole, UBootConsole, call_maybe_async
from ..uboot.driver import UBoot
from .bundle import (
    DOWNLOAD_TIMEOUT,
    MAX_BUNDLE_SIZE,
    Bundle,
    fetch_bundle,
    iter_body,
    looks_like_oci_reference,
    pull_oci,
    read_timeout,
)
from .common import BLOCK_SIZE, FlashResult, sha256_file

T = TypeVar("T")

DEFAULT_CACHE = "~/.cache/jumpstarter-toolkit/bundles"
METHODS = ("uboot", "busybox")
#: Redirects an image download follows (each one checked against ``allowed_urls``).
MAX_REDIRECTS = 5
#: Default bound of an image ``flash(url)`` downloads (images are often larger than bundles).
MAX_DOWNLOAD_SIZE = 16 << 30
_DEFAULT_PORTS = {"http": 80, "https": 443}


def _is_url_prefix(text: str) -> bool:
    """Whether ``text`` is an http(s) URL with a host, a numeric port if any, and no user name or password."""
    try:
        parts = urlsplit(text)
        return (parts.scheme in _DEFAULT_PORTS and bool(parts.hostname) and not (parts.username or parts.password)
                and (parts.port is None or parts.port > 0))
    except ValueError:  # a port that is not a number
        return False


def url_allowed(url: str, prefixes: list[str]) -> bool:
    """Whether ``url`` is under one of the URL ``prefixes``: same scheme, host and port, its path
    below the prefix's, no user name or password, no ``..`` segment.

    >>> url_allowed("https://images.lab/boards/a.img", ["https://images.lab/boards/"])
    True
    >>> [url_allowed(u, ["https://images.lab/boards/"]) for u in (
    ...     "https://images.lab/boards/../secret", "https://images.lab:8443/boards/a.img",
    ...     "http://images.lab/boards/a.img", "https://images.lab@127.0.0.1/boards/a.img")]
    [False, False, False, False]
    """
    try:
        parts = urlsplit(url)
        port = parts.port or _DEFAULT_PORTS.get(parts.scheme)
    except ValueError:
        return False
    path = unquote(parts.path) or "/"
    if parts.scheme not in _DEFAULT_PORTS or parts.username or parts.password or ".." in path.split("/"):
        return False
    for prefix in prefixes:
        allowed = urlsplit(prefix)
        if ((allowed.scheme, allowed.hostname, allowed.port or _DEFAULT_PORTS.get(allowed.scheme))
                == (parts.scheme, parts.hostname, port) and path.startswith(allowed.path or "/")):
            return True
    return False


@dataclass(kw_only=True)
class BaseFlasher(Driver):
    """Flashes a board through U-Boot with a flasher bundle.

    ``flasher_bundle`` is a directory, a ``.tar``/``.tar.gz`` or an OCI reference (pulled into
    ``cache_dir`` once per digest); ``variant`` picks a device tree; ``uboot_targets`` maps
    target names to U-Boot block devices (``usd: "mmc 0"``) for method ``uboot``, where a target
    may also be written directly as ``"virtio 0"``. ``tftp_blocksize`` and ``tftp_windowsize``
    set U-Boot's ``tftpblocksize`` and ``tftpwindowsize`` (RFC 7440; several blocks in flight
    tripled QEMU's load rate in ``benchmarks/flash.py``). Children ``serial`` and ``power`` are
    required; ``tftp``, ``http`` and ``uboot`` are created when not given.
    """

    required_children: ClassVar[dict[str, type | tuple[type, ...]]] = {"serial": Driver, "power": Driver}

    flasher_bundle: str
    variant: str | None = None
    #: The bundle's manifest: a file name relative to the bundle's root (one leading out of the bundle is refused).
    manifest: str = "manifest.yaml"
    #: The target ``flash`` writes when none is named; unset, the manifest's ``default_target`` is used.
    default_target: str | None = None
    cache_dir: str = DEFAULT_CACHE
    #: Root directory of the TFTP server created when no ``tftp`` child is given (``~`` expanded); unset, a
    #: temporary directory removed when the driver closes. Image chunks are staged there during a flash.
    tftp_dir: str | None = None
    #: Root directory of the HTTP storage created when no ``http`` child is given (``~`` expanded): where
    #: clients upload images and bundles. Unset, a temporary directory removed when the driver closes.
    http_dir: str | None = None
    #: A CA certificate file (PEM) trusted for HTTPS: OCI registries, and image URLs under ``allowed_urls``.
    #: Unset, the system's trusted CAs.
    cacert: str | None = None
    #: How ``flash`` writes when the caller names no method: ``uboot`` loads the image over TFTP in
    #: ``chunk_size`` pieces and writes each with U-Boot's block commands, checking a CRC-32 read back; ``busybox``
    #: boots the bundle's Linux and pipes the image from the HTTP server into ``dd``, checking its SHA-256.
    method: Literal["uboot", "busybox"] = "uboot"
    uboot_targets: dict[str, str] = field(default_factory=dict)
    #: Bytes loaded into RAM and written per step with method ``uboot`` (default 32 MiB); a positive
    #: multiple of 512. Twice this much RAM above the load address is used (a chunk and its read-back).
    chunk_size: int = 32 << 20
    #: RAM address (hexadecimal, such as ``0x48000000``) where method ``uboot`` loads each chunk; unset,
    #: U-Boot's ``loadaddr``, else ``kernel_addr_r``.
    load_address: str | None = None
    tftp_blocksize: int | None = None
    tftp_windowsize: int | None = None
    #: How many more times a step that failed transiently (a stalled boot, a load with a wrong size or
    #: CRC) is tried before the flash fails; 0 tries once. Must be >= 0.
    retries: int = 2
    #: Seconds from running the boot command to the bundle's Linux shell prompt (logged in), for method
    #: ``busybox`` and when booting Linux from a boot strategy.
    login_timeout: float = 120.0
    #: Seconds one write or read-back may take: a chunk's block command with method ``uboot``, the whole
    #: ``wget | dd`` and its ``sha256sum`` with method ``busybox``.
    write_timeout: float = 1800.0
    #: Glob patterns (``fnmatch``) of the bundles a client may choose besides its own uploads: absolute
    #: paths on the exporter (``/srv/bundles/*.tar.gz``) and OCI references (``quay.io/lab/bundle:*``). Empty: uploads only.
    bundle_sources: list[str] = field(default_factory=list)
    #: http(s) URL prefixes (``https://images.lab/boards/``) the exporter may download images from when a
    #: client passes a URL, redirects included; same scheme, host and port, no ``..``. Empty: no downloads.
    allowed_urls: list[str] = field(default_factory=list)
    #: Most bytes a flasher bundle may hold (default 1 GiB): what its archive or OCI layers unpack to,
    #: and what the files its manifest names hold together. Must be positive.
    max_bundle_size: int = MAX_BUNDLE_SIZE
    #: Most bytes an image ``flash`` downloads from a URL may hold (default 16 GiB); a larger one is refused.
    #: Must be positive.
    max_download_size: int = MAX_DOWNLOAD_SIZE
    #: Seconds one download may take in all (default an hour): an image from a URL, or an OCI bundle pulled
    #: from its registry; one past it is refused. Must be positive.
    download_timeout: float = DOWNLOAD_TIMEOUT

    _bundle: Bundle | None = field(default=None, init=False, repr=False)
    _chosen: Bundle | None = field(default=None, init=False, repr=False)
    _variant: str | None = field(default=None, init=False, repr=False)
    _temp_dirs: list[tempfile.TemporaryDirectory] = field(default_factory=list, init=False, repr=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.chunk_size <= 0 or self.chunk_size % BLOCK_SIZE:
            raise ConfigurationError(
                f"{type(self).__name__}: config field 'chunk_size' must be a positive multiple of {BLOCK_SIZE}, "
                f"got {self.chunk_size}"
            )
        if self.retries < 0:
            raise ConfigurationError(f"{type(self).__name__}: config field 'retries' must be >= 0, got {self.retries}")
        for name in ("max_bundle_size", "max_download_size", "download_timeout"):
            if getattr(self, name) <= 0:
                raise ConfigurationError(
                    f"{type(self).__name__}: config field {name!r} must be positive, got {getattr(self, name)}"
                )
        for prefix in self.allowed_urls:
            if not _is_url_prefix(prefix):
                raise ConfigurationError(
                    f"{type(self).__name__}: config field 'allowed_urls': {prefix!r} is not an http(s) URL prefix "
                    "such as https://images.lab/boards/"
                )
        for name, device in self.uboot_targets.items():
            try:
                parse_block_device(device, f"{type(self).__name__}: config field 'uboot_targets.{name}'")
            except ValueError as exc:
                raise ConfigurationError(str(exc)) from None
        self._variant = self.variant
        if "tftp" not in self.children:
            self.children["tftp"] = Tftp(root_dir=self._dir(self.tftp_dir, "tftp"), host="127.0.0.1", port=0)
        if "http" not in self.children:
            self.children["http"] = HttpServer(root_dir=self._dir(self.http_dir, "http"), host="127.0.0.1", port=0)
        uboot = self.children.setdefault("uboot", UBoot())
        if not isinstance(uboot, UBoot):
            raise ConfigurationError(f"{type(self).__name__}: child 'uboot' must be UBoot, got {type(uboot).__name__}")
        if "serial" not in uboot.children:
            uboot.bind(self.children["serial"], self.children["power"])
        self._remove_chunks()  # a flash killed mid-way (SIGKILL) left its image chunks in the TFTP root

    def _dir(self, configured: str | None, what: str) -> str:
        if configured:
            return str(Path(configured).expanduser())
        temp = tempfile.TemporaryDirectory(prefix=f"flasher-{what}-")
        self._temp_dirs.append(temp)
        return temp.name

    @classmethod
    def client(cls) -> str:
        return "jumpstarter_drivers.flashers.client.FlasherClient"

    def close(self) -> None:
        super().close()
        for temp in self._temp_dirs:
            temp.cleanup()
        self._temp_dirs.clear()

    # the bundle -------------------------------------------------------------------------------

    def bundle(self) -> Bundle:
        """The bundle in use: the one a client chose for its session, else the configured one (fetched once)."""
        if self._chosen is not None:
            return self._chosen
        if self._bundle is None:
            cache = Path(self.cache_dir).expanduser()
            root = fetch_bundle(self.flasher_bundle, cache, self.cacert, max_size=self.max_bundle_size,
                                timeout=self.download_timeout)
            self._bundle = Bundle.load(root, self.manifest, max_size=self.max_bundle_size)
            if self._variant is not None:
                self._check_variant(self._variant, self._bundle)
        return self._bundle

    def _client_bundle(self, source: str) -> Bundle:
        """A bundle a client names: uploaded into the HTTP storage, or allowed by ``bundle_sources``.

        Errors name the bundle as the client gave it, never with the exporter's paths.
        """
        cache = Path(self.cache_dir).expanduser()
        refused = ValueError(
            f"flasher bundle {source!r} is not allowed here: name a bundle uploaded to the flasher's HTTP storage "
            "(a path relative to it) or one matching config field 'bundle_sources' "
            f"({', '.join(self.bundle_sources) or 'none configured'})"
        )
        with host_errors(source):  # a failing cache write names the client's words, not the host's paths
            http_root = self._storage_root("http")
            uploaded, _ = inside(http_root, source)  # None for an absolute name
            if os.path.isabs(source):
                real = os.path.realpath(source)
                if ".." in Path(source).parts or not any(
                    fnmatch.fnmatchcase(real, p) for p in self.bundle_sources if p.startswith("/")
                ):
                    raise refused
                root = fetch_bundle(real, cache, self.cacert, label=source, max_size=self.max_bundle_size,
                                    timeout=self.download_timeout)
            elif (uploaded is None or not uploaded.exists()) and looks_like_oci_reference(source):
                # not an upload (its first folder may read like a registry host: 'v1.2/b.tar.gz' is an upload)
                reference = source.removeprefix("oci://")
                if not any(fnmatch.fnmatchcase(reference, p) for p in self.bundle_sources if not p.startswith("/")):
                    raise refused
                root = pull_oci(reference, cache, self.cacert, max_size=self.max_bundle_size,
                                timeout=self.download_timeout)
            else:
                path = resolve_inside(http_root, source, self.logger)
                root = fetch_bundle(path, cache, self.cacert, label=source, max_size=self.max_bundle_size,
                                    timeout=self.download_timeout)
            return Bundle.load(root, self.manifest, label=source, max_size=self.max_bundle_size)

    def _check_variant(self, name: str, bundle: Bundle | None = None) -> None:
        dtb = (bundle or self.bundle()).manifest.spec.dtb
        variants = list(dtb.variants) if dtb else []
        if name not in variants:
            raise ValueError(
                f"DTB variant {name!r} is not in the bundle; available variants: {', '.join(variants) or 'none'}"
            )

    def _dtb_file(self) -> str | None:
        dtb = self.bundle().manifest.spec.dtb
        if dtb is None:
            return None
        chosen = dtb.variants[self._variant or dtb.default]
        return chosen.file or dtb.variants[dtb.default].file

    def reset(self) -> None:
        """Back to the configuration: a client's bundle and DTB variant end with its session."""
        if self._chosen is not None or self._variant != self.variant:
            self.logger.info("session ended: back to the configured bundle and DTB variant")
        self._chosen = None
        self._variant = self.variant
        super().reset()

    @export
    def setup_flasher_bundle(self, force_flash_bundle: str | None = None) -> None:
        """Stage the kernel, initramfs and the chosen variant's DTB into the TFTP root under their base names.

        ``force_flash_bundle`` chooses another bundle for the rest of this client's session: one
        uploaded to the HTTP storage (a path relative to it) or one ``bundle_sources`` allows.
        """
        if force_flash_bundle:
            chosen = self._client_bundle(force_flash_bundle)
            if self._variant is not None:
                self._check_variant(self._variant, chosen)
            self._chosen = chosen
            self.logger.info("using flasher bundle %s until this session ends", force_flash_bundle)
        bundle = self.bundle()
        storage: Storage = self.children["tftp"].children["storage"]
        spec = bundle.manifest.spec
        files = [spec.kernel.file] + ([spec.initram.file] if spec.initram else []) + [f for f in [self._dtb_file()] if f]
        for relative in files:
            name = os.path.basename(relative)
            with bundle.path(relative).open("rb") as source:
                storage.write_chunks(name, iter(functools.partial(source.read, CHUNK), b""))
            self.logger.info("staged %s as %s", relative, name)

    @export
    def use_dtb_variant(self, name: str) -> None:
        """Choose the device tree variant (``ValueError`` listing the variants when unknown)."""
        self._check_variant(name)
        self._variant = name
        self.logger.info("using DTB variant %s", name)

    @export
    def get_dtb_filename(self) -> str | None:
        """Base name of the chosen variant's DTB (a variant without a file keeps the default's)."""
        file = self._dtb_file()
        return os.path.basename(file) if file else None

    @export
    def get_kernel_filename(self) -> str:
        """Base name of the kernel."""
        return os.path.basename(self.bundle().manifest.spec.kernel.file)

    @export
    def get_initram_filename(self) -> str | None:
        """Base name of the initramfs, or ``None``."""
        initram = self.bundle().manifest.spec.initram
        return os.path.basename(initram.file) if initram else None

    @export
    def get_kernel_address(self) -> str:
        """Load address of the kernel."""
        return self.bundle().manifest.spec.kernel.address

    @export
    def get_initram_address(self) -> str | None:
        """Load address of the initramfs, or ``None``."""
        initram = self.bundle().manifest.spec.initram
        return initram.address if initram else None

    @export
    def get_dtb_address(self) -> str | None:
        """Load address of the device tree, or ``None``."""
        dtb = self.bundle().manifest.spec.dtb
        return dtb.address if dtb else None

    @export
    def get_bootcmd(self) -> str:
        """The U-Boot boot command: the chosen variant's, else the manifest's, else ``booti`` of the loaded files."""
        spec = self.bundle().manifest.spec
        if spec.dtb is not None:
            override = spec.dtb.variants[self._variant or spec.dtb.default].bootcmd
            if override:
                return override
        if spec.bootcmd:
            return spec.bootcmd
        return f"booti {spec.kernel.address} - {spec.dtb.address if spec.dtb else ''}".strip()

    @export
    def get_flasher_manifest_yaml(self) -> str:
        """The manifest, as written in the bundle."""
        return self.bundle().manifest_yaml

    @export
    def get_default_target(self) -> str | None:
        """The target flashed when none is named: the config's, else the manifest's."""
        return self.default_target or self.bundle().manifest.spec.default_target

    # servers ----------------------------------------------------------------------------------

    def _storage_root(self, server: str) -> Path:
        storage = self.children[server].children["storage"]
        return Path(storage.root)

    async def _start_servers(self) -> tuple[tuple[str, int], tuple[str, int]]:
        """Start the TFTP and HTTP servers; their (host, port) as the board must reach them."""
        addresses = []
        for name in ("tftp", "http"):
            server = self.children[name]
            await call_maybe_async(server.start)
            host = await call_maybe_async(server.get_host)
            port = int(await call_maybe_async(server.get_port))
            addresses.append((host, port))
        return addresses[0], addresses[1]

    def _board_host(self, host: str) -> str:
        uboot: UBoot = self.children["uboot"]
        if uboot.serverip:
            return uboot.serverip
        if host in ("0.0.0.0", "::", ""):
            raise ConfigurationError(
                f"{type(self).__name__}: the servers listen on all addresses ({host!r}); set the uboot child's "
                "serverip to the address the board reaches this exporter at"
            )
        return host

    # flashing ---------------------------------------------------------------------------------

    @export
    async def flash(self, image: str, target: str | None = None, method: str | None = None) -> FlashResult:
        """Write ``image`` (a file in the HTTP storage) to ``target``; returns seconds per step.

        The board is left powered off. ``method`` is ``uboot`` (default) or ``busybox``.
        """
        method = method or self.method
        if method not in METHODS:
            raise ValueError(f"flash method {method!r} is not one of: {', '.join(METHODS)}")
        target = target or self.get_default_target()
        if target is None:
            raise ValueError("no target given and the flasher has no default_target; name one (e.g. 'usd')")
        if image.startswith(("http://", "https://")):
            self._refuse_url(image, f"image URL {image!r}")
            image = await anyio.to_thread.run_sync(self._download, image)
        source, _ = inside(self._storage_root("http"), image)
        if source is None or not source.is_file():
            raise ValueError(f"image {image!r} is not in the flasher's HTTP storage; upload it first")
        steps: dict[str, float] = {}
        started = time.monotonic()
        try:
            async with self._timed(steps, "stage"):
                await anyio.to_thread.run_sync(self.setup_flasher_bundle)
                size = source.stat().st_size
                chunks = await anyio.to_thread.run_sync(self._prepare_chunks, source) if method == "uboot" else []
                sha256 = await anyio.to_thread.run_sync(sha256_file, source) if method == "busybox" else ""
            tftp_address, http_address = await self._start_servers()
            uboot: UBoot = self.children["uboot"]
            async with uboot.console() as console:
                await self._retry("boot to U-Boot", self._boot, console, steps, tftp_address)
                if method == "uboot":
                    await self._flash_uboot(console, steps, target, chunks, size)
                else:
                    await self._flash_busybox(console, steps, target, image, size, sha256, http_address)
        finally:
            try:
                await call_maybe_async(self.children["power"].off)
            except Exception as exc:  # noqa: BLE001 - the flash's own outcome matters more; say so
                self.logger.warning("could not power the board off after flashing: %s", exc)
            self._remove_chunks()
        steps["total"] = time.monotonic() - started
        self.logger.info("flashed %s to %s in %.1f s (%s)", image, target, steps["total"],
                         ", ".join(f"{k} {v:.1f} s" for k, v in steps.items() if k != "total"))
        return FlashResult(image=image, target=target, method=method, size=size, steps=steps)

    def _refuse_url(self, url: str, what: str) -> None:
        if not url_allowed(url, self.allowed_urls):
            raise ValueError(
                f"{what} is refused: this flasher fetches only URLs under config field 'allowed_urls' "
                f"({', '.join(self.allowed_urls) or 'none configured'}); upload the image instead "
                "(FlasherClient.flash with a local file)"
            )

    def _download(self, url: str) -> str:
        """Fetch an allowed image URL into the HTTP storage (redirects checked too); its file name there.

        The download holds at most ``max_download_size`` bytes and ends within ``download_timeout`` seconds.
        """
        import requests

        name = posixpath.basename(urlsplit(url).path) or "image"
        storage: Storage = self.children["http"].children["storage"]
        self.logger.info("downloading %s", url)
        deadline = time.monotonic() + self.download_timeout
        current = url
        try:
            for _ in range(MAX_REDIRECTS + 1):
                response = requests.get(current, stream=True, timeout=read_timeout(deadline),
                                        verify=self.cacert or True, allow_redirects=False)
                if not response.is_redirect:
                    break
                response.close()
                current = urljoin(current, response.headers["location"])
                self._refuse_url(current, f"image URL {url!r} redirects to {current!r}, which")
            else:
                raise ValueError(f"cannot download the image {url}: more than {MAX_REDIRECTS} redirects")
            with response:
                response.raise_for_status()
                storage.write_chunks(name, iter_body(response, self.max_download_size, deadline))
        except requests.RequestException as exc:
            raise ValueError(f"cannot download the image {url}: {exc}") from None
        except OverflowError:
            raise ValueError(f"cannot download the image {url}: larger than {self.max_download_size} bytes "
                             "(config field 'max_download_size'); refused") from None
        except TimeoutError:
            raise ValueError(f"cannot download the image {url}: not done within {self.download_timeout:g} s "
                             "(config field 'download_timeout'); refused") from None
        except ConnectionError as exc:
            raise ValueError(f"cannot download the image {url}: {exc}") from None
        return name

    @contextlib.asynccontextmanager
    async def _timed(self, steps: dict[str, float], name: str) -> AsyncIterator[None]:
        self.logger.info("step: %s", name)
        begun = time.monotonic()
        try:
            yield
        finally:
            steps[name] = steps.get(name, 0.0) + time.monotonic() - begun

    async def _retry(self, what: str, attempt: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run ``attempt(*args)``; retry transient console failures up to ``retries`` times."""
        for left in range(self.retries, -1, -1):
            try:
                return await attempt(*args)
            except ConsoleError as exc:
                if not exc.transient or left == 0:
                    raise
                self.logger.warning("%s: transient failure, retrying (%d left): %s", what, left, exc.reason)
        raise AssertionError("unreachable")

    async def _load(self, console: UBootConsole, steps: dict[str, float], address: int, name: str, size: int,
                    crc: int) -> None:
        """``tftpboot`` a file and check its size and CRC-32 (a mismatch is transient)."""
        async with self._timed(steps, "load"):
            await console.tftpboot(address, name, size)
        async with self._timed(steps, "check load"):
            got = await console.crc32(address, size)
            if got != crc:
                raise StepFailed(console.expecter.step, f"{name} loaded with CRC {got:08x}, expected {crc:08x}",
                                 console.expecter.console_tail(), transient=True)

    async def _boot(self, console: UBootConsole, steps: dict[str, float], tftp: tuple[str, int]) -> None:
        uboot: UBoot = self.children["uboot"]
        async with self._timed(steps, "boot"):
            await uboot.boot_to_prompt(console)
        await self._network(console, steps, tftp)

    async def _network(self, console: UBootConsole, steps: dict[str, float], tftp: tuple[str, int]) -> None:
        uboot: UBoot = self.children["uboot"]
        async with self._timed(steps, "network"):
            await uboot.setup_network_on(console, self._board_host(tftp[0]), tftp[1])
            if self.tftp_blocksize:
                await console.set_env("tftpblocksize", str(self.tftp_blocksize))
            if self.tftp_windowsize:
                await console.set_env("tftpwindowsize", str(self.tftp_windowsize))

    # method uboot -----------------------------------------------------------------------------

    def _chunk_names(self) -> list[str]:
        root = self._storage_root("tftp")
        return sorted(p.name for p in root.glob(".flash-chunk-*")) if root.is_dir() else []

    def _remove_chunks(self) -> None:
        """Remove what bears a chunk's name in the TFTP root: a file, a link, or a directory a client wrote there."""
        root = self._storage_root("tftp")
        for name in self._chunk_names():
            path = root / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)

    def _prepare_chunks(self, source: Path) -> list[tuple[str, int, int]]:
        """Split the image into TFTP files of ``chunk_size`` (the last padded to whole blocks).

        Returns ``(file name, size, crc32)`` for each.
        """
        root = self._storage_root("tftp")
        self._remove_chunks()
        chunks = []
        with source.open("rb") as f:
            for index in range(1 << 30):
                data = f.read(self.chunk_size)
                if not data:
                    break
                if len(data) % BLOCK_SIZE:
                    data += bytes(BLOCK_SIZE - len(data) % BLOCK_SIZE)
                name = f".flash-chunk-{index:05d}"
                (root / name).write_bytes(data)
                chunks.append((name, len(data), zlib.crc32(data)))
        if not chunks:
            raise ValueError(f"image {source.name} is empty")
        return chunks

    async def _flash_uboot(self, console: UBootConsole, steps: dict[str, float], target: str,
                           chunks: list[tuple[str, int, int]], size: int) -> None:
        device = self.uboot_targets.get(target, target)
        interface, number = parse_block_device(device, f"target {target!r}")
        console.step(f"select {interface} {number}")
        await console.run(f"{interface} {'scan' if interface == 'virtio' else 'rescan'}", 60, check=False)
        await console.run(f"{interface} dev {number}", 30)
        load = await self._load_address(console)
        verify = load + self.chunk_size
        block, written = 0, 0
        for index, (name, length, crc) in enumerate(chunks, 1):
            label = f"chunk {index}/{len(chunks)}"
            await self._retry(f"load {label}", self._load, console, steps, load, name, length, crc)
            count = length // BLOCK_SIZE
            async with self._timed(steps, "write"):
                console.step(f"{interface} write of {label}")
                await console.block(interface, "write", number, load, block, count, self.write_timeout)
            async with self._timed(steps, "verify"):
                console.step(f"verify {label}")
                await console.block(interface, "read", number, verify, block, count, self.write_timeout)
                got = await console.crc32(verify, length)
                if got != crc:
                    raise StepFailed(console.expecter.step, f"{label} reads back with CRC {got:08x}, expected {crc:08x}",
                                     console.expecter.console_tail())
            block += count
            written = min(size, written + length)
            self.logger.info("written %d of %d bytes (%d%%)", written, size, written * 100 // size)

    async def _load_address(self, console: UBootConsole) -> int:
        if self.load_address:
            return int(self.load_address, 16)
        console.step("find the load address")
        for name in ("loadaddr", "kernel_addr_r"):
            value = await console.get_env(name)
            if value:
                return int(value, 16)
        raise ConfigurationError(
            f"{type(self).__name__}: U-Boot has neither loadaddr nor kernel_addr_r; set config field 'load_address'"
        )

    # method busybox ---------------------------------------------------------------------------

    async def boot_linux(self, console: UBootConsole, steps: dict[str, float]) -> ShellConsole:
        """From the U-Boot prompt: stage the bundle, set up the network, load the bundle's kernel,
        initramfs and DTB over TFTP, boot them and log in (what a boot strategy's ``shell`` step does)."""
        async with self._timed(steps, "stage"):
            await anyio.to_thread.run_sync(self.setup_flasher_bundle)
        tftp_address, _ = await self._start_servers()
        await self._network(console, steps, tftp_address)
        return await self._boot_linux(console, steps)

    async def _boot_linux(self, console: UBootConsole, steps: dict[str, float]) -> ShellConsole:
        """Load the staged kernel, initramfs and DTB, run the boot command and log in."""
        spec = self.bundle().manifest.spec
        root = self._storage_root("tftp")
        loads = [(self.get_kernel_filename(), self.get_kernel_address())]
        if spec.initram is not None:
            loads.append((self.get_initram_filename(), self.get_initram_address()))
        if self.get_dtb_filename():
            loads.append((self.get_dtb_filename(), self.get_dtb_address()))
        for name, address in loads:
            data = (root / name).read_bytes()
            await self._retry(f"load {name}", self._load, console, steps, int(address, 16), name, len(data),
                              zlib.crc32(data))
        shell = ShellConsole(console.expecter, spec.login.prompt + " " if not spec.login.prompt.endswith(" ") else spec.login.prompt)
        async with self._timed(steps, "boot linux"):
            bootcmd = self.get_bootcmd()
            console.step(f"boot Linux ({bootcmd})")
            console.expecter.buffer = ""
            await console.expecter.send(bootcmd + "\r")
            await shell.login(spec.login.login_prompt, spec.login.username, spec.login.password, self.login_timeout)
        return shell

    async def _flash_busybox(self, console: UBootConsole, steps: dict[str, float], target: str, image: str,
                             size: int, sha256: str, http: tuple[str, int]) -> None:
        shell = await self._boot_linux(console, steps)
        spec = self.bundle().manifest.spec
        device = await self._resolve_target(shell, target)
        for command in spec.preflash_commands:
            shell.step(f"preflash command {command!r}")
            await shell.run(command, 300)
        # client-given names reach the board's shell quoted, never as shell syntax
        url = shlex.quote(f"http://{self._board_host(http[0])}:{http[1]}/{quote(image)}")
        quoted_device = shlex.quote(device)
        async with self._timed(steps, "write"):
            shell.step(f"write {image} to {device}")
            await shell.run("set -o pipefail", 10)
            progress = _Progress(self.logger, size)
            console.expecter.log = progress
            try:
                await shell.run(f"wget -O - {url} | dd of={quoted_device} bs=4M", self.write_timeout)
            finally:
                console.expecter.log = None
            await shell.run("sync", 300)
        async with self._timed(steps, "verify"):
            shell.step(f"verify {device}")
            _, output = await shell.run(f"head -c {size} {quoted_device} | sha256sum", self.write_timeout)
            if sha256 not in output:
                raise StepFailed(shell.expecter.step, f"{device} does not hold the image (sha256 differs)",
                                 shell.expecter.console_tail())

    async def _resolve_target(self, shell: ShellConsole, target: str) -> str:
        targets = self.bundle().manifest.spec.targets
        value = targets.get(target, target)
        if "#" not in value:
            return value
        path, address = value.split("#", 1)
        shell.step(f"find the block device of target {target!r}")
        _, listing = await shell.run(f"ls -l {shlex.quote(path + '/')}", 30)
        for line in listing.splitlines():
            match = re.search(r"(\S+) -> (\S+)$", line.strip())
            if match and address in match.group(2) and not _is_partition(match.group(1)):
                return f"/dev/{match.group(1)}"
        raise StepFailed(shell.expecter.step, f"no block device under {path} has {address!r} in its path",
                         shell.expecter.console_tail())


class _Progress:
    """Turns the board's download progress (``NN%``) into log lines every 10 %."""

    def __init__(self, logger: Any, size: int) -> None:
        self.logger, self.size, self.shown = logger, size, -10

    def __call__(self, text: str) -> None:
        for percent in re.findall(r"(\d{1,3})%", text):
            if int(percent) >= self.shown + 10:
                self.shown = int(percent) // 10 * 10
                self.logger.info("written %d%% of %d bytes", self.shown, self.size)


def _is_partition(name: str) -> bool:
    """Whether a block device name is a partition or boot area, not a whole disk.

    >>> [_is_partition(n) for n in ("mmcblk0", "mmcblk0p1", "mmcblk0boot0", "vda", "vda2", "sdb1", "nvme0n1")]
    [False, True, True, False, True, True, False]
    """
    return bool(re.search(r"(p\d+|boot\d|rpmb)$", name) or re.fullmatch(r"(sd|vd|hd|xvd)[a-z]+\d+", name))


def parse_block_device(text: str, where: str) -> tuple[str, int]:
    """``"mmc 0"`` -> ``("mmc", 0)``; anything else is a :class:`ValueError` naming ``where``.

    >>> parse_block_device("virtio 1", "target")
    ('virtio', 1)
    """
    match = re.fullmatch(r"\s*(mmc|virtio|usb|scsi|sata|nvme)\s+(\d+)\s*", text)
    if not match:
        raise ValueError(
            f"{where}: {text!r} is not a U-Boot block device such as 'mmc 0' or 'virtio 0'; for method uboot map "
            "the target in the flasher's uboot_targets"
        )
    return match.group(1), int(match.group(2))

