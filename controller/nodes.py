"""Pure decisions about Nodes: what to occupy, allocate, release, and warn about.

Nothing here talks to the cluster. `NodeAllocations` is the single source of
truth for which ranges are taken and by whom; the reconciler feeds it what it
sees and carries out what it decides.

Invariants kept here:
- A range is marked in the sets iff a known Node holds it, a reservation for
  a patch is in flight, or it is pinned (a service CIDR).
- A Node that already has podCIDRs is only occupied, never changed.
- A range held by two Nodes (bad data) stays marked until both are gone.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Iterable, Mapping
from typing import Any

import netaddr

from controller.allocators import CIDRSet, CIDRSetError, NoCIDRsRemainingError
from controller.config import FamilyRange

#: Event reason for a podCIDR the controller cannot account for cleanly.
REASON_INVALID_POD_CIDR = "InvalidPodCIDR"
#: Event reason for a podCIDR that another Node holds too.
REASON_DUPLICATE_POD_CIDR = "DuplicatePodCIDR"


@dataclasses.dataclass(frozen=True)
class NodeInfo:
    """The few fields of a Node the allocator needs."""

    name: str
    uid: str
    pod_cidrs: tuple[str, ...] = ()
    resource_version: str = ""
    pod_cidr: str = ""  # spec.podCIDR as written; must equal pod_cidrs[0]

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> NodeInfo:
        metadata = body.get("metadata") or {}
        spec = body.get("spec") or {}
        cidrs = spec.get("podCIDRs") or ([spec["podCIDR"]] if spec.get("podCIDR") else [])
        return cls(
            name=str(metadata.get("name", "")),
            uid=str(metadata.get("uid", "")),
            pod_cidrs=tuple(str(cidr) for cidr in cidrs),
            resource_version=str(metadata.get("resourceVersion", "")),
            pod_cidr=str(spec.get("podCIDR") or ""),
        )


@dataclasses.dataclass(frozen=True)
class Problem:
    """Something wrong with a Node's podCIDRs, worth a Warning event."""

    reason: str
    message: str


@dataclasses.dataclass(frozen=True)
class Classified:
    """A Node's podCIDRs sorted into what can be occupied and what is wrong."""

    usable: tuple[netaddr.IPNetwork, ...]
    problems: tuple[Problem, ...]


def _overlaps(a: netaddr.IPNetwork, b: netaddr.IPNetwork) -> bool:
    return bool(a.version == b.version and a.first <= b.last and b.first <= a.last)


def classify_pod_cidrs(pod_cidrs: Iterable[str], ranges: Iterable[FamilyRange]) -> Classified:
    """Decide which of a Node's podCIDRs to occupy, and what to warn about.

    A podCIDR that overlaps a cluster CIDR is occupied even when its mask is
    wrong or it sticks out, so that no overlapping range is ever handed out.
    """
    by_version = {family.version: family for family in ranges}
    usable: list[netaddr.IPNetwork] = []
    problems: list[Problem] = []
    for text in pod_cidrs:
        try:
            cidr = netaddr.IPNetwork(text)
        except (netaddr.AddrFormatError, ValueError, TypeError):
            problems.append(Problem(REASON_INVALID_POD_CIDR, f"podCIDR {text!r} is not a CIDR; ignored"))
            continue
        family = by_version.get(cidr.version)
        if family is None:
            served = ", ".join(str(f.cluster_cidr) for f in by_version.values())
            problems.append(
                Problem(
                    REASON_INVALID_POD_CIDR,
                    f"podCIDR {text} is IPv{cidr.version}, but this controller serves only {served}; ignored",
                )
            )
            continue
        if not _overlaps(cidr, family.cluster_cidr):
            problems.append(
                Problem(
                    REASON_INVALID_POD_CIDR,
                    f"podCIDR {text} is outside the cluster CIDR {family.cluster_cidr}; ignored",
                )
            )
            continue
        if cidr.prefixlen != family.node_mask_size or cidr.cidr not in family.cluster_cidr:
            problems.append(
                Problem(
                    REASON_INVALID_POD_CIDR,
                    f"podCIDR {text} does not match the node subnets of {family}; the ranges it covers are kept out of the pool",
                )
            )
        usable.append(cidr)
    return Classified(tuple(usable), tuple(problems))


class Outcome(enum.Enum):
    """What the reconciler should do after `NodeAllocations.observe`."""

    NOTHING = "nothing"  # already known, stale, or being handled elsewhere
    OCCUPIED = "occupied"  # the Node's own podCIDRs are now accounted for
    ALLOCATE = "allocate"  # the Node needs a range: call `reserve`


