"""`nodeipam explain`: the pools in the controller's order, what became of each and why, for IPv4 and for IPv6."""

from __future__ import annotations

import dataclasses
import datetime
from typing import Any

import netaddr
import pytest

from controller import explain as ex
from controller.config import FamilyRange
from controller.inflight import InFlight
from controller.model import NodeInfo, labels_of
from controller.nodes import NodeAllocations
from controller.poolrank import Candidate, judge
from controller.pools import DEFAULT_POOL, PoolSpec

NOW = datetime.datetime(2026, 12, 3, 12, 0, tzinfo=datetime.UTC)


@dataclasses.dataclass(frozen=True)
class Family:
    """One IP family's numbers, so that each case runs on IPv4 and on IPv6."""

    key: str
    cluster: str  # the flags' range: 4 Node ranges
    mask: int
    gpu: str  # a pool of 2 Node ranges
    gpu_ranges: tuple[str, str]
    other: str  # a pool of 2 Node ranges
    other_ranges: tuple[str, str]
    cluster_first: str
    spare: str  # a pool CIDR apart from the others


V4 = Family(
    "ipv4", "10.0.0.0/22", 24, "10.1.0.0/23", ("10.1.0.0/24", "10.1.1.0/24"), "10.2.0.0/23", ("10.2.0.0/24", "10.2.1.0/24"),
    "10.0.0.0/24", "10.3.0.0/23",
)  # fmt: skip
V6 = Family(
    "ipv6", "fd00::/62", 64, "fd01::/63", ("fd01::/64", "fd01:0:0:1::/64"), "fd02::/63", ("fd02::/64", "fd02:0:0:1::/64"),
    "fd00::/64", "fd03::/63",
)  # fmt: skip
FAMILIES = pytest.mark.parametrize("fam", [V4, V6], ids=["ipv4", "ipv6"])


def node(name: str, *cidrs: str, **labels: str) -> NodeInfo:
    return NodeInfo(name, f"uid-{name}", tuple(cidrs), cidrs[0] if cidrs else "", labels_of(labels))


def pool(name: str, fam: Family, cidr: str, *, key: str = "", draining: bool = False, **spec: Any) -> dict[str, Any]:
    """A NodeCIDRPool; `key`: a label key its selector requires (Exists), else it matches every Node."""
    body: dict[str, Any] = {fam.key: {"nodeMaskSize": fam.mask, "cidrs": [{"cidr": cidr, "draining": draining}]}, **spec}
    if key:
        body["nodeSelector"] = {"nodeSelectorTerms": [{"matchExpressions": [{"key": key, "operator": "Exists"}]}]}
    return {"metadata": {"name": name, "creationTimestamp": "2026-01-01T00:00:00Z"}, "spec": body}


def ranges(fam: Family) -> list[FamilyRange]:
    return [FamilyRange(netaddr.IPNetwork(fam.cluster), fam.mask)]


def verdicts(explanation: ex.Explanation) -> list[tuple[str, str]]:
    return [(verdict.pool, verdict.verdict) for verdict in explanation.pools]


