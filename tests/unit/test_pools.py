"""Pools as values: parsing, node selectors as the scheduler reads them, ranking, containment, overlap."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import netaddr
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller.config import FamilyRange
from controller.model import NodeInfo
from controller.nodes import NodeAllocations
from controller.poolrank import Candidate, PoolOrder, judge, overlaps, owner
from controller.pools import DEFAULT_POOL, NodeSelector, Operator, PoolSpec, PoolSpecError, Requirement
from controller.poolstatus import STATUS_COUNT_MAX, PoolUsage, status_body


def body(name: str, spec: dict[str, Any], created: str = "2026-01-01T00:00:00Z", generation: int = 1) -> dict[str, Any]:
    return {"metadata": {"name": name, "creationTimestamp": created, "generation": generation}, "spec": spec}


def family(mask: int, *cidrs: str, draining: tuple[str, ...] = ()) -> dict[str, Any]:
    return {"nodeMaskSize": mask, "cidrs": [{"cidr": cidr, "draining": cidr in draining} for cidr in cidrs]}


def expression(key: str, operator: str, *values: str) -> dict[str, Any]:
    return {"key": key, "operator": operator, "values": list(values)} if values else {"key": key, "operator": operator}


def selector(*terms: list[dict[str, Any]], fields: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    built = [{"matchExpressions": term} for term in terms]
    if fields is not None:
        built.append({"matchFields": fields})
    return {"nodeSelectorTerms": built}


V4 = family(24, "10.245.0.0/16")
V6 = family(64, "fd00:20::/56")


# -- one requirement ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("operator", "values", "label", "matches"),
    [
        (Operator.IN, ("a", "b"), "a", True),
        (Operator.IN, ("a", "b"), "c", False),
        (Operator.IN, ("a",), None, False),
        (Operator.NOT_IN, ("a", "b"), "a", False),
        (Operator.NOT_IN, ("a", "b"), "c", True),
        (Operator.NOT_IN, ("a",), None, True),  # an absent label is not in the set, as labels.Selector has it
        (Operator.EXISTS, (), "", True),
        (Operator.EXISTS, (), None, False),
        (Operator.DOES_NOT_EXIST, (), "x", False),
        (Operator.DOES_NOT_EXIST, (), None, True),
        (Operator.GT, ("8",), "16", True),
        (Operator.GT, ("8",), "8", False),
        (Operator.GT, ("8",), "+9", True),  # strconv.ParseInt takes a sign
        (Operator.GT, ("-1",), "0", True),
        (Operator.GT, ("8",), "many", False),  # not an integer: no match
        (Operator.GT, ("8",), "9223372036854775808", False),  # beyond int64: no match
        (Operator.GT, ("8",), None, False),
        (Operator.LT, ("8",), "7", True),
        (Operator.LT, ("8",), "8", False),
        (Operator.LT, ("8",), "1.5", False),
        (Operator.LT, ("8",), None, False),
    ],
)
def test_requirement_matches_as_the_scheduler(
    operator: Operator, values: tuple[str, ...], label: str | None, matches: bool
) -> None:
    assert Requirement("key", operator, values).matches(label) is matches


@pytest.mark.parametrize(
    ("operator", "values"),
    [
        (Operator.IN, ()),
        (Operator.NOT_IN, ()),
        (Operator.EXISTS, ("x",)),
        (Operator.DOES_NOT_EXIST, ("x",)),
        (Operator.GT, ()),
        (Operator.GT, ("1", "2")),
        (Operator.LT, ("one",)),
    ],
)
def test_requirement_refuses_values_its_operator_cannot_take(operator: Operator, values: tuple[str, ...]) -> None:
    with pytest.raises(PoolSpecError):
        Requirement("key", operator, values)


# -- selectors -----------------------------------------------------------------------------------------

GPU = [expression("gpu", "In", "true")]
BIG = [expression("cores", "Gt", "32")]
GPU_AND_BIG = [*GPU, *BIG]


@pytest.mark.parametrize(
    ("spec", "labels", "name", "specificity"),
    [
        (None, {}, "n1", 0),  # omitted: every Node
        (selector(GPU), {"gpu": "true"}, "n1", 1),
        (selector(GPU), {"gpu": "false"}, "n1", None),
        (selector(GPU_AND_BIG), {"gpu": "true", "cores": "64"}, "n1", 2),  # expressions ANDed
        (selector(GPU_AND_BIG), {"gpu": "true", "cores": "16"}, "n1", None),
        (selector(GPU, BIG), {"cores": "64"}, "n1", 1),  # terms ORed
        (selector(GPU, GPU_AND_BIG), {"gpu": "true", "cores": "64"}, "n1", 2),  # the most specific matching term counts
        (selector(GPU, GPU_AND_BIG), {"gpu": "true"}, "n1", 1),
        (selector([]), {"gpu": "true"}, "n1", None),  # an empty term matches nothing
        (selector(fields=[expression("metadata.name", "In", "n1")]), {}, "n1", 1),
        (selector(fields=[expression("metadata.name", "In", "n1")]), {}, "n2", None),
        (selector(fields=[expression("metadata.name", "NotIn", "n1")]), {}, "n2", 1),
        (selector(fields=[expression("metadata.name", "NotIn", "n1")]), {}, "n1", None),
        (
            {"nodeSelectorTerms": [{"matchExpressions": GPU, "matchFields": [expression("metadata.name", "In", "n1")]}]},
            {"gpu": "true"},
            "n2",
            None,  # expressions and fields of one term are ANDed
        ),
        (
            {"nodeSelectorTerms": [{"matchExpressions": GPU, "matchFields": [expression("metadata.name", "In", "n1")]}]},
            {"gpu": "true"},
            "n1",
            2,
        ),
        (selector([expression("zone", "NotIn", "a"), expression("spot", "DoesNotExist")]), {"zone": "b"}, "n1", 2),
        (selector([expression("zone", "NotIn", "a"), expression("spot", "DoesNotExist")]), {"spot": ""}, "n1", None),
        (selector([expression("zone", "Exists"), expression("cores", "Lt", "8")]), {"zone": "a", "cores": "4"}, "n1", 2),
    ],
)
def test_selector_terms_are_ored_and_requirements_anded(
    spec: dict[str, Any] | None, labels: dict[str, str], name: str, specificity: int | None
) -> None:
    parsed = NodeSelector.from_body(spec)
    assert parsed.specificity(labels, name) == specificity
    assert parsed.matches(labels, name) is (specificity is not None)


@pytest.mark.parametrize(
    "spec",
    [
        {"nodeSelectorTerms": []},
        selector([expression("gpu", "Near", "x")]),
        selector(fields=[expression("metadata.uid", "In", "x")]),
        selector(fields=[expression("metadata.name", "Exists")]),
        selector(fields=[expression("metadata.name", "In", "a", "b")]),
    ],
)
def test_selector_refuses_what_the_scheduler_refuses(spec: dict[str, Any]) -> None:
    with pytest.raises(PoolSpecError):
        NodeSelector.from_body(spec)


# -- parsing a pool ---------------------------------------------------------------------------------


def test_pool_spec_is_parsed_with_every_field() -> None:
    pool = PoolSpec.from_body(
        body(
            "gpu",
            {
                "priority": 10,
                "disabled": True,
                "nodeSelector": selector(GPU),
                "ipv6": V6,
                "ipv4": family(24, "10.245.0.0/16", "10.246.0.0/16", draining=("10.246.0.0/16",)),
                "reserved": ["10.245.0.0/24", "fd00:20::/64"],
            },
            generation=3,
        )
    )
    assert (pool.name, pool.priority, pool.disabled, pool.generation) == ("gpu", 10, True, 3)
    assert pool.versions == (4, 6)
    ipv4 = pool.family(4)
    assert ipv4 is not None and ipv4.node_mask_size == 24
    assert [(str(entry.cidr), entry.draining) for entry in ipv4.cidrs] == [("10.245.0.0/16", False), ("10.246.0.0/16", True)]
    assert [str(cidr) for cidr in pool.reserved] == ["10.245.0.0/24", "fd00:20::/64"]
    assert str(pool.selector) == "gpu in (true)"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({}, "neither ipv4 nor ipv6"),
        ({"ipv4": family(24, "10.245.0.0")}, "not a CIDR"),
        ({"ipv4": family(24, "10.245.1.0/16")}, "canonical form"),
        ({"ipv6": family(64, "fd00:20::1/56")}, "canonical form"),
        ({"ipv4": family(24, "fd00:20::/56")}, "is not IPv4"),
        ({"ipv6": family(64, "10.245.0.0/16")}, "is not IPv6"),
        ({"ipv4": family(16, "10.245.0.0/20")}, "does not fit"),
        ({"ipv6": family(48, "fd00:20::/56")}, "does not fit"),
        ({"ipv4": family(24, "10.245.0.0/16", "10.245.128.0/17")}, "overlap"),
        ({"ipv6": family(64, "fd00:20::/48", "fd00:20:0:100::/56")}, "overlap"),
        ({"ipv4": V4, "reserved": ["10.9.0.0/24"]}, "outside the pool"),
        ({"ipv6": V6, "reserved": ["fd00:99::/64"]}, "outside the pool"),
        ({"ipv4": {"cidrs": []}}, "malformed"),
    ],
)
def test_a_pool_the_crd_should_have_refused_is_refused_by_name(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(PoolSpecError, match="NodeCIDRPool bad: .*" + message):
        PoolSpec.from_body(body("bad", spec))


def test_default_pool_is_the_flags() -> None:
    ranges = (FamilyRange(netaddr.IPNetwork("fd00:10::/56"), 64), FamilyRange(netaddr.IPNetwork("10.244.0.0/16"), 24))
    pool = PoolSpec.default(ranges)
    assert pool.name == DEFAULT_POOL and pool.is_default and pool.versions == (4, 6)
    assert pool.selector.matches({}, "any")


# -- ranking ---------------------------------------------------------------------------------------


def candidate(
    name: str, free: tuple[int, ...], priority: int = 0, spec: dict[str, Any] | None = None, **fields: Any
) -> Candidate:
    base: dict[str, Any] = {"priority": priority, **fields}
    if spec is not None:
        base["nodeSelector"] = spec
    return Candidate(PoolSpec.from_body(body(name, base)), free)


def default_candidate(free: tuple[int, ...], *ranges: tuple[str, int]) -> Candidate:
    return Candidate(PoolSpec.default([FamilyRange(netaddr.IPNetwork(cidr), mask) for cidr, mask in ranges]), free)


def rank(candidates: list[Candidate], labels: dict[str, str], node: str, versions: tuple[int, ...]) -> list[Candidate]:
    """The order the controller tries the pools in (`PoolOrder`), which must be `judge`'s less the pools passed over."""
    by_name = {candidate.name: candidate for candidate in candidates}
    ranked = list(PoolOrder([c.spec for c in candidates], versions, by_name.get).ranked(labels, node))
    assert ranked == [judged.candidate for judged in judge(candidates, labels, node, versions) if not judged.passed]
    return ranked


