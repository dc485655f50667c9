"""Pool usage kept up to date as ranges are held and released: equal to a count from scratch, and cheap to read.

A status round and a scrape read what is kept; they never go over the Nodes,
and a round looks only at the pools whose usage changed.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import itertools
from collections.abc import Callable, Sequence
from typing import Any

import netaddr
import pytest
from hypothesis import HealthCheck, assume, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from controller import poolsync as poolsync_module
from controller.allocators import CIDRSet, NoCIDRsRemainingError
from controller.config import FamilyRange
from controller.kube import ApiError
from controller.metrics import Metrics
from controller.model import NodeInfo
from controller.nodes import NodeAllocations
from controller.poolrank import overlaps, owner
from controller.pools import DEFAULT_POOL, PoolSpec, PoolSpecError
from controller.poolsets import PoolSets
from controller.poolstatus import BLOCKING_NODES_SHOWN
from controller.reconciler import Reconciler
from controller.reservations import Reservation, ReservationError
from tests.unit.test_reconciler import FAMILIES, POOL_CIDRS, FakeApi, pool_body, run, wait_until

N = netaddr.IPNetwork


def nets(*cidrs: str) -> list[netaddr.IPNetwork]:
    return [N(cidr) for cidr in cidrs]


def pool_spec(name: str, created: str = "2026-01-01T00:00:00Z", **spec: Any) -> PoolSpec:
    return PoolSpec.from_body({"metadata": {"name": name, "creationTimestamp": created, "generation": 1}, "spec": spec})


def family(mask: int, *cidrs: str, draining: Sequence[str] = ()) -> dict[str, Any]:
    return {"nodeMaskSize": mask, "cidrs": [{"cidr": cidr, "draining": cidr in draining} for cidr in cidrs]}


def shows_pod_cidrs(allocations: NodeAllocations, name: str, *cidrs: str) -> None:
    allocations.observe(NodeInfo(name, f"uid-{name}", cidrs))


# -- usage, by example ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pool", "default_range", "services", "holdings", "expected"),
    [
        pytest.param(
            {"ipv4": family(24, "10.245.0.0/23", "10.246.0.0/24", draining=("10.246.0.0/24",)), "reserved": ["10.245.0.0/24"]},
            ("10.244.0.0/22", 24),
            ["10.244.3.0/24"],
            [("a", "10.245.1.0/24"), ("b", "10.246.0.0/24"), ("c", "10.244.0.0/24"), ("d", "10.99.0.0/24")],
            {
                # pool: 10.245.0.0/23 has 2 ranges, 1 reserved; the draining /24 has 1 (held by b)
                "pool": ([(1, 1, False), (1, 1, True)], 2, 0, ["b"], "2/2 (100%)"),
                # default: 4 ranges, the service range takes one
                DEFAULT_POOL: ([(3, 1, False)], 1, 2, [], "1/3 (33%)"),
            },
            id="ipv4",
        ),
        pytest.param(
            {"ipv6": family(64, "fd00:20::/63", "fd00:21::/64", draining=("fd00:21::/64",)), "reserved": ["fd00:20::/64"]},
            ("fd00:10::/62", 64),
            ["fd00:10:0:3::/64"],
            [("a", "fd00:20:0:1::/64"), ("b", "fd00:21::/64"), ("c", "fd00:10::/64"), ("d", "fd00:99::/64")],
            {
                "pool": ([(1, 1, False), (1, 1, True)], 2, 0, ["b"], "2/2 (100%)"),
                DEFAULT_POOL: ([(3, 1, False)], 1, 2, [], "1/3 (33%)"),
            },
            id="ipv6",
        ),
    ],
)
def test_usage_counts_ranges_by_containment_and_names_blocking_nodes(
    pool: dict[str, Any],
    default_range: tuple[str, int],
    services: list[str],
    holdings: list[tuple[str, str]],
    expected: dict[str, tuple[list[tuple[int, int, bool]], int, int, list[str], str]],
) -> None:
    allocations = NodeAllocations(
        [FamilyRange(N(default_range[0]), default_range[1])], nets(*services), [pool_spec("pool", **pool)]
    )
    for name, cidr in holdings:
        shows_pod_cidrs(allocations, name, cidr)
    assert allocations.pool_sets.pool_of(N(holdings[3][1])) is None
    for usage in allocations.pool_usage.usages():
        per_cidr, nodes, free, blocking, summary = expected[usage.name]
        (family_usage,) = usage.families
        assert [(c.capacity, c.allocated, c.draining) for c in family_usage.per_cidr] == per_cidr
        assert (usage.nodes, family_usage.free, list(usage.blocking_nodes), usage.summary) == (nodes, free, blocking, summary)


def test_usage_of_a_refused_pool_is_empty_and_its_ranges_count_for_the_earlier_one() -> None:
    ranges = [FamilyRange(N("10.244.0.0/16"), 24), FamilyRange(N("fd00:10::/56"), 64)]
    later = pool_spec("later", ipv4=family(24, "10.244.0.0/20"), ipv6=family(64, "fd00:10::/60"))
    allocations = NodeAllocations(ranges, pools=[later])
    shows_pod_cidrs(allocations, "a", "10.244.1.0/24", "fd00:10:0:1::/64")
    by_name = {usage.name: usage for usage in allocations.pool_usage.usages()}
    assert by_name["later"].refused and by_name["later"].nodes == 0
    assert [f.allocated for f in by_name[DEFAULT_POOL].families] == [1, 1]
    assert by_name["later"].summary == "0/16 (0%)"
    assert allocations.pool_usage.take_new_outside() == []


@pytest.mark.parametrize(
    ("default_range", "first", "second", "held"),
    [
        pytest.param(("10.0.0.0/24", 28), "10.1.0.0/28", "10.1.0.0/27", "10.1.0.0/30", id="ipv4"),
        pytest.param(("fd00::/120", 124), "fd01::/124", "fd01::/123", "fd01::/126", id="ipv6"),
    ],
)
def test_a_range_moves_with_its_pool_cidr_when_the_pools_change(
    default_range: tuple[str, int], first: str, second: str, held: str
) -> None:
    version = f"ipv{N(first).version}"
    allocations = NodeAllocations([FamilyRange(N(default_range[0]), default_range[1])])
    shows_pod_cidrs(allocations, "a", held)
    assert allocations.pool_usage.take_new_outside() == [], "a range in no pool is never claimed: nothing to report"
    allocations.set_pools([pool_spec("p", **{version: family(N(held).prefixlen, first)})])
    shows_pod_cidrs(allocations, "a", held)  # shown again once a pool serves its range
    assert allocations.pool_usage.holders("p", 5) == ["a"]
    allocations.set_pools([pool_spec("q", **{version: family(N(held).prefixlen, second)})])
    assert (allocations.pool_usage.holders("p", 5), allocations.pool_usage.holders("q", 5)) == ([], ["a"])
    allocations.set_pools([])
    assert allocations.pool_usage.take_new_outside() == [("a", N(held))]
    assert not allocations.pool_usage.is_held("q")


# -- usage kept up to date equals usage counted from scratch ----------------------------------------------------


def from_scratch(allocations: NodeAllocations) -> dict[str, Any]:
    """Every pool's usage by its definition, from what `ranges_by_node()` lists: no state but the pools and the Nodes.

    A pool CIDR's allocated ranges are those some claim covers (a Node's range,
    a reservation, the service range, the reserved ranges of a pool that
    serves), less the ones its spec reserves; a refused pool holds nothing.
    Nodes count for the serving pool whose CIDR contains their range.
    """
    pools = allocations.pool_sets.pools()
    services = list(allocations.all_service_cidrs)
    refused = {name: why for name, why in overlaps(pools, services).items() if name != DEFAULT_POOL}
    serving = [pool for pool in pools if pool.name not in refused]
    refused_pools = [pool for pool in pools if pool.name in refused]
    held = [(node, cidr) for node, cidrs in allocations.ranges_by_node() for cidr in cidrs]
    claims = [cidr for _, cidr in held] + services + [cidr for pool in serving for cidr in pool.reserved]
    owners = {(node, cidr): owner(cidr, serving) for node, cidr in held}
    usage: dict[str, Any] = {}
    for pool in pools:
        families = []
        for pool_family in pool.families:
            per_cidr = []
            for entry in pool_family.cidrs:
                used, kept_out = CIDRSet(entry.cidr, pool_family.node_mask_size), CIDRSet(entry.cidr, pool_family.node_mask_size)
                for claim in claims:
                    if claim.version == entry.cidr.version and claim.first <= entry.cidr.last and entry.cidr.first <= claim.last:
                        used.occupy(claim)
                for cidr in (*pool.reserved, *(services if pool.is_default else ())):
                    if cidr.version == entry.cidr.version and cidr.first <= entry.cidr.last and entry.cidr.first <= cidr.last:
                        kept_out.occupy(cidr)
                allocated = 0 if pool.name in refused else used.allocated - kept_out.allocated
                per_cidr.append((str(entry.cidr), used.max_cidrs - kept_out.allocated, allocated, entry.draining))
            free = sum(capacity - allocated for _, capacity, allocated, draining in per_cidr if not draining)
            families.append((free, per_cidr))
        mine = [(node, cidr) for (node, cidr), found in owners.items() if found is not None and found.name == pool.name]
        draining = [entry.cidr for f in pool.families for entry in f.cidrs if entry.draining]
        blocking = sorted({node for node, cidr in mine if any(cidr in d for d in draining)})[:BLOCKING_NODES_SHOWN]

        def owning_pool(cidr: netaddr.IPNetwork) -> str | None:
            found = owner(cidr, serving) or owner(cidr, refused_pools)
            return found.name if found is not None else None

        usage[pool.name] = {
            "families": families,
            "nodes": 0 if pool.name in refused else len({node for node, _ in mine}),
            "blocking": [] if pool.name in refused else blocking,
            "refused": refused.get(pool.name, ""),
            "holders": sorted({node for node, cidr in held if owning_pool(cidr) == pool.name}),
        }
    return usage


def kept(allocations: NodeAllocations) -> dict[str, Any]:
    """The same, as `pool_usage` keeps it."""
    book = allocations.pool_usage
    return {
        usage.name: {
            "families": [(f.free, [(c.cidr, c.capacity, c.allocated, c.draining) for c in f.per_cidr]) for f in usage.families],
            "nodes": usage.nodes,
            "blocking": list(usage.blocking_nodes),
            "refused": usage.refused,
            "holders": book.holders(usage.name, 1000),
        }
        for usage in book.usages()
    }


def in_v6(text: str) -> str:
    """A CIDR of the IPv4 table below, at the same place in fd00::/112 (10.0.c.d/len -> fd00::c:d/96+len)."""
    cidr = N(text)
    if not text.startswith("10.0."):
        return f"fd99::{cidr.first & 0xFFFF:x}/{96 + cidr.prefixlen}"
    return f"fd00::{(cidr.first >> 8) & 0xFF:x}:{cidr.first & 0xFF:x}/{96 + cidr.prefixlen}"


#: Node ranges are /30 (four per /28); the default pool is 10.0.0.0/27 of /29s.
V4_UNIVERSE = {
    "default": ("10.0.0.0/27", 29),
    "node_mask": 30,
    "services": ["10.0.0.24/29"],
    # Pool CIDRs: two side by side, one over both, one over the default pool, one apart.
    "pool_cidrs": ["10.0.1.0/28", "10.0.1.16/28", "10.0.1.0/27", "10.0.0.16/28", "10.0.2.0/28"],
    # What Nodes may show: in a pool CIDR, two ranges at once, sticking out of every pool CIDR, in the default pool,
    # in a pool CIDR no pool may have, in nothing.
    "presets": [
        *("10.0.1.0/30", "10.0.1.4/30", "10.0.1.16/30", "10.0.1.8/29", "10.0.1.0/26"),
        *("10.0.0.8/29", "10.0.2.4/30", "10.0.3.0/30", "192.168.0.0/30"),
    ],
}
NAMES = ["a", "b", "c", "d"]
POOL_NAMES = ["p", "q", "r"]


def machine(version: int) -> type[RuleBasedStateMachine]:
    """Nodes come, hold, reserve, commit, go; pools change under them; after every step, kept == from scratch."""
    convert = (lambda text: text) if version == 4 else in_v6
    bits = 0 if version == 4 else 96
    default_cidr, default_mask = V4_UNIVERSE["default"]  # type: ignore[misc]
    pool_cidrs = [convert(text) for text in V4_UNIVERSE["pool_cidrs"]]  # type: ignore[union-attr]
    presets = [convert(text) for text in V4_UNIVERSE["presets"]]  # type: ignore[union-attr]
    node_mask = int(V4_UNIVERSE["node_mask"]) + bits  # type: ignore[call-overload]
    key = f"ipv{version}"

    pool_choice = st.builds(
        lambda name, cidrs, draining, reserve, disabled, day: (name, cidrs, draining, reserve, disabled, day),
        st.sampled_from(POOL_NAMES),
        st.lists(st.sampled_from(pool_cidrs), min_size=1, max_size=2, unique=True),
        st.booleans(),
        st.booleans(),
        st.booleans(),
        st.integers(min_value=1, max_value=3),
    )

    class PoolUsageMachine(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            default = FamilyRange(N(convert(default_cidr)), default_mask + bits)
            self.allocations = NodeAllocations([default], nets(*(convert(s) for s in V4_UNIVERSE["services"])))  # type: ignore[union-attr]
            self.uids = itertools.count()
            self.live: dict[str, str] = {}
            self.tasks: dict[str, Reservation] = {}

        def uid(self, name: str) -> str:
            return self.live.setdefault(name, f"uid-{name}-{next(self.uids)}")

        @rule(choices=st.lists(pool_choice, max_size=3, unique_by=lambda choice: choice[0]))
        def set_pools(self, choices: list[tuple[str, list[str], bool, bool, bool, int]]) -> None:
            specs = []
            for name, cidrs, draining, reserve, disabled, day in choices:
                spec = {key: family(node_mask, *cidrs, draining=cidrs[-1:] if draining else ()), "disabled": disabled}
                if reserve:
                    spec["reserved"] = [str(next(N(cidrs[0]).subnet(node_mask)))]
                try:
                    specs.append(pool_spec(name, f"2026-01-0{day}T00:00:00Z", **spec))
                except PoolSpecError:
                    assume(False)  # two CIDRs of one pool overlap: the CRD refuses that
            self.allocations.set_pools(specs)

        @rule(name=st.sampled_from(NAMES), preset=st.sampled_from(presets))
        def show(self, name: str, preset: str) -> None:
            self.allocations.observe(NodeInfo(name, self.uid(name), (preset,)))

        @rule(name=st.sampled_from(NAMES))
        def reserve(self, name: str) -> None:
            if name in self.tasks:
                return
            with contextlib.suppress(ReservationError, NoCIDRsRemainingError):
                self.tasks[name] = self.allocations.reserve(NodeInfo(name, self.uid(name)))

        @rule(name=st.sampled_from(NAMES), outcome=st.sampled_from(["commit", "abort", "unknown"]))
        def finish(self, name: str, outcome: str) -> None:
            reservation = self.tasks.pop(name, None)
            if reservation is None:
                return
            try:
                self.allocations.reservations.patching(reservation)
                if outcome == "commit":
                    self.allocations.reservations.commit(reservation)
                elif outcome == "abort":
                    self.allocations.reservations.abort(reservation)
                else:
                    self.allocations.reservations.unknown(reservation)
                    self.allocations.reservations.abandon(reservation)
            except ReservationError:
                pass

        @rule(name=st.sampled_from(NAMES))
        def delete(self, name: str) -> None:
            uid = self.live.pop(name, None)
            if uid is None:
                return
            self.allocations.forget(name, uid)
            reservation = self.tasks.pop(name, None)
            if reservation is not None:
                self.allocations.reservations.abandon(reservation)

        @invariant()
        def usage_kept_equals_usage_from_scratch(self) -> None:
            assert kept(self.allocations) == from_scratch(self.allocations)

        @invariant()
        def candidates_have_the_free_ranges_usage_shows(self) -> None:
            usage = {u.name: u for u in self.allocations.pool_usage.usages()}
            for candidate in self.allocations.pool_usage.candidates():
                assert candidate.free == tuple(f.free for f in usage[candidate.name].families)
                assert not usage[candidate.name].refused

    return PoolUsageMachine


@pytest.mark.parametrize("version", [4, 6], ids=["ipv4", "ipv6"])
def test_usage_kept_up_to_date_equals_usage_counted_from_scratch(version: int) -> None:
    run_state_machine_as_test(
        machine(version),
        settings=settings(
            max_examples=150, stateful_step_count=25, deadline=None, suppress_health_check=[HealthCheck.filter_too_much]
        ),
    )


# -- a status round and a scrape read what is kept -----------------------------------------------------------------


def pools_of(family_range: FamilyRange, count: int) -> dict[str, dict[str, Any]]:
    """`count` (up to four) pools of one CIDR of two node ranges each, side by side, the first with the highest priority."""
    two_ranges = N(POOL_CIDRS[family_range.version][1])
    cidrs = two_ranges.supernet(two_ranges.prefixlen - 2)[0].subnet(two_ranges.prefixlen)
    return {f"p{i}": pool_body(f"p{i}", family_range, str(next(cidrs)), priority=count - i) for i in range(count)}


def counting(monkeypatch: pytest.MonkeyPatch, owner: object, name: str) -> list[int]:
    """Count the calls of `owner.name` from now on."""
    calls: list[int] = []
    original: Callable[..., Any] = getattr(owner, name)

    def spy(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, spy)
    return calls


@pytest.mark.parametrize("family_range", FAMILIES)
def test_a_status_round_and_a_scrape_never_go_over_the_nodes(family_range: FamilyRange, monkeypatch: pytest.MonkeyPatch) -> None:
    api = FakeApi(pools=pools_of(family_range, 3))
    for index in range(6):
        api.add(f"n{index}")

    async def go() -> dict[str, list[int]]:
        reconciler = Reconciler(api, NodeAllocations([family_range]), Metrics())
        await reconciler.assign_all(await reconciler.rebuild())
        await reconciler.pools.sync()
        spies = {"ranges_by_node": counting(monkeypatch, NodeAllocations, "ranges_by_node")}
        spies |= {name: counting(monkeypatch, PoolSets, name) for name in ("owning_pool", "pool_of")}
        await reconciler.handle(api.add("late"))
        spies["pool_of"].clear()  # counting the allocation's metrics, one lookup per range
        await reconciler.pools.sync()
        reconciler.metrics.exposition()
        return spies

    spies = run(go)
    assert {name: len(calls) for name, calls in spies.items()} == {"ranges_by_node": 0, "owning_pool": 0, "pool_of": 0}
    assert api.statuses["p0"][-1]["nodes"] == 2 and api.statuses["p1"][-1]["nodes"] == 2


@pytest.mark.parametrize("family_range", FAMILIES)
def test_a_status_round_looks_only_at_the_pools_whose_usage_changed(
    family_range: FamilyRange, monkeypatch: pytest.MonkeyPatch
) -> None:
    api = FakeApi(pools=pools_of(family_range, 4))

    async def go() -> list[str]:
        reconciler = Reconciler(api, NodeAllocations([family_range]), Metrics())
        await reconciler.assign_all(await reconciler.rebuild())
        await reconciler.pools.sync()
        looked_at: list[str] = []
        original = poolsync_module.status_body

        def spy(spec: PoolSpec, *args: Any, **kwargs: Any) -> dict[str, Any]:
            looked_at.append(spec.name)
            return original(spec, *args, **kwargs)

        monkeypatch.setattr(poolsync_module, "status_body", spy)
        await reconciler.handle(api.add("a"))  # into p0, the highest priority
        await reconciler.pools.sync()
        await reconciler.pools.sync()  # nothing changed since
        return looked_at

    assert run(go) == ["p0"]
    assert [status["nodes"] for status in api.statuses["p0"]] == [0, 1]


@pytest.mark.parametrize("family_range", FAMILIES)
def test_a_status_write_that_failed_is_tried_again_in_the_next_round(family_range: FamilyRange) -> None:
    api = FakeApi(pools=pools_of(family_range, 2))
    failing = {"p0": 1}
    patch_pool_status = api.patch_pool_status

    async def flaky(name: str, status: Any) -> None:
        if failing.get(name):
            failing[name] -= 1
            raise ApiError(500, "InternalError", "etcdserver: request timed out")
        await patch_pool_status(name, status)

    api.patch_pool_status = flaky  # type: ignore[method-assign]

    async def go() -> None:
        reconciler = Reconciler(api, NodeAllocations([family_range]), Metrics())
        await reconciler.assign_all(await reconciler.rebuild())
        await reconciler.pools.sync()
        assert "p0" not in api.statuses and "p1" in api.statuses
        await reconciler.pools.sync()

    run(go)
    assert [status["nodes"] for status in api.statuses["p0"]] == [0]


def half_full_pools(family_range: FamilyRange, count: int) -> FakeApi:
    """`count` pools of four node ranges each, side by side, the first with the highest priority; two Nodes hold
    ranges in each (p0: p0-a, p0-b, ...)."""
    four_ranges = N(POOL_CIDRS[family_range.version][1]).supernet(N(POOL_CIDRS[family_range.version][1]).prefixlen - 1)[0]
    cidrs = four_ranges.supernet(four_ranges.prefixlen - 2)[0].subnet(four_ranges.prefixlen)
    api = FakeApi(pools={})
    for index in range(count):
        cidr = next(cidrs)
        assert api.pools is not None
        api.pools[f"p{index}"] = pool_body(f"p{index}", family_range, str(cidr), priority=count - index)
        ranges = cidr.subnet(family_range.node_mask_size)
        api.add(f"p{index}-a", str(next(ranges)))
        api.add(f"p{index}-b", str(next(ranges)))
    return api


def counts(api: FakeApi) -> dict[str, list[int]]:
    """Per pool, the Nodes each of its status writes counted."""
    return {name: [status["nodes"] for status in written] for name, written in sorted(api.statuses.items())}


@pytest.mark.parametrize("family_range", FAMILIES)
def test_changed_counts_are_written_a_few_pools_a_round_those_waiting_longest_first(
    family_range: FamilyRange, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(poolsync_module, "POOL_STATUS_WRITES_PER_ROUND", 1)
    api = half_full_pools(family_range, 3)

    async def go() -> list[dict[str, list[int]]]:
        reconciler = Reconciler(api, NodeAllocations([family_range]), Metrics())
        await reconciler.assign_all(await reconciler.rebuild())
        await reconciler.pools.sync()  # every pool's first status, at once
        seen = [counts(api)]
        for name in ("p0-a", "p1-a", "p2-a"):  # the counts of all three change
            await reconciler.deleted(api.nodes.pop(name))
        for _ in range(4):
            await reconciler.pools.sync()
            seen.append(counts(api))
            if len(seen) == 3:
                await reconciler.deleted(api.nodes.pop("p0-b"))  # p0 changes again: it waits behind p2
        return seen

    assert run(go) == [
        {"p0": [2], "p1": [2], "p2": [2]},
        {"p0": [2, 1], "p1": [2], "p2": [2]},
        {"p0": [2, 1], "p1": [2, 1], "p2": [2]},
        {"p0": [2, 1], "p1": [2, 1], "p2": [2, 1]},
        {"p0": [2, 1, 0], "p1": [2, 1], "p2": [2, 1]},
    ]


def deleting(body: dict[str, Any]) -> None:
    body["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"  # Ready flips to False: no spec change


def reprioritized(body: dict[str, Any]) -> None:
    body["spec"]["priority"] = 0  # a spec change: a new generation to observe, no condition flips
    body["metadata"]["generation"] = 2


@pytest.mark.parametrize("family_range", FAMILIES)
@pytest.mark.parametrize(
    ("change", "shows"),
    [
        pytest.param(
            deleting,
            lambda status: any(c["type"] == "Ready" and c["status"] == "False" for c in status["conditions"]),
            id="flipped",
        ),
        pytest.param(reprioritized, lambda status: status["observedGeneration"] == 2, id="observed"),
    ],
)
def test_news_is_written_at_once_ahead_of_the_pools_waiting_their_turn(
    family_range: FamilyRange,
    change: Callable[[dict[str, Any]], None],
    shows: Callable[[dict[str, Any]], bool],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(poolsync_module, "POOL_STATUS_WRITES_PER_ROUND", 1)
    api = half_full_pools(family_range, 4)

    async def go() -> None:
        reconciler = Reconciler(api, NodeAllocations([family_range]), Metrics())
        await reconciler.assign_all(await reconciler.rebuild())
        await reconciler.pools.sync()
        for name in ("p0-a", "p1-a", "p2-a", "p3-a"):
            await reconciler.deleted(api.nodes.pop(name))
        await reconciler.pools.sync()  # p0's turn; p1, p2, p3 wait
        assert api.pools is not None
        body = copy.deepcopy(api.pools["p3"])
        change(body)
        await reconciler.pool_event("MODIFIED", body)
        await reconciler.pools.sync()  # p1's turn, and p3's news ahead of p2

    run(go)
    assert counts(api) == {"p0": [2, 1], "p1": [2, 1], "p2": [2], "p3": [2, 1]}
    assert shows(api.statuses["p3"][-1])


@pytest.mark.parametrize("family_range", FAMILIES)
def test_after_a_restart_a_status_the_api_server_shows_already_is_not_written_again(family_range: FamilyRange) -> None:
    api = half_full_pools(family_range, 3)

    async def go() -> None:
        for _ in range(2):  # the controller, then the controller restarted
            reconciler = Reconciler(api, NodeAllocations([family_range]), Metrics())
            await reconciler.assign_all(await reconciler.rebuild())
            await reconciler.pools.sync()
        await reconciler.deleted(api.nodes.pop("p1-a"))
        await reconciler.pools.sync()

    run(go)
    assert counts(api) == {"p0": [2], "p1": [2, 1], "p2": [2]}


@pytest.mark.parametrize("family_range", FAMILIES)
def test_a_status_write_that_failed_goes_first_in_the_next_round(
    family_range: FamilyRange, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(poolsync_module, "POOL_STATUS_WRITES_PER_ROUND", 1)
    api = half_full_pools(family_range, 3)
    failing: dict[str, int] = {}
    patch_pool_status = api.patch_pool_status

    async def throttled(name: str, status: Any) -> None:
        if failing.get(name):
            failing[name] -= 1
            raise ApiError(429, "TooManyRequests", "the server has received too many requests")
        await patch_pool_status(name, status)

    api.patch_pool_status = throttled  # type: ignore[method-assign]

    async def go() -> list[dict[str, list[int]]]:
        reconciler = Reconciler(api, NodeAllocations([family_range]), Metrics())
        await reconciler.assign_all(await reconciler.rebuild())
        await reconciler.pools.sync()
        for name in ("p0-a", "p1-a", "p2-a"):
            await reconciler.deleted(api.nodes.pop(name))
        await reconciler.pools.sync()  # p0's turn
        failing["p1"] = 1
        seen = []
        for _ in range(3):  # p1's turn, refused; p1 again; p2
            await reconciler.pools.sync()
            seen.append(counts(api))
        return seen

    assert run(go) == [
        {"p0": [2, 1], "p1": [2], "p2": [2]},
        {"p0": [2, 1], "p1": [2, 1], "p2": [2]},
        {"p0": [2, 1], "p1": [2, 1], "p2": [2, 1]},
    ]


@pytest.mark.parametrize("family_range", FAMILIES)
@pytest.mark.parametrize(
    "shown",
    [
        pytest.param({"conditions": "Ready"}, id="conditions-a-string"),
        pytest.param({"conditions": [1, "Ready", None]}, id="conditions-not-objects"),
        pytest.param({"conditions": 7, "nodes": "two"}, id="conditions-a-number"),
        pytest.param("ready", id="status-a-string"),
    ],
)
def test_a_malformed_status_shown_is_written_over_not_a_crash(family_range: FamilyRange, shown: object) -> None:
    api = half_full_pools(family_range, 1)
    assert api.pools is not None
    api.pools["p0"]["status"] = shown  # a CRD without its schema keeps anything

    async def go() -> None:
        reconciler = Reconciler(api, NodeAllocations([family_range]), Metrics())
        await reconciler.assign_all(await reconciler.rebuild())
        await reconciler.pools.sync()

    run(go)
    assert counts(api) == {"p0": [2]}
    assert {condition["type"] for condition in api.statuses["p0"][0]["conditions"]} == {
        "Ready",
        "Exhausted",
        "Overlapping",
        "Draining",
    }


@pytest.mark.parametrize("family_range", FAMILIES)
def test_the_status_loop_comes_back_for_the_pools_whose_turn_it_was_not(
    family_range: FamilyRange, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(poolsync_module, "POOL_STATUS_WRITES_PER_ROUND", 1)
    monkeypatch.setattr(poolsync_module, "POOL_STATUS_DEBOUNCE", 0.01)
    api = half_full_pools(family_range, 3)

    async def go() -> None:
        reconciler = Reconciler(api, NodeAllocations([family_range]), Metrics())
        await reconciler.assign_all(await reconciler.rebuild())
        writer = asyncio.ensure_future(reconciler.write_pool_statuses())
        try:
            await wait_until(lambda: len(api.statuses) == 3)
            for name in ("p0-a", "p1-a", "p2-a"):
                await reconciler.deleted(api.nodes.pop(name))
            await wait_until(lambda: counts(api) == {"p0": [2, 1], "p1": [2, 1], "p2": [2, 1]})
        finally:
            writer.cancel()

    run(go)


@pytest.mark.parametrize("family_range", FAMILIES)
def test_a_finalizer_taken_off_by_hand_is_put_back_although_no_usage_changed(family_range: FamilyRange) -> None:
    api = FakeApi(pools=pools_of(family_range, 2))

    async def go() -> None:
        reconciler = Reconciler(api, NodeAllocations([family_range]), Metrics())
        await reconciler.assign_all(await reconciler.rebuild())
        await reconciler.pools.sync()
        body = api.pools["p1"]  # type: ignore[index]
        body["metadata"]["finalizers"] = []
        await reconciler.pool_event("MODIFIED", body)
        await reconciler.pools.sync()

    run(go)
    assert api.pools is not None and api.pools["p1"]["metadata"]["finalizers"] == [poolsync_module.POOL_FINALIZER]


@pytest.mark.parametrize("family_range", FAMILIES)
@pytest.mark.parametrize(
    ("refusal", "events", "attempts", "statuses_after_first_round"),
    [
        pytest.param(ApiError(403, "Forbidden", "cannot update nodecidrpools"), 1, 1, 1, id="refused-reported-status-written"),
        pytest.param(ApiError(500, "InternalError", "etcdserver: request timed out"), 0, 2, 0, id="failed-tried-again-first"),
    ],
)
def test_a_finalizer_the_api_server_will_not_set_is_told_apart_from_a_refused_status(
    family_range: FamilyRange, refusal: ApiError, events: int, attempts: int, statuses_after_first_round: int
) -> None:
    """A refused finalizer is reported as the finalizer's, tried again once the pool changes; the status is written."""
    api = FakeApi(pools=pools_of(family_range, 1))
    tries: list[str] = []
    set_pool_finalizers = api.set_pool_finalizers

    async def refusing(name: str, finalizers: Sequence[str], resource_version: str) -> dict[str, Any]:
        tries.append(name)
        if len(tries) == 1:
            raise refusal
        return await set_pool_finalizers(name, finalizers, resource_version)

    api.set_pool_finalizers = refusing  # type: ignore[method-assign]

    async def go() -> list[int]:
        reconciler = Reconciler(api, NodeAllocations([family_range]), Metrics())
        await reconciler.assign_all(await reconciler.rebuild())
        await reconciler.pools.sync()
        seen = [len(api.statuses.get("p0", []))]
        await reconciler.pools.sync()
        seen.append(len(tries))
        assert api.pools is not None
        body = api.pools["p0"]  # the pool changes: a refused finalizer is tried again
        body["metadata"]["resourceVersion"] = str(int(body["metadata"]["resourceVersion"]) + 1)
        await reconciler.pool_event("MODIFIED", body)
        await reconciler.pools.sync()
        return seen

    assert run(go) == [statuses_after_first_round, attempts]
    reasons = [(reason, "finalizer" in message) for _, reason, message in api.pool_events]
    assert reasons == [("InvalidPool", True)] * events
    assert len(tries) == 2, "tried again once the pool changed (the 500: already set, not tried a third time)"
    assert api.pools is not None and api.pools["p0"]["metadata"]["finalizers"] == [poolsync_module.POOL_FINALIZER]
    assert len(api.statuses["p0"]) == 1


