"""Lease groups: several leases (one per role) that get their boards together or not at all.

A client names its leases itself (``CreateLease.lease_id``) and tags each with the whole group,
``jumpstarter.dev/lease-group: <id>,<id>,...``. Each member is an ordinary lease (its own Dial,
Listen, keepalive and release); only the scheduler treats them as one queue entry, at the place
of the group's earliest member, and assigns every member in one etcd transaction over all their
exporters. A group that cannot be served yet holds no board, but reserves, for that pass, one free
board for each member that has one (:func:`reserve`), so no later waiter takes a board the group
needs (FIFO, as for one lease), while the boards it does not need stay open to later waiters.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from .store import Record

#: Tag naming every lease of a group (comma-separated ids, the lease's own included).
GROUP_TAG = "jumpstarter.dev/lease-group"
#: Tag naming the role a lease plays in its group (``host``, ``dut``...), for people reading lists.
ROLE_TAG = "jumpstarter.dev/lease-role"
#: Most leases in one group (the assignment search tries every order of at most this many).
MAX_GROUP = 8


def members(lease: Record) -> tuple[str, ...]:
    """The ids of ``lease``'s group, sorted; ``()`` for a lease on its own (or a malformed group tag)."""
    text = (lease.value.get("tags") or {}).get(GROUP_TAG, "")
    names = tuple(sorted({name.strip() for name in text.split(",") if name.strip()}))
    if len(names) < 2 or len(names) > MAX_GROUP or lease.name not in names:
        return ()
    return names


def complete(group: Sequence[str], leases: dict[str, Record]) -> list[Record] | None:
    """The group's leases if every member waits, names the same group, and all belong to one client, else
    ``None`` (so a lease naming someone else's in its group tag only keeps itself from being served)."""
    found = [leases.get(name) for name in group]
    if any(lease is None or lease.value.get("exporter") or members(lease) != group for lease in found):
        return None
    clients = {lease.value.get("client") for lease in found if lease is not None}
    if len(clients) != 1:
        return None
    return [lease for lease in found if lease is not None]


def plan(leases: Sequence[Record], free: Sequence[str], fits: Callable[[Record, str], bool]) -> dict[str, str] | None:
    """Distinct free boards, one per lease (``{lease: exporter}``), or ``None`` when no such choice exists.

    Leases with fewer candidate boards choose first; a choice that leaves a later lease without a
    board is undone (a small search: groups hold at most :data:`MAX_GROUP` leases).
    """
    candidates = {lease.name: [name for name in free if fits(lease, name)] for lease in leases}
    order = sorted(leases, key=lambda lease: (len(candidates[lease.name]), lease.create_revision))
    chosen: dict[str, str] = {}

    def choose(index: int) -> bool:
        if index == len(order):
            return True
        lease = order[index]
        for name in candidates[lease.name]:
            if name not in chosen.values():
                chosen[lease.name] = name
                if choose(index + 1):
                    return True
                del chosen[lease.name]
        return False

    return dict(chosen) if choose(0) else None


def reserve(leases: Sequence[Record], free: Sequence[str], fits: Callable[[Record, str], bool]) -> set[str]:
    """One free board for each lease that has one (scarcest first), for a group that cannot be served yet."""
    kept: set[str] = set()
    for lease in sorted(leases, key=lambda lease: sum(fits(lease, name) for name in free)):
        choice = next((name for name in free if name not in kept and fits(lease, name)), None)
        if choice is not None:
            kept.add(choice)
    return kept
