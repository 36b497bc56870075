"""Flashing boards through U-Boot: bundles, the BaseFlasher driver and its client.

An exporter file for a board with a USB serial console and a switched outlet::

    export:
      board:
        children:
          power: {type: EnerGenie, config: {host: 192.168.1.50, slot: 1}}
          serial: {type: PySerial, config: {url: /dev/ttyUSB0}}
      flasher:
        type: BaseFlasher
        config:
          flasher_bundle: quay.io/example/board-flasher-bundle:latest   # or a directory / .tar.gz
          uboot_targets: {usd: "mmc 0", emmc: "mmc 1"}                  # for method uboot
          allowed_urls: ["https://images.lab/boards/"]       # image URLs flash() may fetch (none by default)
          bundle_sources: ["registry.lab/flasher/*"]          # bundles a client may choose besides its uploads
        children:
          serial: {ref: board.serial}
          power: {ref: board.power}
          tftp: {type: Tftp, config: {root_dir: /srv/tftp, host: 192.168.1.10, port: 69}}
          http: {type: HttpServer, config: {root_dir: /srv/http, host: 192.168.1.10}}
          uboot: {type: UBoot, config: {network: dhcp}}

and in a test::

    def test_flash(flasher):
        result = flasher.flash("build/image.raw", target="usd", method="uboot")
        print(result.summary())
"""

from .bundle import Bundle, Manifest, fetch_bundle, parse_manifest
from .client import FlasherClient
from .common import FlashResult
from .driver import BaseFlasher

__all__ = ["BaseFlasher", "Bundle", "FlashResult", "FlasherClient", "Manifest", "fetch_bundle", "parse_manifest"]
