"""The store against a real etcd: exporters never double-booked, presence and holders expire."""

from __future__ import annotations

import asyncio

from jumpstarter_drivers.controller import store as store_module
from jumpstarter_drivers.controller.etcd_process import PrivateEtcd
from jumpstarter_drivers.controller.store import Store


def test_racing_assignments_give_an_exporter_one_lease(etcd: PrivateEtcd) -> None:
    async def main() -> list[bool]:
        async with Store([etcd.endpoint]) as store:
            leases = [await store.add_lease(f"l{i}", {"selector": "board=a"}) for i in range(20)]
            # 20 replicas' worth of concurrent attempts, each on its own connection
            stores = [Store([etcd.endpoint]) for _ in leases]
            for other in stores:
                await other.__aenter__()
            try:
                return await asyncio.gather(
                    *(other.assign(lease, "board-1", 1.0, 2.0) for other, lease in zip(stores, leases))
                )
            finally:
                for other in stores:
                    await other.close()

    results = asyncio.run(main())
    assert results.count(True) == 1


def test_a_lease_that_changed_is_not_assigned(etcd: PrivateEtcd) -> None:
    async def main() -> tuple[bool, bool]:
        async with Store([etcd.endpoint]) as store:
            lease = await store.add_lease("l1", {})
            assert await store.end_lease(lease, "Released", "by the test", 1.0)
            late = await store.assign(lease, "board-1", 1.0, 2.0)
            state = await store.snapshot()
            return late, "board-1" in state.assignments

    assert asyncio.run(main()) == (False, False)


def test_ending_a_lease_frees_its_exporter_and_keeps_history(etcd: PrivateEtcd) -> None:
    async def main() -> None:
        async with Store([etcd.endpoint]) as store:
            lease = await store.add_lease("l1", {"client": "c"})
            assert await store.assign(lease, "board-1", 1.0, 2.0)
            active = await store.lease("l1")
            assert active is not None and active.value["exporter"] == "board-1"
            assert await store.end_lease(active, "Released", "released by c", 3.0)
            state = await store.snapshot()
            assert state.assignments == {} and state.leases == {}
            ended = await store.lease("l1")
            assert ended is not None and ended.value["reason"] == "Released"

    asyncio.run(main())


def test_queue_is_request_order(etcd: PrivateEtcd) -> None:
    async def main() -> list[str]:
        async with Store([etcd.endpoint]) as store:
            for name in ("zeta", "alpha", "mid"):
                await store.add_lease(name, {})
            return [lease.name for lease in (await store.snapshot()).queue()]

    assert asyncio.run(main()) == ["zeta", "alpha", "mid"]


def test_presence_and_holders_expire_without_refresh(etcd: PrivateEtcd, monkeypatch) -> None:
    monkeypatch.setattr(store_module, "PRESENCE_TTL", 1)

    async def main() -> None:
        async with Store([etcd.endpoint]) as store:
            await store.go_online("board-1", {})
            await store.add_lease("l1", {}, holder_ttl=1)
            state = await store.snapshot()
            assert "board-1" in state.online and "l1" in state.holders
            changes = store.changes(store_module.LAB)
            gone: set[str] = set()
            async with asyncio.timeout(10):
                async for change in changes:
                    if isinstance(change, str):
                        gone.add(change)
                    if {"online/board-1", "holders/l1"} <= gone:
                        break
            await changes.aclose()

    asyncio.run(main())