V4_DEFAULT = ("10.244.0.0/16", 24)
V6_DEFAULT = ("fd00:10::/56", 64)


@pytest.mark.parametrize(
    ("family_spec", "versions", "default_range"),
    [({"ipv4": V4}, (4,), V4_DEFAULT), ({"ipv6": V6}, (6,), V6_DEFAULT)],
    ids=["ipv4", "ipv6"],
)
@pytest.mark.parametrize(
    ("pools", "labels", "expected"),
    [
        # priority first, whatever else
        ([("low", 5, 0, None), ("high", 500, 1, None)], {}, ["high", "low"]),
        # then the more specific selector
        (
            [("any", 5, 0, None), ("gpu", 500, 0, selector(GPU)), ("gpu-big", 500, 0, selector(GPU_AND_BIG))],
            {"gpu": "true", "cores": "64"},
            ["gpu-big", "gpu", "any"],
        ),
        # then the smaller free capacity
        ([("roomy", 500, 0, None), ("tight", 5, 0, None)], {}, ["tight", "roomy"]),
        # then the name
        ([("b", 5, 0, None), ("a", 5, 0, None)], {}, ["a", "b"]),
        # a selector that does not match leaves the pool out
        ([("gpu", 5, 0, selector(GPU)), ("any", 5, 0, None)], {"gpu": "false"}, ["any"]),
        # negative priority still comes before the default pool
        ([("last-resort", 5, -100, None)], {}, ["last-resort"]),
    ],
)
def test_rank_orders_priority_then_specificity_then_free_then_name_default_last(
    family_spec: dict[str, Any],
    versions: tuple[int, ...],
    default_range: tuple[str, int],
    pools: list[tuple[str, int, int, dict[str, Any] | None]],
    labels: dict[str, str],
    expected: list[str],
) -> None:
    candidates = [candidate(name, (free,), priority, spec, **family_spec) for name, free, priority, spec in pools]
    candidates.insert(0, default_candidate((1,), default_range))
    ranked = rank(candidates, labels, "n1", versions)
    assert [c.name for c in ranked] == [*expected, DEFAULT_POOL]


