"""Types the flasher driver and its client share."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field

#: The steps of a flash, in the order they run (``FlashResult.steps`` keys).
STEP_ORDER = ("stage", "boot", "network", "load", "check load", "boot linux", "write", "verify", "total")

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

    def summary(self) -> str:
        """One line: what went where, then the steps in the order they run.

        >>> FlashResult("img", "usd", "uboot", 1024, {"total": 2.0, "load": 1.5}).summary()
        'flashed img (1024 bytes) to usd with uboot: load 1.50 s, total 2.00 s'
        """
        order = {name: i for i, name in enumerate(STEP_ORDER)}
        steps = sorted(self.steps.items(), key=lambda item: order.get(item[0], len(order)))
        return (f"flashed {self.image} ({self.size} bytes) to {self.target} with {self.method}: "
                + ", ".join(f"{name} {seconds:.2f} s" for name, seconds in steps))


def sha256_file(path: str | os.PathLike, length: int = -1) -> str:
    """Hex SHA-256 of a file's first ``length`` bytes (all of it when negative), read in 1 MiB pieces."""
    digest = hashlib.sha256()
    remaining = length if length >= 0 else float("inf")
    with open(path, "rb") as f:
        while remaining > 0 and (chunk := f.read(int(min(remaining, 1 << 20)))):
            digest.update(chunk)
            remaining -= len(chunk)
    return digest.hexdigest()