# (case, pools(fam), nodes(fam), state, pool, cidrs(fam), verdicts)
CASES: list[tuple[str, Any, Any, str, str, Any, list[tuple[str, str]]]] = [
    (
        "no pools: the flags' range",
        lambda f: [],
        lambda f: [node("n")],
        ex.UNASSIGNED,
        DEFAULT_POOL,
        lambda f: (f.cluster_first,),
        [(DEFAULT_POOL, ex.TAKEN)],
    ),
    (
        "the matching pool with priority first",
        lambda f: [pool("gpu", f, f.gpu, key="gpu", priority=10), pool("other", f, f.other, key="gpu")],
        lambda f: [node("n", gpu="a")],
        ex.UNASSIGNED,
        "gpu",
        lambda f: (f.gpu_ranges[0],),
        [("gpu", ex.TAKEN), ("other", ex.NOT_TRIED), (DEFAULT_POOL, ex.NOT_TRIED)],
    ),
    (
        "the more specific selector first at equal priority",
        lambda f: [pool("gpu", f, f.gpu, key="gpu"), pool("other", f, f.other)],
        lambda f: [node("n", gpu="a")],
        ex.UNASSIGNED,
        "gpu",
        lambda f: (f.gpu_ranges[0],),
        [("gpu", ex.TAKEN), ("other", ex.NOT_TRIED), (DEFAULT_POOL, ex.NOT_TRIED)],
    ),
    (
        "a full pool is passed over for the next",
        lambda f: [pool("gpu", f, f.gpu, key="gpu", priority=10), pool("other", f, f.other, key="gpu")],
        lambda f: [node("a", f.gpu_ranges[0]), node("b", f.gpu_ranges[1]), node("n", gpu="a")],
        ex.UNASSIGNED,
        "other",
        lambda f: (f.other_ranges[0],),
        [("gpu", ex.FULL), ("other", ex.TAKEN), (DEFAULT_POOL, ex.NOT_TRIED)],
    ),
    (
        "a draining pool has no room",
        lambda f: [pool("gpu", f, f.gpu, key="gpu", priority=10, draining=True)],
        lambda f: [node("n", gpu="a")],
        ex.UNASSIGNED,
        DEFAULT_POOL,
        lambda f: (f.cluster_first,),
        [("gpu", ex.DRAINING), (DEFAULT_POOL, ex.TAKEN)],
    ),
    (
        "disabled, no match and refused are passed over",
        lambda f: [
            pool("gpu", f, f.gpu, key="gpu", disabled=True),
            pool("other", f, f.other, key="zone"),
            pool("later", f, f.gpu_ranges[0]),
        ],
        lambda f: [node("n", gpu="a")],
        ex.UNASSIGNED,
        DEFAULT_POOL,
        lambda f: (f.cluster_first,),
        [(DEFAULT_POOL, ex.TAKEN), ("gpu", ex.DISABLED), ("other", ex.NO_MATCH), ("later", ex.REFUSED)],
    ),
    (
        "every matching pool full: waits",
        lambda f: [pool("gpu", f, f.gpu, key="gpu", priority=10), pool("all", f, f.cluster)],
        lambda f: [node("a", f.gpu_ranges[0]), node("b", f.gpu_ranges[1]), node("n", gpu="a")],
        ex.WAITING,
        "",
        lambda f: (),
        [("gpu", ex.FULL), (DEFAULT_POOL, ex.FULL), ("all", ex.REFUSED)],
    ),
    (
        "a Node listed earlier takes the last range",
        lambda f: [pool("gpu", f, f.gpu, key="gpu", priority=10), pool("all", f, f.cluster)],
        lambda f: [node("a", f.gpu_ranges[0]), node("first", gpu="a"), node("n", gpu="a")],
        ex.WAITING,
        "",
        lambda f: (),
        [("gpu", ex.FULL), (DEFAULT_POOL, ex.FULL), ("all", ex.REFUSED)],
    ),
    (
        "holds a range in a pool",
        lambda f: [pool("gpu", f, f.gpu, key="gpu", priority=10)],
        lambda f: [node("n", f.gpu_ranges[1], gpu="a")],
        ex.SERVED,
        "gpu",
        lambda f: (f.gpu_ranges[1],),
        [("gpu", ex.HOLDS), (DEFAULT_POOL, ex.MAY_SERVE)],
    ),
    (
        "holds a range of the flags' range although its labels pick a pool now",
        lambda f: [pool("gpu", f, f.gpu, key="gpu", priority=10)],
        lambda f: [node("n", f.cluster_first, gpu="a")],
        ex.SERVED,
        DEFAULT_POOL,
        lambda f: (f.cluster_first,),
        [("gpu", ex.MAY_SERVE), (DEFAULT_POOL, ex.HOLDS)],
    ),
]


@FAMILIES
@pytest.mark.parametrize(("case", "pools", "nodes", "state", "chosen", "cidrs", "expected"), CASES, ids=[c[0] for c in CASES])
def test_explain(
    fam: Family, case: str, pools: Any, nodes: Any, state: str, chosen: str, cidrs: Any, expected: list[tuple[str, str]]
) -> None:
    bodies = pools(fam)
    listed = nodes(fam)
    if state == ex.WAITING:  # the flags' range full
        listed = [node(f"d{i}", str(subnet)) for i, subnet in enumerate(netaddr.IPNetwork(fam.cluster).subnet(fam.mask))] + listed
    explanation = ex.explain("n", listed, ranges(fam), [], bodies)
    assert explanation.state == state, explanation.summary
    assert explanation.pool == chosen
    assert explanation.pod_cidrs == cidrs(fam)
    assert verdicts(explanation) == expected
    if state == ex.WAITING:
        assert "every pool that may serve it is full" in explanation.summary


@FAMILIES
def test_no_pool_matches_and_no_leader(fam: Family) -> None:
    """A pool for its families only, and a Node of the other family: none may serve it; nobody leads either."""
    other = V6 if fam is V4 else V4
    bodies = [pool("gpu", other, other.gpu, key="gpu")]
    leader = ex.leader_of("kube-system/nodeipam", {"spec": {"holderIdentity": ""}}, NOW)
    explanation = ex.explain("n", [node("n")], ranges(fam), [], bodies, leader=leader)
    # the default pool always matches: a cluster of the flags' family is served from it
    assert explanation.state == ex.UNASSIGNED
    assert verdicts(explanation) == [(DEFAULT_POOL, ex.TAKEN), ("gpu", ex.FAMILIES)]
    assert "no controller leads" in explanation.summary
    full = [node(f"d{i}", str(s)) for i, s in enumerate(netaddr.IPNetwork(fam.cluster).subnet(fam.mask))]
    waiting = ex.explain("n", [*full, node("n")], ranges(fam), [], [*bodies, pool("disabled", fam, fam.gpu, disabled=True)])
    assert waiting.state == ex.WAITING
    assert verdicts(waiting) == [(DEFAULT_POOL, ex.FULL), ("disabled", ex.DISABLED), ("gpu", ex.FAMILIES)]


