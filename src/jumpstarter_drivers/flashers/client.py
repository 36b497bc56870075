"""The flasher client: what a test calls to flash a board and to ask about the bundle."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import click

from ..core.client import DriverClient
from .bundle import Manifest, parse_manifest
from .common import FlashResult, sha256_file

logger = logging.getLogger(__name__)

#: Where :meth:`FlasherClient.flash` re-emits the exporter's step and progress logs.
EXPORTER_LOGGER = "exporter:driver"


class FlasherClient(DriverClient):
    """Client of a :class:`~jumpstarter_drivers.flashers.driver.BaseFlasher` (and its subclasses)."""

    @property
    def manifest(self) -> Manifest:
        """The bundle's parsed manifest (``client.manifest.spec.kernel.file``)."""
        return parse_manifest(self.get_flasher_manifest_yaml(), source=f"{self.name or 'flasher'} manifest")

    def flash(self, path_or_url: str | os.PathLike, target: str | None = None, method: str | None = None) -> FlashResult:
        """Write an image (a local file, or an http(s) URL under the flasher's ``allowed_urls``) to ``target``.

        A local file is uploaded into the exporter's HTTP storage unless a file of the same name
        and SHA-256 is already there. ``method`` is ``uboot`` or ``busybox`` (the driver's default
        when ``None``). The exporter's progress and step logs appear on the logger ``exporter:driver``.
        """
        text = os.fspath(path_or_url)
        if text.startswith(("http://", "https://")):
            image = text
        else:
            path = Path(text)
            if not path.is_file():
                raise FileNotFoundError(f"image {text} does not exist or is not a file")
            image = path.name
            storage = self.http.storage
            local = sha256_file(path)
            if storage.exists(image) and storage.hash(image) == local:
                logger.info("image %s is already on the exporter (sha256 %s), not uploading it", image, local[:12])
            else:
                storage.write_from_path(image, path)
        with self.log_stream(join=True):
            return self.call_as(FlashResult, "flash", image, target, method)

    def cli(self) -> click.Group:
        """``flash``, ``manifest`` and ``variant`` commands (``jumpstarter flasher flash image.raw``)."""
        group = click.Group(help="Flash the board through U-Boot with a flasher bundle.")

        @group.command()
        @click.argument("image")
        @click.option("--target", help="Target name (default: the flasher's default target).")
        @click.option("--method", type=click.Choice(["uboot", "busybox"]), help="How to write (default: the driver's).")
        def flash(image: str, target: str | None, method: str | None) -> None:
            """Write IMAGE (a local file or an http(s) URL) to the target; on a terminal, show the upload's
            progress and the exporter's steps."""
            from ..cli.families import logs_on_terminal

            with logs_on_terminal(EXPORTER_LOGGER):
                result = self.flash(image, target, method)
            click.echo(result.summary())

        @group.command()
        def manifest() -> None:
            """Print the bundle's manifest."""
            click.echo(self.get_flasher_manifest_yaml(), nl=False)

        @group.command()
        @click.argument("name", required=False)
        def variant(name: str | None) -> None:
            """Choose the DTB variant NAME, or print the chosen DTB and boot command."""
            if name:
                self.use_dtb_variant(name)
            click.echo(f"dtb {self.get_dtb_filename()}, bootcmd {self.get_bootcmd()}")

        return group

    def setup_flasher_bundle(self, force_flash_bundle: str | None = None) -> None:
        """Stage the bundle's kernel, initramfs and chosen DTB into the TFTP root.

        ``force_flash_bundle`` uses another bundle until this session ends (:meth:`end_session`):
        one uploaded to ``self.http.storage`` (named by its path there) or one the flasher's
        ``bundle_sources`` allows.
        """
        self.call("setup_flasher_bundle", force_flash_bundle)

    def use_dtb_variant(self, name: str) -> None:
        """Choose a DTB variant (``DriverInvalidArgument`` listing the variants when unknown)."""
        self.call("use_dtb_variant", name)

    def get_dtb_filename(self) -> str | None:
        """The chosen DTB's file name."""
        return self.call("get_dtb_filename")

    def get_kernel_filename(self) -> str:
        """The kernel's file name."""
        return self.call("get_kernel_filename")

    def get_initram_filename(self) -> str | None:
        """The initramfs's file name, if any."""
        return self.call("get_initram_filename")

    def get_kernel_address(self) -> str:
        """The kernel's load address."""
        return self.call("get_kernel_address")

    def get_initram_address(self) -> str | None:
        """The initramfs's load address, if any."""
        return self.call("get_initram_address")

    def get_dtb_address(self) -> str | None:
        """The DTB's load address, if any."""
        return self.call("get_dtb_address")

    def get_bootcmd(self) -> str:
        """The U-Boot boot command for the chosen variant."""
        return self.call("get_bootcmd")

    def get_flasher_manifest_yaml(self) -> str:
        """The manifest as written in the bundle."""
        return self.call("get_flasher_manifest_yaml")

    def get_default_target(self) -> str | None:
        """The target flashed when none is named."""
        return self.call("get_default_target")