@pytest.mark.parametrize(
    ("pool_spec", "versions"),
    [
        ({"ipv4": V4, "disabled": True}, (4,)),
        ({"ipv6": V6, "disabled": True}, (6,)),
        ({"ipv4": V4}, (6,)),  # serves another family than the cluster
        ({"ipv6": V6}, (4,)),
        ({"ipv4": V4}, (4, 6)),  # single-stack pool in a dual-stack cluster
        ({"ipv4": V4, "ipv6": V6}, (4,)),
    ],
)
def test_rank_leaves_out_disabled_pools_and_pools_of_other_families(pool_spec: dict[str, Any], versions: tuple[int, ...]) -> None:
    assert rank([Candidate(PoolSpec.from_body(body("p", pool_spec)), (9,) * len(versions))], {}, "n1", versions) == []


def test_full_pools_are_ranked_but_have_no_room_and_dual_stack_is_all_or_nothing() -> None:
    """`NodeAllocations.reserve` takes the first ranked pool with room, naming the full ones it skipped."""
    dual = {"ipv4": V4, "ipv6": V6}
    v6_full = candidate("v6-full", (10, 0), 9, **dual)
    v4_full = candidate("v4-full", (0, 10), 8, **dual)
    room = candidate("room", (1, 1), 1, **dual)
    ranked = rank([room, v4_full, v6_full], {}, "n1", (4, 6))
    assert [c.name for c in ranked] == ["v6-full", "v4-full", "room"]
    assert [c.name for c in ranked if c.has_room] == ["room"]
    assert not any(c.has_room for c in ranked[:2])