@FAMILIES
def test_in_flight_patch_is_explained(fam: Family) -> None:
    """A patch of unknown outcome recorded in the Lease: the Node gets those ranges, and no pool is taken anew."""
    patch = InFlight("n", "uid-n", (fam.gpu_ranges[1],))
    explanation = ex.explain("n", [node("n", gpu="a")], ranges(fam), [], [pool("gpu", fam, fam.gpu, key="gpu")], [patch])
    assert explanation.state == ex.IN_FLIGHT
    assert explanation.in_flight == (fam.gpu_ranges[1],)
    assert explanation.pool == "gpu"
    assert ("gpu", ex.HOLDS) in verdicts(explanation)
    other = InFlight("n", "uid-old", (fam.gpu_ranges[1],))  # another incarnation's: it cannot land
    assert ex.explain("n", [node("n")], ranges(fam), [], [], [other]).state == ex.UNASSIGNED


@FAMILIES
def test_an_in_flight_range_of_another_node_is_not_given(fam: Family) -> None:
    patch = InFlight("a", "uid-a", (fam.cluster_first,))
    explanation = ex.explain("n", [node("a"), node("n")], ranges(fam), [], [], [patch])
    assert explanation.pod_cidrs != (fam.cluster_first,)


@FAMILIES
def test_an_in_flight_range_held_by_another_node_is_kept_apart(fam: Family) -> None:
    """The recorded patch cannot be resumed (its range is in use): the Node gets a range of its own, the explanation
    names the patch kept apart."""
    patch = InFlight("n", "uid-n", (fam.cluster_first,))
    explanation = ex.explain("n", [node("a", fam.cluster_first), node("n")], ranges(fam), [], [], [patch])
    assert explanation.state == ex.UNASSIGNED
    assert explanation.in_flight == (fam.cluster_first,)
    assert explanation.pod_cidrs and explanation.pod_cidrs != (fam.cluster_first,)
    assert "kept apart" in explanation.summary


def test_no_such_node() -> None:
    with pytest.raises(KeyError):
        ex.explain("missing", [node("n")], ranges(V4), [], [])


@pytest.mark.parametrize(
    ("body", "holder", "note"),
    [
        (None, "", "there is no Lease"),
        ({"spec": {}}, "", "has no holder"),
        ({"spec": {"holderIdentity": "me", "renewTime": "2026-12-03T11:59:55.000000Z", "leaseDurationSeconds": 15}}, "me", ""),
        (
            {"spec": {"holderIdentity": "me", "renewTime": "2026-12-03T11:00:00.000000Z", "leaseDurationSeconds": 15}},
            "me",
            "down",
        ),
    ],
)
def test_leader(body: Any, holder: str, note: str) -> None:
    leader = ex.leader_of("kube-system/nodeipam", body, NOW)
    assert leader.holder == holder
    assert (note in leader.note) if note else not leader.note


@FAMILIES
def test_judge_order_is_the_controllers_order(fam: Family) -> None:
    """The order the controller's reservation follows is `judge`'s less the pools passed over."""
    allocations = NodeAllocations(ranges(fam), [])
    specs = [
        PoolSpec.from_body(body)
        for body in (
            pool("a", fam, fam.gpu, key="gpu"),
            pool("b", fam, fam.other, priority=5),
            pool("c", fam, fam.spare, key="zone", disabled=True),
        )
    ]
    allocations.set_pools(specs)
    candidates: list[Candidate] = allocations.pool_usage.candidates()
    labels = {"gpu": "x"}
    judged = judge(candidates, labels, "n", allocations.pool_sets.versions)
    assert [j.candidate for j in judged if not j.passed] == list(allocations.pool_sets.ranked(labels, "n"))
    assert [(j.candidate.name, j.passed) for j in judged] == [("b", ""), ("a", ""), (DEFAULT_POOL, ""), ("c", "disabled")]


def test_text_names_every_pool() -> None:
    explanation = ex.explain("n", [node("n", gpu="a")], ranges(V4), [], [pool("gpu", V4, V4.gpu, key="gpu")])
    text = ex.format_text(explanation)
    assert text.splitlines()[0] == "node n: unassigned"
    assert "gpu" in text and "taken" in text and "first in order with room" in text
