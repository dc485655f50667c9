"""A stateful property test of NodeAllocations against a simple model of the API and of the reconciler.

Random Nodes are created (with preset podCIDRs of any mask, overlapping,
out of range, service-range-like, written with leading zeros), deleted
(the DELETED event delivered or missed), re-created under the same name,
shown late (old snapshots), given ranges by someone else; reservations are
patched with each outcome (applied, refused, unknown: applied or not),
settled by reads, abandoned, resumed; the resync runs; the leader changes
(a new allocator rebuilt from the API and the old one's record of open
reservations, while the old one's patches may still land late). After every step:

- what the allocator hands out never overlaps what a live holder it knows of
  holds (a Node, a reservation, a service range);
- a node subnet is marked iff some claim covers it;
- nothing leaks: once every Node is gone and every reservation settled, only
  the service ranges stay marked;
- no patch of an earlier leader that can still land carries a range that a
  Node holds from us, or that the current leader has reserved for another.
"""

from __future__ import annotations

import dataclasses
import itertools

import netaddr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from controller.allocators import CIDRSet, ClaimedSubnets, NoCIDRsRemainingError
from controller.cidrs import classify_pod_cidrs
from controller.config import FamilyRange
from controller.model import NodeInfo
from controller.nodes import NodeAllocations, Observation, Outcome
from controller.reservations import AlreadyInFlightError, Reservation, ReservationError, ReservationState
from tests.cidrsets import is_taken, subnet_at

NAMES = ["a", "b", "c", "d"]


@dataclasses.dataclass
class ApiNode:
    uid: str
    pod_cidrs: tuple[str, ...]
    known: bool  # the allocator has been shown this incarnation with its current podCIDRs
    ours: bool = False  # its podCIDRs came from one of our patches


def _overlap(a: netaddr.IPNetwork, b: netaddr.IPNetwork) -> bool:
    return bool(a.version == b.version and a.first <= b.last and b.first <= a.last)