# -- which pool holds a range ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cidr", "expected"),
    [
        ("10.245.3.0/24", "gpu"),
        ("10.246.7.0/24", "gpu"),  # a draining CIDR still holds its ranges
        ("10.244.1.0/24", DEFAULT_POOL),
        ("10.99.0.0/24", None),
        ("fd00:20:0:1::/64", "gpu"),
        ("fd00:10:0:1::/64", DEFAULT_POOL),
        ("fd00:99::/64", None),
    ],
)
def test_holder_is_decided_by_containment_of_the_range(cidr: str, expected: str | None) -> None:
    gpu = PoolSpec.from_body(
        body(
            "gpu",
            {
                "nodeSelector": selector(GPU),
                "ipv4": family(24, "10.245.0.0/16", "10.246.0.0/16", draining=("10.246.0.0/16",)),
                "ipv6": V6,
            },
        )
    )
    default = PoolSpec.default([FamilyRange(netaddr.IPNetwork(c), m) for c, m in (V4_DEFAULT, V6_DEFAULT)])
    found = owner(netaddr.IPNetwork(cidr), [gpu, default])
    assert (found.name if found else None) == expected


@pytest.mark.parametrize(
    ("later", "earlier", "services", "refused"),
    [
        (
            {"ipv4": family(24, "10.244.128.0/17")},
            {"ipv4": family(24, "10.245.0.0/16")},
            [],
            {"later": "overlaps 10.244.0.0/16 of pool (default)"},
        ),
        (
            {"ipv6": family(64, "fd00:10::/60")},
            {"ipv6": family(64, "fd00:20::/56")},
            [],
            {"later": "overlaps fd00:10::/56 of pool (default)"},
        ),
        (
            {"ipv4": family(24, "10.245.128.0/17")},
            {"ipv4": family(24, "10.245.0.0/16")},
            [],
            {"later": "overlaps 10.245.0.0/16 of pool earlier"},
        ),
        (
            {"ipv6": family(64, "fd00:20::/60")},
            {"ipv6": family(64, "fd00:20::/56")},
            [],
            {"later": "overlaps fd00:20::/56 of pool earlier"},
        ),
        (
            {"ipv4": family(24, "10.96.0.0/16")},
            {"ipv4": family(24, "10.245.0.0/16")},
            ["10.96.0.0/12"],
            {"later": "overlaps the service range"},
        ),
        (
            {"ipv6": family(64, "fd00:96::/56")},
            {"ipv6": family(64, "fd00:20::/56")},
            ["fd00:96::/108"],
            {"later": "overlaps the service range"},
        ),
        ({"ipv4": family(24, "10.250.0.0/16")}, {"ipv4": family(24, "10.245.0.0/16")}, [], {}),
        ({"ipv6": family(64, "fd00:30::/56")}, {"ipv6": family(64, "fd00:20::/56")}, [], {}),
    ],
)
def test_the_later_of_two_overlapping_pools_is_refused(
    later: dict[str, Any], earlier: dict[str, Any], services: list[str], refused: dict[str, str]
) -> None:
    default = PoolSpec.default([FamilyRange(netaddr.IPNetwork(c), m) for c, m in (V4_DEFAULT, V6_DEFAULT)])
    pools = [
        PoolSpec.from_body(body("later", later, created="2026-02-01T00:00:00Z")),
        PoolSpec.from_body(body("earlier", earlier, created="2026-01-01T00:00:00Z")),
        default,
    ]
    found = overlaps(pools, [netaddr.IPNetwork(s) for s in services])
    assert set(found) == set(refused)
    for name, message in refused.items():
        assert message in found[name]


