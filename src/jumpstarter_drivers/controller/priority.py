"""Lease priority on top of FIFO: a client may let other leases go first; only a token allowed to may go first.

A lease tagged ``jumpstarter.dev/priority: N`` waits behind every waiting lease of a higher
priority that could use the same board, and in request order among leases of its own priority.
Lowering (down to :data:`LOWEST`) is open to every client: nightly or background jobs yield to CI
and people. Raising is open only up to the ceiling the client's token was issued with
(``token create client NAME --max-priority N``, at most :data:`HIGHEST`; 0 by default). The
controller fixes a lease's priority when the lease is created (``priority`` in its record); a
value over the ceiling counts as the ceiling, one that is not a number as 0.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .store import Record

PRIORITY_TAG = "jumpstarter.dev/priority"
#: Lowest priority a lease may ask for, and the highest ceiling a token may be issued with.
LOWEST, HIGHEST = -100, 100


def granted(tags: dict[str, str], ceiling: int = 0) -> int:
    """The priority a lease tagged ``tags`` gets from a client whose token allows ``ceiling`` at most.

    >>> granted({PRIORITY_TAG: "-10"}), granted({PRIORITY_TAG: "50"}), granted({PRIORITY_TAG: "50"}, 20)
    (-10, 0, 20)
    """
    text = str((tags or {}).get(PRIORITY_TAG, "0")).strip()
    try:
        value = int(text)
    except ValueError:
        return 0
    return max(LOWEST, min(max(0, min(ceiling, HIGHEST)), value))


def priority(lease: Record) -> int:
    """The lease's priority: as fixed at its creation, else (a record from before that) from its tag,
    lowering only."""
    fixed = lease.value.get("priority")
    if isinstance(fixed, int) and not isinstance(fixed, bool):
        return max(LOWEST, min(HIGHEST, fixed))
    return granted(lease.value.get("tags") or {})


def queue_order(lease: Record) -> tuple[int, int]:
    """Sort key of waiting leases: higher priority first, then request order."""
    return -priority(lease), lease.create_revision