@dataclasses.dataclass(frozen=True)
class Observation:
    outcome: Outcome
    problems: tuple[Problem, ...] = ()
    why: str = ""


@dataclasses.dataclass
class _Holding:
    uid: str
    cidrs: tuple[netaddr.IPNetwork, ...]
    sequence: int  # when it was recorded, to tell ranges older than a LIST apart
    as_written: tuple[str, ...]  # the podCIDRs as the API shows them, for a cheap "unchanged" test


@dataclasses.dataclass(frozen=True)
class Release:
    node: str
    cidrs: tuple[netaddr.IPNetwork, ...]


class NodeAllocations:
    """The sets (one CIDRSet per family, in flag order) and who holds what."""

    def __init__(self, ranges: Iterable[FamilyRange], service_cidrs: Iterable[netaddr.IPNetwork] = ()) -> None:
        self.ranges = tuple(ranges)
        self.sets = tuple(CIDRSet(family.cluster_cidr, family.node_mask_size) for family in self.ranges)
        self._holdings: dict[str, _Holding] = {}
        self._holders_by_cidr: dict[netaddr.IPNetwork, set[str]] = {}
        self._in_flight: dict[str, tuple[netaddr.IPNetwork, ...]] = {}
        self._waiting: dict[str, NodeInfo] = {}
        self._gone: set[str] = set()  # deleted while a patch for them was in flight
        self._pinned: list[netaddr.IPNetwork] = []
        self._sequence = 0
        for cidr in service_cidrs:
            cidr_set = self.set_for(cidr)
            if cidr_set is not None and _overlaps(cidr, cidr_set.cluster_cidr):
                self._pinned.append(cidr)
                cidr_set.occupy(cidr)

    # -- queries -------------------------------------------------------------

    @property
    def sequence(self) -> int:
        """A counter that grows with every recorded holding (a logical clock)."""
        return self._sequence

    def holding(self, name: str) -> tuple[netaddr.IPNetwork, ...]:
        held = self._holdings.get(name)
        return held.cidrs if held else ()

    def is_in_flight(self, name: str) -> bool:
        return name in self._in_flight

    def waiting(self) -> list[NodeInfo]:
        """Nodes that found the range exhausted, oldest first."""
        return list(self._waiting.values())

    def waiting_count(self) -> int:
        return len(self._waiting)

    def set_for(self, cidr: netaddr.IPNetwork) -> CIDRSet | None:
        """The set of the CIDR's family, if this controller serves it."""
        for cidr_set in self.sets:
            if cidr_set.version == cidr.version:
                return cidr_set
        return None

    # -- what the cluster shows ------------------------------------------------

    def observe(self, node: NodeInfo) -> Observation:
        """Account for a Node as the API shows it (an event or a LIST entry)."""
        if node.name in self._in_flight:
            return Observation(Outcome.NOTHING, why="a patch for it is in flight")
        held = self._holdings.get(node.name)
        if held is not None and held.uid != node.uid:
            # The Node was deleted and recreated under the same name while we
            # were not looking: the old holder's ranges are free again.
            self._drop_holding(node.name)
            held = None
        if not node.pod_cidrs:
            if held is not None and held.cidrs:
                return Observation(Outcome.NOTHING, why="stale event: its podCIDRs were already set")
            return Observation(Outcome.ALLOCATE)
        if held is not None and held.as_written == node.pod_cidrs:
            return Observation(Outcome.NOTHING, why="already accounted for")  # every status update lands here
        self._waiting.pop(node.name, None)
        classified = classify_pod_cidrs(node.pod_cidrs, self.ranges)
        usable = classified.usable
        if held is not None and held.cidrs == usable:
            return Observation(Outcome.NOTHING, why="already accounted for")
        if held is not None:
            self._drop_holding(node.name)
        problems = list(classified.problems)
        for cidr in usable:
            others = sorted(self._holders_by_cidr.get(cidr, set()) - {node.name})
            if others:
                problems.append(
                    Problem(
                        REASON_DUPLICATE_POD_CIDR,
                        f"podCIDR {cidr} is also held by node {', '.join(others)}; "
                        "it stays out of the pool until every holder is gone",
                    )
                )
        self._record(node, usable)
        return Observation(Outcome.OCCUPIED, tuple(problems))

    def forget(self, name: str, uid: str | None = None) -> Release | None:
        """A Node is gone (a DELETED event, or absent from a LIST): free its ranges."""
        self._waiting.pop(name, None)
        if name in self._in_flight:
            self._gone.add(name)
        held = self._holdings.get(name)
        if held is None or (uid is not None and held.uid and held.uid != uid):
            return None
        return self._drop_holding(name)

    # -- allocation ------------------------------------------------------------

    def reserve(self, node: NodeInfo) -> tuple[netaddr.IPNetwork, ...]:
        """Take one range per family, in flag order, for a patch about to be sent.

        Raises NoCIDRsRemainingError (nothing left reserved) when any family is
        exhausted; the Node is then remembered as waiting for a release.
        """
        taken: list[netaddr.IPNetwork] = []
        try:
            for cidr_set in self.sets:
                taken.append(cidr_set.allocate_next())
        except NoCIDRsRemainingError:
            for cidr in taken:
                self._release_cidr(cidr)
            self._waiting[node.name] = node
            raise
        self._waiting.pop(node.name, None)
        self._in_flight[node.name] = tuple(taken)
        return tuple(taken)

    def commit(self, node: NodeInfo, cidrs: tuple[netaddr.IPNetwork, ...]) -> bool:
        """The patch with `cidrs` succeeded: the Node holds them now.

        Returns False (and frees the ranges) when the Node was deleted while
        the patch was in flight.
        """
        if node.name in self._gone:
            self._gone.discard(node.name)
            self.abort(node)
            return False
        self._in_flight.pop(node.name, None)
        self._record(node, cidrs)
        return True

    def abort(self, node: NodeInfo) -> tuple[netaddr.IPNetwork, ...]:
        """The patch failed: give the reserved ranges back."""
        self._gone.discard(node.name)
        cidrs = self._in_flight.pop(node.name, ())
        for cidr in cidrs:
            self._release_cidr(cidr)
        return cidrs

    # -- resync ------------------------------------------------------------------

    def orphans(self, live: Mapping[str, str], listed_after: int) -> list[str]:
        """Holders absent from a LIST (name -> uid) taken after `listed_after`.

        Holdings recorded after the LIST began may belong to Nodes the LIST
        could not see yet, so they are left alone.
        """
        return [
            name
            for name, held in self._holdings.items()
            if held.sequence <= listed_after
            and name not in self._in_flight
            and (name not in live or (held.uid and live[name] != held.uid))
        ]

    # -- bookkeeping -------------------------------------------------------------

    def _record(self, node: NodeInfo, cidrs: tuple[netaddr.IPNetwork, ...]) -> None:
        self._sequence += 1
        as_written = node.pod_cidrs or tuple(str(cidr) for cidr in cidrs)
        self._holdings[node.name] = _Holding(node.uid, cidrs, self._sequence, as_written)
        for cidr in cidrs:
            cidr_set = self.set_for(cidr)
            if cidr_set is None:
                continue
            try:
                cidr_set.occupy(cidr)
            except CIDRSetError:
                continue  # classify_pod_cidrs only passes overlapping ranges
            self._holders_by_cidr.setdefault(cidr, set()).add(node.name)
            if _is_irregular(cidr, cidr_set) and cidr not in self._pinned:
                self._pinned.append(cidr)

    def _drop_holding(self, name: str) -> Release:
        held = self._holdings.pop(name)
        released = []
        for cidr in held.cidrs:
            holders = self._holders_by_cidr.get(cidr)
            if holders is not None:
                holders.discard(name)
                if holders:
                    continue  # another Node still holds exactly this range
                del self._holders_by_cidr[cidr]
            if cidr in self._pinned:
                self._pinned.remove(cidr)
            self._release_cidr(cidr)
            released.append(cidr)
        return Release(name, tuple(released))

    def _release_cidr(self, cidr: netaddr.IPNetwork) -> None:
        cidr_set = self.set_for(cidr)
        if cidr_set is None:
            return
        try:
            cidr_set.release(cidr)
        except CIDRSetError:
            return
        # Ranges that overlap without being equal (a wrong mask on a Node, a
        # service CIDR) must stay marked after a neighbour is released.
        for other in self._pinned:
            if _overlaps(other, cidr):
                cidr_set.occupy(other)
        if _is_irregular(cidr, cidr_set):
            for other in self._holders_by_cidr:
                if _overlaps(other, cidr):
                    cidr_set.occupy(other)


def _is_irregular(cidr: netaddr.IPNetwork, cidr_set: CIDRSet) -> bool:
    """A range that is not exactly one node subnet of the set."""
    return cidr.prefixlen != cidr_set.node_mask_size or cidr not in cidr_set.cluster_cidr