@pytest.mark.parametrize(
    ("pools", "refused"),
    [
        pytest.param(
            # (name, CIDRs, created day): the message names the earliest pool clashed with, not the first CIDR that clashes
            [("first", ["10.245.0.0/16"], 1), ("second", ["10.246.0.0/16"], 2), ("late", ["10.246.1.0/24", "10.245.1.0/24"], 3)],
            {"late": "10.245.1.0/24 overlaps 10.245.0.0/16 of pool first"},
            id="ipv4-earliest-pool-first",
        ),
        pytest.param(
            [("first", ["fd00:20::/56"], 1), ("second", ["fd00:30::/56"], 2), ("late", ["fd00:30::/64", "fd00:20::/64"], 3)],
            {"late": "fd00:20::/64 overlaps fd00:20::/56 of pool first"},
            id="ipv6-earliest-pool-first",
        ),
        pytest.param(
            # of one pool's clashes: its own CIDRs in spec order
            [("first", ["10.245.0.0/24", "10.245.1.0/24"], 1), ("late", ["10.245.1.0/25", "10.245.0.0/24"], 2)],
            {"late": "10.245.1.0/25 overlaps 10.245.1.0/24 of pool first"},
            id="ipv4-own-cidrs-in-order",
        ),
        pytest.param(
            [("first", ["fd00:20::/64", "fd00:20:0:1::/64"], 1), ("late", ["fd00:20:0:1::/65", "fd00:20::/64"], 2)],
            {"late": "fd00:20:0:1::/65 overlaps fd00:20:0:1::/64 of pool first"},
            id="ipv6-own-cidrs-in-order",
        ),
        pytest.param(
            # then the earlier pool's CIDRs in its spec order, not by address
            [("first", ["10.245.1.0/24", "10.245.0.0/24"], 1), ("late", ["10.245.0.0/23"], 2)],
            {"late": "10.245.0.0/23 overlaps 10.245.1.0/24 of pool first"},
            id="ipv4-their-cidrs-in-order",
        ),
        pytest.param(
            [("first", ["fd00:20:0:1::/64", "fd00:20::/64"], 1), ("late", ["fd00:20::/63"], 2)],
            {"late": "fd00:20::/63 overlaps fd00:20:0:1::/64 of pool first"},
            id="ipv6-their-cidrs-in-order",
        ),
        pytest.param(
            # a pool overlapping only a refused pool serves; the same CIDR twice: the later is refused
            [
                ("first", ["10.245.1.0/24"], 1),
                ("wide", ["10.245.0.0/16"], 2),
                ("inside", ["10.245.0.0/24"], 3),
                ("again", ["10.245.1.0/24"], 4),
            ],
            {
                "wide": "10.245.0.0/16 overlaps 10.245.1.0/24 of pool first",
                "again": "10.245.1.0/24 overlaps 10.245.1.0/24 of pool first",
            },
            id="ipv4-only-refused-pools-do-not-refuse",
        ),
        pytest.param(
            [
                ("first", ["fd00:20:0:1::/64"], 1),
                ("wide", ["fd00:20::/56"], 2),
                ("inside", ["fd00:20::/64"], 3),
                ("again", ["fd00:20:0:1::/64"], 4),
            ],
            {
                "wide": "fd00:20::/56 overlaps fd00:20:0:1::/64 of pool first",
                "again": "fd00:20:0:1::/64 overlaps fd00:20:0:1::/64 of pool first",
            },
            id="ipv6-only-refused-pools-do-not-refuse",
        ),
    ],
)
def test_overlaps_names_the_first_clash_in_priority_order(
    pools: list[tuple[str, list[str], int]], refused: dict[str, str]
) -> None:
    specs = [
        PoolSpec.from_body(
            body(
                name,
                {f"ipv{netaddr.IPNetwork(cidrs[0]).version}": family(28 if "." in cidrs[0] else 72, *cidrs)},
                created=f"2026-01-{day:02d}T00:00:00Z",
            )
        )
        for name, cidrs, day in reversed(pools)
    ]
    assert overlaps(specs) == refused


