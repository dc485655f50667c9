"""Patches a deposed leader may still have in flight: resumed as reservations, or their ranges kept apart.

A new leader reads the last one's in-flight record and hands each entry
whose Node is listed without a range to `InheritedPatches.adopt`. Such a
patch names the Node's UID and sets ranges only while the Node has none: once
the Node holds ranges, or is deleted, it can never land, and what was kept
for it is released. Pure bookkeeping: nothing here talks to the cluster.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable, Iterable, Mapping

import netaddr

from controller.cidrs import classify_pod_cidrs, parse_cidr_sloppy
from controller.model import NodeInfo
from controller.poolsets import PoolSets
from controller.reservations import Reservations


class Adopted(enum.Enum):
    """What `InheritedPatches.adopt` did with a patch the last leader may still have in flight."""

    RESUMED = "resumed"  # a reservation of the same ranges: the Node is patched with them again
    KEPT_APART = "kept apart"  # claimed until the Node holds a range or is gone; the Node gets ranges of its own
    DROPPED = "dropped"  # nothing it could set is known (not a CIDR)


@dataclasses.dataclass(frozen=True)
class RangesApart:
    """Ranges a deposed leader's patch may still set on one Node incarnation."""

    uid: str
    cidrs: tuple[netaddr.IPNetwork, ...]
    since: int  # the logical clock when they were kept apart


class InheritedPatches:
    """The ranges kept apart for a deposed leader's patches, and the adoption that keeps or resumes them.

    `clock` is the ledger's logical clock: each adoption that keeps ranges
    advances it, so that a read issued earlier does not drop what it kept.
    """

    def __init__(self, pool_sets: PoolSets, reservations: Reservations, clock: Callable[[], int]) -> None:
        self._pool_sets = pool_sets
        self._reservations = reservations
        self._clock = clock
        self._apart: dict[str, RangesApart] = {}

    def get(self, name: str) -> RangesApart | None:
        """The ranges kept apart for a Node name, if any."""
        return self._apart.get(name)

    def ranges_apart(self, name: str) -> tuple[netaddr.IPNetwork, ...]:
        """The ranges kept apart for a Node name (none if nothing is)."""
        apart = self._apart.get(name)
        return apart.cidrs if apart else ()

    def items(self) -> list[tuple[str, RangesApart]]:
        return list(self._apart.items())

    def orphans(self, live: Mapping[str, str], listed_after: int) -> list[tuple[str, str]]:
        """(name, UID) of ranges kept apart up to `listed_after` for an incarnation a LIST (name -> uid) does not show."""
        return [
            (name, apart.uid)
            for name, apart in self._apart.items()
            if apart.since <= listed_after and live.get(name) != apart.uid
        ]

    def adopt(self, node: NodeInfo, pod_cidrs: Iterable[str], deleted: bool) -> tuple[Adopted, str]:
        """Keep the ranges of a patch the last leader may still have in flight for `node`, listed without a range.

        The patch names the Node's UID, so it can land only on this
        incarnation, and only while it has no range. When its ranges are free
        node subnets of a served range (the usual case), an UNKNOWN reservation
        of them is made, left for the next handling of the Node, which patches
        the same ranges again: whichever patch lands first, the other changes
        nothing. Otherwise (in use by a Node the last leader had not seen, say,
        or the ranges changed meanwhile) they are claimed apart until the Node
        holds a range or is gone, and the Node gets ranges of its own: once
        those are set, the old patch can never land. `deleted`: the incarnation
        is known to be deleted. Returns what was done and, unless RESUMED, why.
        """
        texts = tuple(pod_cidrs)
        parsed = []
        for text in texts:
            try:
                parsed.append(parse_cidr_sloppy(text)[0])
            except (netaddr.AddrFormatError, ValueError, TypeError):
                return Adopted.DROPPED, f"{text!r} is not a CIDR"
        if node.pod_cidrs or deleted or not parsed:
            return Adopted.DROPPED, "it holds podCIDRs already" if node.pod_cidrs else "it is deleted or the patch sets nothing"
        cidrs = tuple(dict.fromkeys(parsed))
        classified = classify_pod_cidrs(texts, self._pool_sets.served)
        why = "; ".join(problem.message for problem in classified.problems)
        if not why and node.name in self._reservations:
            why = "it has a reservation already"
        for cidr in cidrs if not why else ():
            if self._pool_sets.in_use(cidr):
                why = f"{cidr} is in use"
        for cidr in cidrs:
            self._pool_sets.claim(cidr)
        if why:
            self._apart[node.name] = RangesApart(node.uid, cidrs, self._clock())
            return Adopted.KEPT_APART, why
        self._reservations.open_unsettled(node, cidrs, self._clock())
        return Adopted.RESUMED, ""

    def release(self, name: str) -> list[netaddr.IPNetwork]:
        """The ranges kept apart for `name` can no longer be set (its Node holds a range, or is gone): unclaim
        them; returns the ranges freed."""
        apart = self._apart.pop(name, None)
        if apart is None:
            return []
        return [cidr for cidr in apart.cidrs if self._pool_sets.unclaim(cidr)]