class AllocationsMachine(RuleBasedStateMachine):
    """The model: `api` is the truth; `tasks` are reservations a reconciler task is carrying out."""

    family: FamilyRange
    presets: list[str]
    services: list[list[str]]

    def __init__(self) -> None:
        super().__init__()
        self.api: dict[str, ApiNode] = {}
        self.history: list[NodeInfo] = []  # every snapshot ever shown, for late events
        self.tasks: dict[str, Reservation] = {}
        self.uids = itertools.count()
        self.service_cidrs: list[netaddr.IPNetwork] = []
        self.allocations = NodeAllocations([self.family])
        self.deposed: list[Reservation] = []  # patches earlier leaders had open at their hand-over: they may land

    @initialize(services=st.integers(min_value=0, max_value=2))
    def start(self, services: int) -> None:
        self.service_cidrs = [netaddr.IPNetwork(text) for text in self.services[services]]
        self.allocations = NodeAllocations([self.family], self.service_cidrs)

    # -- helpers -------------------------------------------------------------------------------

    def current(self, name: str) -> NodeInfo | None:
        node = self.api.get(name)
        return NodeInfo(name, node.uid, node.pod_cidrs) if node is not None else None

    def shown(self, node: NodeInfo) -> None:
        """The allocator saw `node`; if that is the API's current state, it now knows it."""
        live = self.api.get(node.name)
        if live is not None and live.uid == node.uid and live.pod_cidrs == node.pod_cidrs:
            live.known = True

    def act(self, node: NodeInfo, observation: Observation, may_reread: bool = True) -> None:
        """What the reconciler does with an observation (reservations are left to the `reserve` rule)."""
        if observation.outcome is Outcome.REREAD and may_reread:
            mark = self.allocations.sequence
            current = self.current(node.name)
            settled = self.allocations.settle(node.name, current, read_after=mark, seen_uids=(node.uid,))
            if current is not None:
                self.shown(current)
                self.act(current, settled, may_reread=False)
        elif observation.outcome is Outcome.RESUME:
            self.tasks[node.name] = self.allocations.reservations.resume(node)

    def deliver(self, node: NodeInfo) -> None:
        observation = self.allocations.observe(node)
        self.shown(node)
        self.act(node, observation)

    def live_claims(self, exclude_uid: str) -> list[tuple[str, netaddr.IPNetwork]]:
        """Ranges of live holders the allocator knows of: known Nodes, reservations, service ranges."""
        claims = [("service", cidr) for cidr in self.service_cidrs]
        for name, node in self.api.items():
            if node.known and node.uid != exclude_uid:
                usable = classify_pod_cidrs(node.pod_cidrs, [self.family]).usable
                claims += [(f"node {name}/{node.uid}", cidr) for cidr in usable]
        for name in NAMES:
            reservation = self.allocations.reservations.get(name)
            if reservation is not None and reservation.uid != exclude_uid:
                claims += [(f"reservation {name}/{reservation.uid}", cidr) for cidr in reservation.cidrs]
        return claims

    # -- the cluster -----------------------------------------------------------------------------

    @rule(name=st.sampled_from(NAMES), preset=st.data(), deliver=st.booleans())
    def create(self, name: str, preset: st.DataObject, deliver: bool) -> None:
        if name in self.api:
            return
        # Half of them without podCIDRs: those are the ones that get ranges, and patches that may land late.
        cidrs = preset.draw(st.one_of(st.just(()), st.sampled_from([(text,) for text in self.presets])))
        node = NodeInfo(name, f"uid-{next(self.uids)}", cidrs)
        self.api[name] = ApiNode(node.uid, cidrs, known=False)
        self.history.append(node)
        if deliver:
            self.deliver(node)

    @rule(name=st.sampled_from(NAMES), deliver=st.booleans())
    def delete(self, name: str, deliver: bool) -> None:
        node = self.api.pop(name, None)
        if node is not None and deliver:
            self.allocations.forget(name, node.uid)

    @rule(index=st.integers(min_value=0))
    def late_event(self, index: int) -> None:
        """An old snapshot shows up (a resync LIST taken earlier, a replayed watch, a worker of an old UID)."""
        if self.history:
            self.deliver(self.history[index % len(self.history)])

    @rule(name=st.sampled_from(NAMES), preset=st.data(), deliver=st.booleans())
    def set_elsewhere(self, name: str, preset: st.DataObject, deliver: bool) -> None:
        """Someone else sets podCIDRs on a Node that has none."""
        node = self.api.get(name)
        if node is None or node.pod_cidrs:
            return
        node.pod_cidrs = (preset.draw(st.sampled_from(self.presets)),)
        node.known = False
        snapshot = self.current(name)
        assert snapshot is not None
        self.history.append(snapshot)
        if deliver:
            self.deliver(snapshot)

    # -- allocation -------------------------------------------------------------------------------

    @rule(name=st.sampled_from(NAMES))
    def reserve(self, name: str) -> None:
        current = self.current(name)
        if current is None or name in self.tasks:
            return
        observation = self.allocations.observe(current)
        self.shown(current)
        if observation.outcome is not Outcome.ALLOCATE:
            self.act(current, observation)
            return
        try:
            reservation = self.allocations.reserve(current)
        except (NoCIDRsRemainingError, AlreadyInFlightError, ReservationError):
            return
        for holder, cidr in self.live_claims(exclude_uid=current.uid):
            for ours in reservation.cidrs:
                assert not _overlap(ours, cidr), f"handed {ours} to {name}/{current.uid}, but {holder} holds {cidr}"
        self.tasks[name] = reservation

    def apply(self, reservation: Reservation) -> int | None:
        """The API server applies the patch: None when applied, else the status of the refusal."""
        node = self.api.get(reservation.name)
        if node is None:
            return 404
        if node.uid != reservation.uid:
            return 409
        values = tuple(str(cidr) for cidr in reservation.cidrs)
        if node.pod_cidrs and node.pod_cidrs != values:
            return 422
        node.pod_cidrs, node.ours = values, True
        node.known = True  # the allocator reserved exactly these
        self.history.append(NodeInfo(reservation.name, reservation.uid, values))
        return None

    @rule(name=st.sampled_from(NAMES), outcome=st.sampled_from(["answered", "refused", "lost-after", "lost-before"]))
    def patch(self, name: str, outcome: str) -> None:
        reservation = self.tasks.get(name)
        if reservation is None or reservation.state not in (ReservationState.RESERVED, ReservationState.UNKNOWN):
            return
        self.allocations.reservations.patching(reservation)
        if outcome == "refused" and reservation.maybe_applied:
            self.allocations.reservations.unknown(reservation)  # an earlier attempt may have applied: a read settles it
            return
        if outcome == "refused":
            self.allocations.reservations.abort(reservation)
            del self.tasks[name]
            return
        if outcome == "lost-before":
            self.allocations.reservations.unknown(reservation)
            return
        refusal = self.apply(reservation)
        if outcome == "lost-after":
            self.allocations.reservations.unknown(reservation)
            return
        if refusal is None:
            self.allocations.reservations.commit(reservation)
        elif reservation.maybe_applied:
            self.allocations.reservations.unknown(reservation)
            return
        else:
            self.allocations.reservations.abort(reservation)
            mark = self.allocations.sequence
            current = self.current(name)
            settled = self.allocations.settle(name, current, read_after=mark, seen_uids=(reservation.uid,))
            if current is not None:
                self.shown(current)
                self.act(current, settled, may_reread=False)
        del self.tasks[name]

    @rule(name=st.sampled_from(NAMES))
    def read_after_unknown(self, name: str) -> None:
        reservation = self.tasks.get(name)
        if reservation is None or reservation.state is not ReservationState.UNKNOWN:
            return
        mark = self.allocations.sequence
        current = self.current(name)
        observation = self.allocations.resolve(reservation, current, read_after=mark)
        if current is not None:
            self.shown(current)
        if not reservation.is_open:
            del self.tasks[name]
            if current is not None and observation.outcome is Outcome.RESUME:
                self.act(current, observation)

    @rule(name=st.sampled_from(NAMES))
    def task_stops(self, name: str) -> None:
        """The task ends without settling (attempts exhausted, a crash, cancelled): `abandon` in a finally."""
        reservation = self.tasks.pop(name, None)
        if reservation is not None:
            self.allocations.reservations.abandon(reservation)

    # -- a new leader ---------------------------------------------------------------------------

    @rule()
    def hand_over(self) -> None:
        """The leader changes: its open reservations were recorded in the Lease; its patches may still land."""
        record = self.allocations.in_flight()
        for name, uid, cidrs in record:
            reservation = self.allocations.reservations.get(name)
            if reservation is None or reservation.uid != uid or reservation.state is not ReservationState.RESERVED:
                self.deposed.append(Reservation(name, uid, cidrs, 0))  # sent, or kept apart: it may land
        self.tasks.clear()
        self.allocations = NodeAllocations([self.family], self.service_cidrs)
        waiting = {}
        for name in list(self.api):
            current = self.current(name)
            assert current is not None
            self.allocations.observe(current)
            self.shown(current)
            if not current.pod_cidrs:
                waiting[name] = current
        for name, uid, cidrs in record:
            node = waiting.get(name)
            if node is not None and node.uid == uid:
                self.allocations.adopt(node, [str(cidr) for cidr in cidrs])

    @rule(name=st.sampled_from(NAMES))
    def hand_over_mid_patch(self, name: str) -> None:
        """A Node registers (unless it exists), the leader sends its patch, then loses the lease before any answer."""
        if name not in self.api:
            node = NodeInfo(name, f"uid-{next(self.uids)}")
            self.api[name] = ApiNode(node.uid, (), known=False)
            self.history.append(node)
            self.deliver(node)
        if name not in self.tasks:
            self.reserve(name)
        reservation = self.tasks.get(name)
        if reservation is not None and reservation.state in (ReservationState.RESERVED, ReservationState.UNKNOWN):
            self.allocations.reservations.patching(reservation)
        self.hand_over()

    @rule(index=st.integers(min_value=0), deliver=st.booleans())
    def late_patch_lands(self, index: int, deliver: bool) -> None:
        """A patch an earlier leader sent reaches the API server now."""
        if not self.deposed:
            return
        reservation = self.deposed.pop(index % len(self.deposed))
        before = self.api.get(reservation.name)
        was = (before.pod_cidrs, before.known) if before is not None else None
        if self.apply(reservation) is not None or before is None or was is None:
            return
        # `apply` takes the patch for the current leader's own; this one is not: known only if nothing changed.
        before.known = was[1] and was[0] == before.pod_cidrs
        snapshot = self.current(reservation.name)
        assert snapshot is not None
        if deliver:
            self.deliver(snapshot)

    @invariant()
    def no_late_patch_can_duplicate(self) -> None:
        for late in self.deposed:
            node = self.api.get(late.name)
            if node is None or node.uid != late.uid or node.pod_cidrs:
                continue  # it can no longer land
            for name, other in self.api.items():
                if name == late.name or not other.ours:
                    continue
                for cidr in classify_pod_cidrs(other.pod_cidrs, [self.family]).usable:
                    assert not any(_overlap(cidr, ours) for ours in late.cidrs), (
                        f"an earlier leader's patch of {late.name} with {late.cidrs} may still land; {name} holds {cidr}"
                    )
            for name in NAMES:
                reservation = self.allocations.reservations.get(name)
                if name == late.name or reservation is None:
                    continue
                assert not any(_overlap(a, b) for a in reservation.cidrs for b in late.cidrs), (
                    f"an earlier leader's patch of {late.name} with {late.cidrs} may still land; {name} has {reservation.cidrs}"
                )

    @rule()
    def resync(self) -> None:
        mark = self.allocations.sequence
        live = {name: node.uid for name, node in self.api.items()}
        for name, uid in self.allocations.orphans(live, listed_after=mark):
            self.allocations.forget(name, uid)
        for name in list(self.api):
            current = self.current(name)
            assert current is not None
            settled = self.allocations.settle(name, current, read_after=mark)
            self.shown(current)
            if settled.outcome is Outcome.RESUME and name not in self.tasks:
                self.act(current, settled)

    @rule()
    def drain(self) -> None:
        """Every Node goes (DELETED delivered), every task learns its Node is gone, the resync runs: nothing may stay."""
        for name, node in list(self.api.items()):
            del self.api[name]
            self.allocations.forget(name, node.uid)
        self.deposed.clear()  # their Nodes are gone: none can land
        for reservation in list(self.tasks.values()):
            if reservation.state is ReservationState.UNKNOWN:
                self.allocations.resolve(reservation, None, read_after=self.allocations.sequence)
            elif reservation.is_open:
                self.allocations.reservations.abort(reservation)  # 404
        self.tasks.clear()
        self.resync()
        for index in range(self.allocations.sets[0].max_cidrs):
            subnet = subnet_at(self.allocations.sets[0], index)
            by_service = any(_overlap(subnet, cidr) for cidr in self.service_cidrs)
            assert is_taken(self.allocations.sets[0], subnet) == by_service, f"{subnet} leaked"

    # -- invariants ------------------------------------------------------------------------------

    @invariant()
    def marked_iff_claimed(self) -> None:
        claims = list(self.service_cidrs)
        for name in NAMES:
            claims += self.allocations.held.ranges(name)
            claims += self.allocations.kept_apart(name)
            reservation = self.allocations.reservations.get(name)
            if reservation is not None:
                claims += reservation.cidrs
        cidr_set = self.allocations.sets[0]
        for index in range(cidr_set.max_cidrs):
            subnet = subnet_at(cidr_set, index)
            claimed = any(_overlap(subnet, cidr) for cidr in claims)
            assert is_taken(cidr_set, subnet) == claimed, f"{subnet}: marked={not claimed}, claimed by a live claim={claimed}"

    @invariant()
    def live_holders_are_marked(self) -> None:
        """Every range a live holder the allocator knows of holds stays out of the pool."""
        cidr_set = self.allocations.sets[0]
        for holder, cidr in self.live_claims(exclude_uid=""):
            if _overlap(cidr, cidr_set.cluster_cidr):
                assert is_taken(cidr_set, cidr), f"{holder} holds {cidr}, but it is not marked"

    @invariant()
    def tasks_own_open_reservations(self) -> None:
        for name, reservation in self.tasks.items():
            assert self.allocations.reservations.get(name) is reservation and reservation.owned


