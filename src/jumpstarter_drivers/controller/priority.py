"""Lease priority on top of FIFO: a client may let other leases go first, never push itself ahead.

A lease tagged ``jumpstarter.dev/priority: N`` (``N`` from :data:`LOWEST` to 0, default 0) waits
behind every waiting lease of a higher priority that could use the same board, and in request
order among leases of its own priority. Only lowering is open to every client (nightly or
background jobs yielding to CI and people), since any token may set the tag: a positive value,
or one that is not a number, counts as 0.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .store import Record

PRIORITY_TAG = "jumpstarter.dev/priority"
#: Lowest priority a lease may ask for.
LOWEST = -100


def priority(lease: Record) -> int:
    """The lease's priority, from its tag, clamped to ``LOWEST..0`` (0 when absent or malformed)."""
    text = str((lease.value.get("tags") or {}).get(PRIORITY_TAG, "0")).strip()
    try:
        value = int(text)
    except ValueError:
        return 0
    return max(LOWEST, min(0, value))


def queue_order(lease: Record) -> tuple[int, int]:
    """Sort key of waiting leases: higher priority first, then request order."""
    return -priority(lease), lease.create_revision