def pairwise_overlaps(pools: list[PoolSpec], services: list[netaddr.IPNetwork]) -> dict[str, str]:
    """The definition: every pool, in order of seniority, against every CIDR of every earlier pool kept."""
    accepted: list[PoolSpec] = []
    refused: dict[str, str] = {}
    for pool in sorted(pools, key=lambda p: (0 if p.is_default else 1, p.created, p.name)):
        clash = next(
            (
                f"{entry.cidr} overlaps {theirs.cidr} of pool {other.name}"
                for other in accepted
                for own in pool.families
                for entry in own.cidrs
                for theirs in (other.family(own.version).cidrs if other.family(own.version) else ())
                if entry.cidr.first <= theirs.cidr.last and theirs.cidr.first <= entry.cidr.last
            ),
            None,
        )
        if clash is None and not pool.is_default:
            clash = next(
                (
                    f"{entry.cidr} overlaps the service range {service}"
                    for own in pool.families
                    for entry in own.cidrs
                    for service in services
                    if service.version == own.version and entry.cidr.first <= service.last and service.first <= entry.cidr.last
                ),
                None,
            )
        if clash is None:
            accepted.append(pool)
        else:
            refused[pool.name] = clash
    return refused


def random_pools(draw: st.DrawFn, base: str, version: int) -> tuple[list[PoolSpec], list[netaddr.IPNetwork]]:
    """Up to six pools of up to three disjoint CIDRs each, nested in or beside each other's, in a small range."""
    space = netaddr.IPNetwork(base)
    lengths = st.integers(min_value=space.prefixlen, max_value=space.prefixlen + 4)
    pools = []
    for index in range(draw(st.integers(min_value=0, max_value=6))):
        cidrs: list[netaddr.IPNetwork] = []
        for _ in range(draw(st.integers(min_value=1, max_value=3))):
            length = draw(lengths)
            cidr = netaddr.IPNetwork(
                (
                    space.first
                    + draw(st.integers(0, 2 ** (length - space.prefixlen) - 1)) * 2 ** ((32 if version == 4 else 128) - length),
                    length,
                ),
                version,
            )
            if not any(cidr.first <= c.last and c.first <= cidr.last for c in cidrs):
                cidrs.append(cidr)
        mask = space.prefixlen + 6
        spec = {f"ipv{version}": family(mask, *map(str, cidrs))}
        pools.append(PoolSpec.from_body(body(f"p{index}", spec, created=f"2026-01-{draw(st.integers(1, 3)):02d}T00:00:00Z")))
    pools.append(
        PoolSpec.default([FamilyRange(netaddr.IPNetwork((space.first, space.prefixlen + 2), version), space.prefixlen + 6)])
    )
    services = [
        netaddr.IPNetwork(
            (space.last - 2 ** ((32 if version == 4 else 128) - space.prefixlen - 3) + 1, space.prefixlen + 3), version
        )
    ]
    return pools, services if draw(st.booleans()) else []


