"""The resync and NodeCIDRPools: a pool whose deletion went unnoticed stops counting."""

from __future__ import annotations

import netaddr
import pytest

from controller.config import FamilyRange
from tests.unit.test_reconciler import FAMILIES, POOL_CIDRS, FakeApi, pool_body, rebuilt, run


@pytest.mark.parametrize("family", FAMILIES)
def test_a_pool_whose_deleted_event_was_missed_does_not_refuse_a_new_pool_over_its_cidr(family: FamilyRange) -> None:
    first, _ = POOL_CIDRS[family.version]
    old = pool_body("old", family, first)
    old["metadata"]["creationTimestamp"] = "2026-01-01T00:00:00Z"
    api = FakeApi(pools={"old": old})
    reconciler = rebuilt(family, api)
    deleting = {**old, "metadata": {**old["metadata"], "deletionTimestamp": "2026-01-02T00:00:00Z", "resourceVersion": "2"}}
    run(lambda: reconciler.pool_event("MODIFIED", deleting))  # no Node holds a range in it: it goes at once
    api.pools = {}  # gone while the watch re-listed: its DELETED event never comes
    run(reconciler.resync.relist)
    new = pool_body("new", family, first)
    new["metadata"]["creationTimestamp"] = "2026-01-03T00:00:00Z"
    api.pools["new"] = new
    run(lambda: reconciler.pool_event("ADDED", new))
    assert not [usage.name for usage in reconciler.allocations.pool_usage.usages() if usage.refused], (
        "a pool that no longer exists refuses the new one"
    )


@pytest.mark.parametrize("family", FAMILIES)
def test_a_pool_deleted_unnoticed_before_its_finalizer_was_added_hands_out_nothing_after_the_resync(family: FamilyRange) -> None:
    first, _ = POOL_CIDRS[family.version]
    api = FakeApi(pools={"p": pool_body("p", family, first, priority=1)})
    reconciler = rebuilt(family, api)
    api.pools = {}  # deleted before the finalizer went on, while the watch re-listed: no DELETED event comes
    api.add("missed")
    run(reconciler.resync.relist)
    (cidr,) = api.nodes["missed"].pod_cidrs
    assert netaddr.IPNetwork(cidr) not in netaddr.IPNetwork(first), f"{cidr} handed out from the deleted pool p"