@pytest.mark.parametrize("family_range", FAMILIES)
def test_a_pool_of_many_cidrs_adds_series_per_pool_not_per_cidr(family_range: FamilyRange) -> None:
    """A pool's ranges count in the pool's counters and tries histogram, never in a series per pool CIDR."""
    two_ranges = N(POOL_CIDRS[family_range.version][1])
    first, second = (str(cidr) for cidr in two_ranges.subnet(two_ranges.prefixlen + 1))
    api = FakeApi(pools={"p": pool_body("p", family_range, first, second, priority=1)})
    for name in ("a", "b", "c"):
        api.add(name)

    async def go() -> Reconciler:
        reconciler = Reconciler(api, NodeAllocations([family_range]), Metrics())
        await reconciler.assign_all(await reconciler.rebuild())
        return reconciler

    metrics = run(go).metrics

    def sample(name: str, **labels: str) -> float | None:
        return metrics.sample_value(f"node_ipam_controller_{name}", labels)

    assert sample("pool_allocation_tries_per_request_count", pool="p") == 2
    assert sample("cidrset_allocation_tries_per_request_count", clusterCIDR=first) is None
    assert sample("cidrset_allocation_tries_per_request_count", clusterCIDR=str(family_range.cluster_cidr)) == 1
    assert sample("pool_cidrs_allocations_total", pool="p") == 2
    assert sample("cidrset_cidrs_allocations_total", clusterCIDR=first) is None
    assert sample("cidrset_cidrs_allocations_total", clusterCIDR=second) is None
    assert sample("cidrset_cidrs_allocations_total", clusterCIDR=str(family_range.cluster_cidr)) == 1
