"""Types the flasher driver and its client share."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field

#: Bytes per block of the boards' block devices (U-Boot's ``mmc``/``virtio`` counts).
BLOCK_SIZE = 512


@dataclass(frozen=True)
class FlashResult:
    """What a flash did: the image, where it went, how, and seconds spent per step.

    >>> FlashResult("img", "usd", "uboot", 1024, {"load": 1.5, "total": 2.0}).steps["load"]
    1.5
    """

    image: str
    target: str
    method: str
    size: int
    steps: dict[str, float] = field(default_factory=dict)


def sha256_file(path: str | os.PathLike, length: int = -1) -> str:
    """Hex SHA-256 of a file's first ``length`` bytes (all of it when negative), read in 1 MiB pieces."""
    digest = hashlib.sha256()
    remaining = length if length >= 0 else float("inf")
    with open(path, "rb") as f:
        while remaining > 0 and (chunk := f.read(int(min(remaining, 1 << 20)))):
            digest.update(chunk)
            remaining -= len(chunk)
    return digest.hexdigest()