class IPv4Allocations(AllocationsMachine):
    family = FamilyRange(netaddr.IPNetwork("10.0.0.0/26"), 28)  # four node subnets: collisions come often
    presets = [
        "10.0.0.0/28",
        "10.0.0.16/28",
        "10.0.0.016/28",  # leading zeros: 10.0.0.16/28 as kube-controller-manager reads it
        "10.0.0.32/29",
        "10.0.0.40/29",  # two parts of one node subnet
        "10.0.0.48/30",
        "10.0.0.32/27",  # two node subnets
        "10.0.0.0/26",  # the whole cluster CIDR
        "10.0.0.0/24",  # sticks out
        "192.168.0.0/28",  # outside
        "fd00::/64",  # another family
    ]
    services = [[], ["10.0.0.0/27"], ["10.0.0.48/28"]]


class IPv6Allocations(AllocationsMachine):
    family = FamilyRange(netaddr.IPNetwork("fd00::/62"), 64)  # four node subnets
    presets = [
        "fd00::/64",
        "fd00:0:0:1::/64",
        "fd00:0:0:0001::/64",
        "fd00:0:0:2::/65",
        "fd00:0:0:2:8000::/65",
        "fd00:0:0:3::/66",
        "fd00:0:0:2::/63",
        "fd00::/62",
        "fd00::/60",
        "fd01::/64",
        "10.0.0.0/24",
    ]
    services = [[], ["fd00::/63"], ["fd00:0:0:3::/64"]]