@pytest.mark.parametrize(("base", "version"), [("10.0.0.0/20", 4), ("fd00::/100", 6)], ids=["ipv4", "ipv6"])
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_overlaps_by_sweep_equals_the_pairwise_definition(base: str, version: int, data: st.DataObject) -> None:
    pools, services = data.draw(st.composite(lambda draw: random_pools(draw, base, version))())
    assert overlaps(pools, services) == pairwise_overlaps(pools, services)


# -- usage -------------------------------------------------------------------------------------------


def nets(*cidrs: str) -> list[netaddr.IPNetwork]:
    return [netaddr.IPNetwork(cidr) for cidr in cidrs]


DEFAULT_RANGES = [FamilyRange(netaddr.IPNetwork(c), m) for c, m in (V4_DEFAULT, V6_DEFAULT)]


def usage_of(spec: PoolSpec, holdings: Sequence[tuple[str, Sequence[netaddr.IPNetwork]]] = ()) -> PoolUsage:
    """The pool's usage as the controller keeps it, once these Nodes hold these ranges."""
    allocations = NodeAllocations(DEFAULT_RANGES, pools=[spec])
    for name, cidrs in holdings:
        allocations.observe(NodeInfo(name, f"uid-{name}", tuple(str(cidr) for cidr in cidrs)))
    usage = allocations.pool_usage.usage(spec.name)
    assert usage is not None
    return usage


# -- status --------------------------------------------------------------------------------------------


def conditions_of(status: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}


@pytest.mark.parametrize(
    ("pool_spec", "holdings", "key", "columns", "summary", "exhausted"),
    [
        (
            {"ipv4": family(26, "10.245.0.0/24", "10.246.0.0/24", draining=("10.246.0.0/24",)), "reserved": ["10.245.0.0/26"]},
            [("a", nets("10.245.0.64/26")), ("b", nets("10.246.0.0/26"))],
            "ipv4",
            {"ipv4": "10.245.0.0/24,10.246.0.0/24(draining)", "mask": "/26", "selector": "gpu in (true)"},
            "2/7 (28%)",
            False,
        ),
        (
            {"ipv6": family(64, "fd00:20::/63", "fd00:21::/64", draining=("fd00:21::/64",))},
            [("a", nets("fd00:20::/64")), ("c", nets("fd00:20:0:1::/64")), ("b", nets("fd00:21::/64"))],
            "ipv6",
            {"ipv6": "fd00:20::/63,fd00:21::/64(draining)", "mask": "/64", "selector": "gpu in (true)"},
            "3/3 (100%)",
            True,
        ),
    ],
    ids=["ipv4", "ipv6"],
)
def test_status_body_shows_usage_conditions_and_columns(
    pool_spec: dict[str, Any],
    holdings: list[tuple[str, list[netaddr.IPNetwork]]],
    key: str,
    columns: dict[str, str],
    summary: str,
    exhausted: bool,
) -> None:
    spec = PoolSpec.from_body(body("gpu", {**pool_spec, "nodeSelector": selector(GPU)}, generation=4))
    usage = usage_of(spec, holdings)
    status = status_body(spec, usage, now="2026-11-28T10:00:00Z")
    assert status["observedGeneration"] == 4 and status["columns"] == columns and status["summary"] == summary
    assert status["blockingNodes"] == ["b"] and status[key]["perCIDR"][1]["draining"] is True
    assert conditions_of(status) == {
        "Ready": ("True", "Serving"),
        "Exhausted": ("True", "NoFreeRange") if exhausted else ("False", "RangesFree"),
        "Overlapping": ("False", "NoOverlap"),
        "Draining": ("True", "CIDRsDraining"),
    }
    # A later status keeps the transition time of conditions that did not change.
    later = status_body(spec, usage, now="2026-11-28T11:00:00Z", previous=status["conditions"], deleting=True)
    times = {c["type"]: c["lastTransitionTime"] for c in later["conditions"]}
    assert times["Ready"] == "2026-11-28T11:00:00Z" and times["Draining"] == "2026-11-28T10:00:00Z"
    assert conditions_of(later)["Ready"] == ("False", "Deleting")


