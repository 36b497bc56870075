"""Session status values, numbered as in the protocol's ``ExporterStatus``."""

from __future__ import annotations

import enum


class ExporterStatus(enum.IntEnum):
    """Lifecycle of an exporter session (``jumpstarter.v1.ExporterStatus``)."""

    UNSPECIFIED = 0
    OFFLINE = 1
    AVAILABLE = 2
    BEFORE_LEASE_HOOK = 3
    LEASE_READY = 4
    AFTER_LEASE_HOOK = 5
    BEFORE_LEASE_HOOK_FAILED = 6
    AFTER_LEASE_HOOK_FAILED = 7

    @property
    def allows_calls(self) -> bool:
        """Whether driver calls are accepted in this state."""
        return self in CALLABLE


CALLABLE = frozenset({ExporterStatus.LEASE_READY, ExporterStatus.BEFORE_LEASE_HOOK, ExporterStatus.AFTER_LEASE_HOOK})
