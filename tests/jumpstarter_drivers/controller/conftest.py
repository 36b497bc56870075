"""A real private etcd per test, on loopback ports in the test's temporary directory."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from jumpstarter_drivers.controller.etcd_process import PrivateEtcd


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[PrivateEtcd]:
    """A running etcd member (``etcd.endpoint``), stopped after the test."""
    with PrivateEtcd(tmp_path / "state") as member:
        yield member
