"""`jumpstarter flasher flash` shows the upload's progress (bar, bytes, rate) and the exporter's
steps on a terminal, and nothing of them when stderr is not one."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pexpect

from jumpstarter_drivers.cli.process import ServeProcess


def test_flash_shows_progress_on_a_terminal(virtual_lab: ServeProcess, tmp_path: Path) -> None:
    image = tmp_path / "image.raw"
    image.write_bytes(os.urandom(1 << 20))
    flash = pexpect.spawn(
        sys.executable, ["-m", "jumpstarter_drivers.cli", "flasher", "flash", str(image), "--method", "busybox"],
        env={**os.environ, "JUMPSTARTER_HOST": virtual_lab.address}, timeout=120,
    )
    try:
        flash.expect(r"upload image\.raw -> image\.raw \[#+\] 100%  1\.0 MiB / 1\.0 MiB  [0-9.]+ [KMG]?i?B/s")
        flash.expect_exact("step: write")
        flash.expect_exact("flashed image.raw")
        flash.expect(pexpect.EOF)
    finally:
        flash.close(force=True)
    assert flash.exitstatus == 0


def test_flash_is_quiet_off_a_terminal(jumpstarter, virtual_lab: ServeProcess, tmp_path: Path) -> None:
    image = tmp_path / "other.raw"
    image.write_bytes(os.urandom(1 << 20))
    result = jumpstarter(
        "flasher", "flash", str(image), "--method", "busybox", env={"JUMPSTARTER_HOST": virtual_lab.address},
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("flashed other.raw")
    assert result.stderr == "", "no progress bar and no exporter steps off a terminal"