@pytest.mark.parametrize(
    ("pool_spec", "refused", "ready"),
    [
        ({"ipv4": family(24, "10.244.0.0/20")}, True, ("False", "Overlapping")),
        ({"ipv6": family(64, "fd00:10::/60")}, True, ("False", "Overlapping")),
        ({"ipv4": family(24, "10.245.0.0/20"), "disabled": True}, False, ("False", "Disabled")),
        ({"ipv6": family(64, "fd00:20::/60"), "disabled": True}, False, ("False", "Disabled")),
    ],
)
def test_status_body_of_a_refused_or_disabled_pool_is_not_ready(
    pool_spec: dict[str, Any], refused: bool, ready: tuple[str, str]
) -> None:
    spec = PoolSpec.from_body(body("p", pool_spec))
    status = status_body(spec, usage_of(spec), now="2026-11-28T10:00:00Z")
    assert conditions_of(status)["Ready"] == ready
    assert conditions_of(status)["Overlapping"][0] == ("True" if refused else "False")


@pytest.mark.parametrize(
    ("pool_spec", "key", "capacity"),
    [
        pytest.param({"ipv4": family(32, "10.0.0.0/8")}, "ipv4", 2**24, id="ipv4-as-counted"),
        pytest.param({"ipv6": family(112, "fd00:30::/48")}, "ipv6", STATUS_COUNT_MAX, id="ipv6-2^64-capped"),
    ],
)
def test_status_counts_past_int64_are_capped(pool_spec: dict[str, Any], key: str, capacity: int) -> None:
    spec = PoolSpec.from_body(body("huge", pool_spec))
    status = status_body(spec, usage_of(spec), now="2026-11-28T10:00:00Z")
    assert status[key]["capacity"] == status[key]["free"] == status[key]["perCIDR"][0]["capacity"] == capacity


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        pytest.param(
            {"ipv4": V4, "nodeSelector": "gpu=true"}, "nodeSelector is a str, not an object", id="ipv4-selector-a-string"
        ),
        pytest.param({"ipv6": V6, "nodeSelector": {"nodeSelectorTerms": "gpu"}}, "nodeSelectorTerms is a str", id="ipv6-terms"),
        pytest.param({"ipv4": V4, "nodeSelector": selector(["gpu"])}, "a matchExpression is a str", id="ipv4-expression"),
        pytest.param({"ipv6": {"nodeMaskSize": 64, "cidrs": "fd00:20::/56"}}, "ipv6.cidrs is a str, not a list", id="ipv6-cidrs"),
        pytest.param({"ipv4": "10.245.0.0/16"}, "ipv4 is a str, not an object", id="ipv4-a-string"),
        pytest.param("ipv4", "spec is a str", id="spec-a-string"),
    ],
)
def test_a_pool_of_any_shape_is_refused_by_name_not_raised(spec: Any, message: str) -> None:
    with pytest.raises(PoolSpecError, match="NodeCIDRPool bad: " + message):
        PoolSpec.from_body(body("bad", spec))
