"""Which pool wins: the order pools are tried in for a Node, the pool a range belongs to, the pools refused.

Pure functions of pool specs (`pools.PoolSpec`) and free counts: the pool
sets choose in `PoolOrder`'s order, `nodeipam explain` shows `judge`'s (the
same), the pool index places ranges with `owner` and refuses pools with
`overlaps`.
"""

from __future__ import annotations

import bisect
import dataclasses
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

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

    @property
    def full(self) -> str:
        """The families without room, as messages name them ("IPv4 and IPv6"; "" when every one has room)."""
        return " and ".join(
            f"IPv{family.version}" for family, free in zip(self.spec.families, self.free, strict=True) if free <= 0
        )


#: A pool's place within its tier (`fill_order`).
_FillKey = tuple[bool, tuple[int, ...], str]

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
    priority, then the more specific selector, then pools with room before
    full ones, then the smaller free capacity (fill one pool before opening
    the next), then the name; the default pool last. Full pools stay in the
    order: the caller skips them and names them when none has room.
    `PoolOrder` is this, less the pools passed over, so that `nodeipam
    explain` tells the order the controller follows.
    """
    wanted = tuple(sorted(versions))
    ranked: list[tuple[tuple[tuple[int, int, int], _FillKey], Judged]] = []
    passed: list[Judged] = []
    for candidate in candidates:
        spec = candidate.spec
        specificity = spec.selector.specificity(labels, node_name)
        why = _cannot_serve(spec, wanted)
        if why or specificity is None:
            passed.append(Judged(candidate, specificity, why or PASSED_SELECTOR))
            continue
        ranked.append(((_tier(spec, specificity), fill_order(candidate)), Judged(candidate, specificity)))
    ranked.sort(key=lambda item: item[0])
    return [judged for _, judged in ranked] + sorted(passed, key=lambda judged: judged.candidate.name)


def _cannot_serve(spec: PoolSpec, wanted: tuple[int, ...]) -> str:
    """Why the pool may serve no Node at all, whatever its selector says, or "" if it may serve some."""
    if spec.disabled:
        return PASSED_DISABLED
    return PASSED_FAMILIES if spec.versions != wanted else ""


def _tier(spec: PoolSpec, specificity: int) -> tuple[int, int, int]:
    """The part of a pool's rank that free counts do not change: the default pool last, then priority, specificity."""
    return (1 if spec.is_default else 0, -spec.priority, -specificity)


def fill_order(candidate: Candidate) -> _FillKey:
    """Within a tier: pools with room first, the fuller first (fill one before opening the next), then by name.

    Full pools go last in their tier, so that, as pools fill up one after the other, finding the one to take
    from does not step over every full one first.
    """
    return (not candidate.has_room, candidate.free, candidate.name)


#: How many distinct selector answers `PoolOrder` keeps before it starts again: a selector on the Node's name,
#: or on a label whose value each Node has its own of, makes every Node distinct.
ORDERS_KEPT = 4096

_OrderKey = tuple[tuple[str | None, ...], str | None]


class PoolOrder:
    """`judge`'s order for the pools that may serve a Node, kept up to date instead of worked out per Node.

    A pool's rank for a Node is a tier fixed by the selectors' answer (default
    last, priority, specificity) and, within a tier, its free counts, which
    change with every allocation (`fill_order`). Tiers depend only on the
    values of the labels some selector reads (and the name, if one reads
    it): they are worked out once per distinct such values. Each tier keeps
    its pools sorted, and re-sorts only the pools whose free counts changed
    (`free_changed`): choosing a pool for a Node costs what changed since the
    last Node, not matching and sorting every pool. Made anew when the pools
    change; `candidate` gives a pool's current free counts.
    """

    def __init__(self, specs: Iterable[PoolSpec], versions: Sequence[int], candidate: Callable[[str], Candidate | None]) -> None:
        wanted = tuple(sorted(versions))
        self._specs = tuple(spec for spec in specs if not _cannot_serve(spec, wanted))
        self._label_keys = tuple(sorted({key for spec in self._specs for key in spec.selector.label_keys}))
        self._reads_name = any(spec.selector.reads_name for spec in self._specs)
        self._candidate = candidate
        self._tiers: dict[_OrderKey, tuple[_FillQueue, ...]] = {}
        self._queues: dict[tuple[str, ...], _FillQueue] = {}  # one per distinct tier, whichever label sets share it
        self._queues_of: dict[str, list[_FillQueue]] = {}

    def ranked(self, labels: Mapping[str, str], node_name: str) -> Iterator[Candidate]:
        """The pools that may serve the Node, in the order to try them (full ones too, where `judge` puts them)."""
        for queue in self._tiers_of(labels, node_name):
            yield from queue.ordered()

    def free_changed(self, pool: str) -> None:
        """The pool's free counts changed: it is placed again in its tiers when one is next read."""
        for queue in self._queues_of.get(pool, ()):
            queue.stale.add(pool)

    def _tiers_of(self, labels: Mapping[str, str], node_name: str) -> tuple[_FillQueue, ...]:
        key = (tuple(labels.get(label) for label in self._label_keys), node_name if self._reads_name else None)
        tiers = self._tiers.get(key)
        if tiers is None:
            if len(self._tiers) >= ORDERS_KEPT:
                self._tiers.clear()
                self._queues.clear()
                self._queues_of.clear()
            tiers = self._tiers[key] = tuple(self._queue(names) for names in self._tier_names(labels, node_name))
        return tiers

    def _tier_names(self, labels: Mapping[str, str], node_name: str) -> list[tuple[str, ...]]:
        tiers: dict[tuple[int, int, int], list[str]] = {}
        for spec in self._specs:
            specificity = spec.selector.specificity(labels, node_name)
            if specificity is not None:
                tiers.setdefault(_tier(spec, specificity), []).append(spec.name)
        return [tuple(sorted(tiers[tier])) for tier in sorted(tiers)]

    def _queue(self, names: tuple[str, ...]) -> _FillQueue:
        queue = self._queues.get(names)
        if queue is None:
            queue = self._queues[names] = _FillQueue(names, self._candidate)
            for name in names:
                self._queues_of.setdefault(name, []).append(queue)
        return queue


class _FillQueue:
    """One tier's pools in `fill_order`, sorted once and then kept sorted as their free counts change."""

    def __init__(self, names: Iterable[str], candidate: Callable[[str], Candidate | None]) -> None:
        self._candidate = candidate
        self._keys: list[_FillKey] = []
        self._key_of: dict[str, _FillKey] = {}
        self.stale: set[str] = set(names)  # placed again when next read

    def ordered(self) -> Iterator[Candidate]:
        for name in self.stale:
            old = self._key_of.pop(name, None)
            if old is not None:
                del self._keys[bisect.bisect_left(self._keys, old)]
            candidate = self._candidate(name)
            if candidate is not None:
                key = self._key_of[name] = fill_order(candidate)
                bisect.insort(self._keys, key)
        self.stale.clear()
        for _, _, name in self._keys:
            candidate = self._candidate(name)
            if candidate is not None:
                yield candidate


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
