"""The reference test bundle, generated where a test or the virtual lab needs it.

>>> import tempfile
>>> root = make_reference_bundle(tempfile.mkdtemp())
>>> (root / "data" / "kernel").read_bytes() == bytes(1024)
True
"""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

REFERENCE_MANIFEST = """\
apiVersion: jumpstarter.dev/v1alpha1
kind: FlashBundleManifest
metadata:
  name: test-bundle
spec:
  manufacturer: The Jumpstarter Toolkit
  link: null
  bootcmd: "booti 0x82000000 - 0x84000000"
  shelltype: busybox
  login:
    login_prompt: "login:"
    username: root
    password: password
    prompt: "#"
  default_target: usd
  targets:
    usd: "/sys/class/block#4fb0000"
    emmc: "/sys/class/block#4f80000"
  preflash_commands: []
  kernel:
    file: data/kernel
    address: "0x82000000"
  initram:
    file: data/initramfs
    address: "0x83000000"
  dtb:
    default: test-dtb
    address: "0x84000000"
    variants:
      test-dtb:
        file: data/dtbs/test-dtb.dtb
      alternate:
        file: data/dtbs/alternate.dtb
      othercmd:
        bootcmd: "bootm"
"""

#: File sizes of the reference bundle (all zero bytes).
REFERENCE_FILES = {
    "data/kernel": 1024,
    "data/initramfs": 2048,
    "data/dtbs/test-dtb.dtb": 3072,
    "data/dtbs/alternate.dtb": 4096,
}


def make_reference_bundle(directory: str | os.PathLike) -> Path:
    """Write the reference test bundle (manifest plus zero-filled files) into ``directory``; return it."""
    root = Path(directory)
    for name, size in REFERENCE_FILES.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(bytes(size))
    (root / "manifest.yaml").write_text(REFERENCE_MANIFEST)
    return root


def make_renamed_bundle_archive(directory: str | os.PathLike) -> Path:
    """The reference bundle with its kernel renamed ``vmlinuz``, packed as ``directory/mine.tar.gz``:
    a bundle a client uploads, told apart from the configured one by ``get_kernel_filename()``."""
    root = Path(directory)
    bundle = make_reference_bundle(root / "mine")
    (bundle / "data" / "kernel").rename(bundle / "data" / "vmlinuz")
    manifest = bundle / "manifest.yaml"
    manifest.write_text(manifest.read_text().replace("data/kernel", "data/vmlinuz"))
    archive = root / "mine.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(bundle, arcname="bundle")
    return archive
