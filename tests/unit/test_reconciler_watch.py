"""The reconciler fed by a watch: events queued, gaps noticed, and a resync that lists nothing while the watch is whole."""

from __future__ import annotations

import asyncio

import pytest

from controller.config import FamilyRange
from controller.kube import ApiError
from controller.model import NodeInfo
from tests.unit.test_reconciler import FAMILIES, FakeApi, assert_disjoint, reconciler_for, run, wait_until

REFUSED = ApiError(422, "Invalid", "spec.podCIDRs: Invalid value")


@pytest.mark.parametrize("family", FAMILIES)
def test_sweep_serves_a_node_whose_patches_were_all_refused_with_one_read_and_no_list(family: FamilyRange) -> None:
    api = FakeApi()
    api.patch_script = [REFUSED] * 5

    async def go() -> None:
        reconciler = reconciler_for(family, api)
        await reconciler.assign_all([api.add("a")])
        assert api.nodes["a"].pod_cidrs == (), "refused five times"
        await reconciler.resync.sweep()

    run(go)
    assert api.nodes["a"].pod_cidrs, "the sweep served the Node left without a range"
    assert api.lists == [], "no LIST while the watch is whole"
    assert_disjoint(api)


@pytest.mark.parametrize("family", FAMILIES)
def test_events_are_queued_handled_by_workers_and_a_deletion_counts_at_once(family: FamilyRange) -> None:
    api = FakeApi()

    async def go() -> tuple[int, int]:
        reconciler = reconciler_for(family, api)
        workers = asyncio.ensure_future(reconciler.work())
        for name in ("a", "b", "c"):
            await reconciler.node_event("ADDED", api.add(name))
        await wait_until(lambda: all(api.nodes[name].pod_cidrs for name in ("a", "b", "c")))
        before = reconciler.allocations.sets[0].allocated
        gone = api.nodes.pop("b")
        await reconciler.node_event("DELETED", gone)
        after = reconciler.allocations.sets[0].allocated
        workers.cancel()
        return before, after

    assert run(go) == (3, 2)
    assert_disjoint(api)


def node(name: str) -> NodeInfo:
    return NodeInfo(name, f"uid-{name}")


@pytest.mark.parametrize("family", FAMILIES)
def test_a_listing_after_the_watch_was_live_asks_for_one_relist_per_listing(family: FamilyRange) -> None:
    async def go() -> list[bool]:
        reconciler = reconciler_for(family, FakeApi())
        due = []
        for kind, name in [(None, "a"), (None, "b")]:  # the initial listing: no gap
            await reconciler.node_event(kind, node(name))
        due.append(reconciler.resync._relist_due.is_set())
        await reconciler.node_event("ADDED", node("c"))  # live
        await reconciler.node_event(None, node("a"))  # listed again: a gap
        due.append(reconciler.resync._relist_due.is_set())
        reconciler.resync._relist_due.clear()
        await reconciler.node_event(None, node("b"))  # the same listing goes on
        due.append(reconciler.resync._relist_due.is_set())
        await reconciler.node_event(None, node("a"))  # a name again: another listing, another gap
        due.append(reconciler.resync._relist_due.is_set())
        return due

    assert run(go) == [False, True, False, True]


@pytest.mark.parametrize("family", FAMILIES)
def test_a_bridge_that_ends_before_the_watch_is_live_asks_for_a_relist(family: FamilyRange) -> None:
    async def go() -> tuple[bool, bool]:
        api = FakeApi()
        reconciler = reconciler_for(family, api)
        reconciler.listed_version = "100"
        caught_up = asyncio.Event()
        api.watch_events = [("ADDED", api.add("x"))]
        caught_up.set()
        await reconciler.bridge(caught_up)  # caught up: nothing missed
        first = reconciler.resync._relist_due.is_set()
        await reconciler.bridge(asyncio.Event())  # ended (410 Gone, say) before kopf's watch was live
        return first, reconciler.resync._relist_due.is_set()

    assert run(go) == (False, True)


@pytest.mark.parametrize("family", FAMILIES)
def test_resync_loop_lists_after_a_gap_and_only_then(family: FamilyRange) -> None:
    api = FakeApi()

    async def go() -> list[bool]:
        reconciler = reconciler_for(family, api)
        await reconciler.assign_all([api.add("a")])
        sweeps = 0
        sweep = reconciler.resync.sweep

        async def counted_sweep() -> None:
            nonlocal sweeps
            sweeps += 1
            await sweep()

        reconciler.resync.sweep = counted_sweep  # type: ignore[method-assign]
        loop = asyncio.ensure_future(reconciler.resync_forever(period=0.01, relist_delay=0.0))
        await wait_until(lambda: sweeps >= 3)  # several resync periods: a sweep each, no LIST
        lists_before_gap = list(api.lists)
        api.nodes.pop("a")  # deleted during a gap: no DELETED event
        reconciler.resync.relist_soon("a test gap")
        await wait_until(lambda: reconciler.allocations.held.ranges("a") == ())
        loop.cancel()
        return [*lists_before_gap, *api.lists[len(lists_before_gap) :]]

    assert run(go) == [True], "no LIST before the gap, one (from the cache) after it"


@pytest.mark.parametrize("family", FAMILIES)
def test_sweep_serves_a_node_recreated_under_a_held_name_when_its_reread_failed(family: FamilyRange) -> None:
    api = FakeApi()

    async def go() -> tuple[int, list[bool]]:
        reconciler = reconciler_for(family, api)
        await reconciler.assign_all([api.add("a", uid="uid-old")])
        recreated = api.add("a", uid="uid-new")  # deleted and created again; the DELETED event was missed
        api.get_script = [ApiError(0, "ConnectionError", "reset")]  # the re-read the new UID asks for fails
        await reconciler.assign_all([recreated])
        assert api.nodes["a"].pod_cidrs == (), "nothing settled yet"
        await reconciler.resync.sweep()
        return reconciler.allocations.sets[0].allocated, api.lists

    allocated, lists = run(go)
    assert api.nodes["a"].pod_cidrs, "the new incarnation was served by the sweep"
    assert allocated == 1, "the old incarnation's range was released, the new one's taken"
    assert lists == []


@pytest.mark.parametrize("family", FAMILIES)
def test_a_name_listed_twice_before_the_watch_was_live_is_a_gap_too(family: FamilyRange) -> None:
    async def go() -> list[bool]:
        reconciler = reconciler_for(family, FakeApi())
        due = []
        for name in ("a", "b"):
            await reconciler.node_event(None, node(name))
        due.append(reconciler.resync._relist_due.is_set())
        await reconciler.node_event(None, node("a"))  # kopf listed again before any change came
        due.append(reconciler.resync._relist_due.is_set())
        return due

    assert run(go) == [False, True]
