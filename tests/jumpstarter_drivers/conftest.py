"""Fixtures the driver-family tests share: a directory to store or serve files in, with a payload."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """An empty directory for a driver to store or serve files in."""
    path = tmp_path / "root"
    path.mkdir()
    return path


@pytest.fixture
def payload_size() -> int:
    """How many bytes :func:`payload` holds; a test module overrides this fixture for another size."""
    return 300_000


@pytest.fixture
def payload(root: Path, payload_size: int) -> bytes:
    """Random bytes, written to ``images/payload.bin`` in :func:`root`."""
    data = os.urandom(payload_size)
    (root / "images").mkdir()
    (root / "images" / "payload.bin").write_bytes(data)
    return data
