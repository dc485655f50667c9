"""Which pool wins: the order pools are tried in for a Node, the pool a range belongs to, the pools refused.

Pure functions of pool specs (`pools.PoolSpec`) and free counts: the pool
sets choose with `rank`, the pool index places ranges with `owner` and
refuses pools with `overlaps`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence

import netaddr

from controller import cidrs
from controller.pools import PoolSpec


@dataclasses.dataclass(frozen=True)
class Candidate:
    """A pool as selection sees it: its spec and how many Node ranges each family has free (spec.families order)."""

    spec: PoolSpec
    free: tuple[int, ...]

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def has_room(self) -> bool:
        """Room in every family: a dual-stack pool serves a Node with both or with neither."""
        return bool(self.free) and all(count > 0 for count in self.free)


#: Why `judge` passes a pool over: it may not serve the Node at all.
PASSED_DISABLED = "disabled"
PASSED_FAMILIES = "families"
PASSED_SELECTOR = "selector"


@dataclasses.dataclass(frozen=True)
class Judged:
    """A pool as selection judged it for one Node: `passed` is "" when it may serve the Node, else why not."""

    candidate: Candidate
    specificity: int | None  # requirements of its largest matching term; None: its selector does not match
    passed: str = ""


def judge(candidates: Iterable[Candidate], labels: Mapping[str, str], node_name: str, versions: Sequence[int]) -> list[Judged]:
    """Every pool judged for a Node: those that may serve it first, in the order to try them, then the others by name.

    A pool may serve it when it is enabled, its selector matches, and it has
    exactly the IP families the cluster serves (`versions`). Order: higher
    priority, then the more specific selector, then the smaller free capacity
    (fill one pool before opening the next), then the name; the default pool
    last. Full pools are kept in the order: the caller skips them and names
    them when none has room. `rank` is this, less the pools passed over, so
    that `nodeipam explain` tells the order the controller follows.
    """
    wanted = tuple(sorted(versions))
    ranked: list[tuple[tuple[int, int, int, tuple[int, ...], str], Judged]] = []
    passed: list[Judged] = []
    for candidate in candidates:
        spec = candidate.spec
        specificity = spec.selector.specificity(labels, node_name)
        if spec.disabled or spec.versions != wanted or specificity is None:
            why = PASSED_DISABLED if spec.disabled else PASSED_FAMILIES if spec.versions != wanted else PASSED_SELECTOR
            passed.append(Judged(candidate, specificity, why))
            continue
        key = (1 if spec.is_default else 0, -spec.priority, -specificity, candidate.free, spec.name)
        ranked.append((key, Judged(candidate, specificity)))
    ranked.sort(key=lambda item: item[0])
    return [judged for _, judged in ranked] + sorted(passed, key=lambda judged: judged.candidate.name)


def rank(candidates: Iterable[Candidate], labels: Mapping[str, str], node_name: str, versions: Sequence[int]) -> list[Candidate]:
    """The pools that may serve a Node, in the order to try them (see `judge`)."""
    return [judged.candidate for judged in judge(candidates, labels, node_name, versions) if not judged.passed]


def owner(cidr: netaddr.IPNetwork, pools: Iterable[PoolSpec]) -> PoolSpec | None:
    """The pool a Node's range belongs to (Nodes hold ranges, pools own them): the one whose CIDRs contain it,
    never the one its labels pick.

    A range in two pools (which overlap, and one of them is refused) belongs
    to the earlier one: the default pool first, then by creation time, then name.
    """
    containing = [pool for pool in pools if pool.contains(cidr)]
    return min(containing, key=_seniority, default=None)


def _seniority(pool: PoolSpec) -> tuple[int, str, str]:
    return (0 if pool.is_default else 1, pool.created, pool.name)


def overlaps(pools: Iterable[PoolSpec], service_cidrs: Iterable[netaddr.IPNetwork] = ()) -> dict[str, str]:
    """Pools refused because a CIDR of theirs overlaps an earlier pool's (or a service range): name -> why.

    The earlier pool keeps serving; the later one serves no Node until fixed.
    Pools overlapping only refused pools are not refused for it. Of several
    clashes the message names the one with the earliest pool, then the
    pool's own CIDRs in spec order (IPv4 first), then the earlier pool's.
    One sort and sweep finds every overlapping pair: O(k log k + pairs) for
    k CIDRs, not every pool against every other.
    """
    services = tuple(service_cidrs)
    ordered = sorted(pools, key=_seniority)
    clashes = _clashing_pairs(ordered)
    accepted: list[bool] = []
    refused: dict[str, str] = {}
    for rank, pool in enumerate(ordered):
        earlier = [clash for clash in clashes.get(rank, ()) if clash[0] < rank and accepted[clash[0]]]
        clash = min(earlier, default=None)
        why = f"{clash[4]} overlaps {clash[5]} of pool {ordered[clash[0]].name}" if clash is not None else None
        if why is None and not pool.is_default:
            why = next(
                (
                    f"{entry.cidr} overlaps the service range {service}"
                    for family in pool.families
                    for entry in family.cidrs
                    for service in services
                    if cidrs.overlaps(entry.cidr, service)
                ),
                None,
            )
        accepted.append(why is None)
        if why is not None:
            refused[pool.name] = why
    return refused


#: A clash of one pool with another, ordered as the message picks it:
#: (other pool's rank, own family index, own CIDR index, other's CIDR index, own CIDR, other's CIDR).
_Clash = tuple[int, int, int, int, netaddr.IPNetwork, netaddr.IPNetwork]


def _clashing_pairs(ordered: Sequence[PoolSpec]) -> dict[int, list[_Clash]]:
    """Every pair of overlapping CIDRs of two different pools, listed under both: pool rank -> clashes.

    CIDRs nest or are disjoint, so, sorted by first address (the wider first),
    the CIDRs still open when one starts all contain it: a stack.
    """
    # (version, first, -last, rank, family index, CIDR index, CIDR)
    spans = sorted(
        (int(entry.cidr.version), int(entry.cidr.first), -int(entry.cidr.last), rank, family_index, index, entry.cidr)
        for rank, pool in enumerate(ordered)
        for family_index, family in enumerate(pool.families)
        for index, entry in enumerate(family.cidrs)
    )
    clashes: dict[int, list[_Clash]] = {}
    open_spans: list[tuple[int, int, int, int, int, int, netaddr.IPNetwork]] = []
    for span in spans:
        version, first, _, rank, family_index, index, cidr = span
        while open_spans and (open_spans[-1][0] != version or -open_spans[-1][2] < first):
            open_spans.pop()
        for _, _, _, other_rank, other_family, other_index, other_cidr in open_spans:
            if other_rank == rank:
                continue
            clashes.setdefault(rank, []).append((other_rank, family_index, index, other_index, cidr, other_cidr))
            clashes.setdefault(other_rank, []).append((rank, other_family, other_index, index, other_cidr, cidr))
        open_spans.append(span)
    return clashes