STATEFUL = settings(max_examples=400, stateful_step_count=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

TestIPv4Allocations = IPv4Allocations.TestCase
TestIPv4Allocations.settings = STATEFUL
TestIPv6Allocations = IPv6Allocations.TestCase
TestIPv6Allocations.settings = STATEFUL


# -- the claim counter alone, against per-slot counts ----------------------------------------------------------

CLAIMABLE = [str(cidr) for prefix in range(24, 31) for cidr in netaddr.IPNetwork("10.0.0.0/25").subnet(prefix)] + ["10.0.0.0/23"]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.sampled_from(CLAIMABLE)), max_size=60))
def test_claimed_subnets_marks_exactly_the_subnets_with_a_claim(steps: list[tuple[bool, str]]) -> None:
    cidr_set = CIDRSet("10.0.0.0/25", 28)
    claims = ClaimedSubnets(cidr_set)
    counts = [0] * cidr_set.max_cidrs
    made: list[str] = []

    def step(add: bool, text: str) -> None:
        lo, hi = cidr_set.slot_range(text)
        if add:
            claims.claim(text)
            made.append(text)
        else:
            freed = claims.unclaim(text)
            assert freed == sum(1 for slot in range(lo, hi + 1) if counts[slot] == 1)
        for slot in range(lo, hi + 1):
            counts[slot] += 1 if add else -1
        for slot, count in enumerate(counts):
            assert is_taken(cidr_set, subnet_at(cidr_set, slot)) == (count > 0), f"slot {slot}: {count} claims"

    for add, text in steps:
        if not add and not made:
            continue
        step(add, made.pop(hash(text) % len(made)) if not add else text)
    # Every claim goes: each unclaim frees exactly the slots whose count drops to 0, which checks every count.
    while made:
        step(False, made.pop())
    assert cidr_set.allocated == 0
