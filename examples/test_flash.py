"""Flashing: write an image to the board through U-Boot, then check what landed on its disk.

Runs against the built-in virtual lab by default (a pure-Python board whose console behaves
like U-Boot); on a real lab the same test flashes the board behind ``--jumpstarter-flasher``.
"""

import hashlib
import os

import pytest


def test_bundle_manifest(flasher):
    """The flasher's bundle, parsed: every figure a test may need is an attribute."""
    spec = flasher.manifest.spec
    assert spec.kernel.file == "data/kernel"
    assert flasher.get_kernel_filename() == os.path.basename(spec.kernel.file)


@pytest.mark.parametrize("method", ["uboot", "busybox"])
def test_flash_image(flasher, client, tmp_path, method):
    """``flash`` uploads the image (once), boots U-Boot, writes the target, verifies it, powers off."""
    image = tmp_path / "image.raw"
    image.write_bytes(os.urandom(1 << 20))
    result = flasher.flash(image, method=method)
    assert result.size == image.stat().st_size
    print(result.summary())
    if "board" in client.children and hasattr(client.board, "disk_sha256"):
        assert client.board.disk_sha256(result.size) == hashlib.sha256(image.read_bytes()).hexdigest()
