"""The scheduler: one loop per replica, woken by etcd watches, that hands boards to waiting leases.

Each pass reads the whole lab at one revision and acts on what it sees, idempotently, through
transactions that fail if another replica got there first; so any number of replicas may run it.

- An active lease past its end time ends (``Expired``); a lease whose holder stopped keeping it
  alive ends (``HolderGone``).
- Waiting leases are served by priority (:mod:`.priority`: lowered by any client, raised only as a token allows),
  then in request order (their key's create revision): each takes the first
  free, online, available exporter (by name) its selector matches. A lease that no free board fits
  lets later ones pass, but never one that could use the same board: no compatible waiter is
  overtaken.
- A lease group (:mod:`.groups`) is one waiter at its earliest member's place: all its leases get
  boards in one transaction, or none does and one free board per member waits for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time

from ..core.status import ExporterStatus
from . import groups
from .selector import Selector, SelectorError
from .store import LAB, LabState, Record, Store, StoreUnavailable

logger = logging.getLogger(__name__)

#: Longest the loop sleeps without an etcd event (a missed wake-up costs at most this).
IDLE = 5.0
#: Pause before retrying when etcd does not answer.
RETRY = 0.5


def labels_of(exporter: Record) -> dict[str, str]:
    """An exporter's labels: those it registered with, overridden by an administrator's."""
    return {**exporter.value.get("labels", {}), **exporter.value.get("admin_labels", {})}


@functools.lru_cache(maxsize=4096)
def _parsed(text: str) -> Selector:
    return Selector.parse(text)


def selector_of(lease: Record) -> Selector:
    """The lease's selector (parsed once per distinct text: passes match every waiting lease against every board)."""
    return _parsed(lease.value["selector"]) if lease.value.get("selector") else Selector()


def fits(lease: Record, name: str, exporter: Record) -> bool:
    """Whether ``lease`` could use ``exporter`` (its pin and its selector)."""
    pinned = lease.value.get("exporter_name")
    if pinned and pinned != name:
        return False
    try:
        return selector_of(lease).matches(labels_of(exporter))
    except SelectorError:
        return False


def free_exporters(state: LabState) -> list[str]:
    """Exporters online, available, and held by no lease, by name."""
    return sorted(
        name
        for name, exporter in state.exporters.items()
        if name in state.online
        and name not in state.assignments
        and exporter.value.get("status") == ExporterStatus.AVAILABLE.value
    )


def queue_place(state: LabState, lease: Record) -> tuple[int, int] | None:
    """``(place, waiting)``: 1 + the waiting leases before ``lease`` that could use a board it could use,
    and how many leases wait in all; ``None`` when ``lease`` does not wait."""
    queue = state.queue()
    if lease.name not in {other.name for other in queue}:
        return None
    mine = {name for name, exporter in state.exporters.items() if fits(lease, name, exporter)}
    ahead = 0
    for other in queue:
        if other.name == lease.name:
            break
        if any(fits(other, name, state.exporters[name]) for name in mine):
            ahead += 1
    return ahead + 1, len(queue)


class Scheduler:
    """Runs :meth:`reconcile` whenever the lab changes (and at the next lease end time)."""

    def __init__(self, store: Store, poll: float | None = None) -> None:
        """With ``poll``, no watch: a pass every ``poll`` seconds (the reconcile loop the benchmark compares with)."""
        self.store = store
        self.poll = poll
        self.wake = asyncio.Event()
        #: Passes run so far (for tests and benchmarks).
        self.passes = 0

    async def run(self) -> None:
        """Until cancelled: watch the lab, reconcile on each change."""
        watcher = asyncio.create_task(self._watch() if self.poll is None else asyncio.Event().wait())
        try:
            while True:
                self.wake.clear()
                try:
                    deadline = await self.reconcile(time.time())
                except StoreUnavailable as exc:
                    logger.warning("scheduler: %s; retrying", exc)
                    await asyncio.sleep(RETRY)
                    continue
                if self.poll is not None:
                    await asyncio.sleep(self.poll)
                    continue
                timeout = IDLE if deadline is None else max(0.0, min(IDLE, deadline - time.time()))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), timeout)
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher

    async def _watch(self) -> None:
        while True:
            try:
                async for _ in self.store.changes(LAB):
                    self.wake.set()
            except StoreUnavailable as exc:
                logger.debug("scheduler watch: %s", exc)
            self.wake.set()
            await asyncio.sleep(RETRY)

    async def reconcile(self, now: float) -> float | None:
        """One pass; returns the next lease end time (when the loop must run again at the latest)."""
        self.passes += 1
        state = await self.store.snapshot()
        changed = False
        for lease in list(state.leases.values()):
            reason = self._end_reason(state, lease, now)
            if reason is not None:
                await self.store.end_lease(lease, *reason, now)
                del state.leases[lease.name]
                state.assignments.pop(lease.value.get("exporter", ""), None)
                changed = True
        free = free_exporters(state)
        reserved: set[str] = set()  # free boards an earlier waiting group could use: not for later waiters
        seen: set[str] = set()
        for lease in state.queue():
            if lease.name in seen:
                continue
            group = groups.members(lease)
            if group:
                seen.add(lease.name)
                leases = groups.complete(group, state.leases)
                if leases is not None:  # else members are still being created (or one ended): not a waiter yet
                    seen.update(group)
                    await self._serve_group(state, group, leases, free, reserved, now)
                continue
            for name in free:
                if name not in reserved and fits(lease, name, state.exporters[name]):
                    duration = float(lease.value.get("duration") or 0)
                    if await self.store.assign(lease, name, now, now + duration):
                        logger.info("lease %s of %s gets exporter %s", lease.name, lease.value.get("client"), name)
                        free.remove(name)
                    else:
                        self.wake.set()  # another replica changed the lab meanwhile: look again
                    break
        if changed:
            self.wake.set()
        ends = [float(lease.value["end"]) for lease in state.leases.values() if lease.value.get("end")]
        return min(ends) if ends else None

    async def _serve_group(
        self,
        state: LabState,
        group: tuple[str, ...],
        leases: list[Record],
        free: list[str],
        reserved: set[str],
        now: float,
    ) -> None:
        """Assign every lease of ``group`` at once, or keep boards for it from later waiters."""
        usable = [name for name in free if name not in reserved]

        def usable_by(lease: Record, name: str) -> bool:
            return fits(lease, name, state.exporters[name])

        chosen = groups.plan(leases, usable, usable_by)
        if chosen is None:
            reserved.update(groups.reserve(leases, usable, usable_by))
            return
        plan = [(lease, chosen[lease.name], now + float(lease.value.get("duration") or 0)) for lease in leases]
        if await self.store.assign_all(plan, now):
            boards = ", ".join(chosen[lease.name] for lease in leases)
            logger.info(
                "lease group %s of %s gets exporters %s", ",".join(group), leases[0].value.get("client"), boards
            )
            for name in chosen.values():
                free.remove(name)
        else:
            self.wake.set()

    @staticmethod
    def _end_reason(state: LabState, lease: Record, now: float) -> tuple[str, str] | None:
        end = lease.value.get("end")
        if end is not None and float(end) <= now:
            return "Expired", f"the lease reached its end time after {lease.value.get('duration'):g} s"
        if lease.value.get("holder") and lease.name not in state.holders:
            return "HolderGone", "its holder stopped keeping the lease alive"
        return None
