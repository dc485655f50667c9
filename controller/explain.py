"""`nodeipam explain NODE`: why a Node got its pool and range, or why it waits.

Pure: a function from the flags' ranges, the NodeCIDRPools, the Nodes, the
Lease's record of patches in flight and its holder to an `Explanation`. The
choice it explains is the controller's own: the ledger (`nodes.NodeAllocations`)
is filled as the start-up rebuild fills it (every Node holding a range, then
the last leader's patches in flight), ranges are reserved in LIST order for
the Nodes without one listed before this Node (as `nodeipam plan` predicts),
and the pools are judged by `pools.judge`, whose order `reserve` follows.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
from collections.abc import Mapping, Sequence
from typing import Any

import netaddr

from controller.allocators import NoCIDRsRemainingError
from controller.cidrs import parse_cidr_sloppy
from controller.config import FamilyRange
from controller.inflight import InFlight
from controller.inherited import Adopted
from controller.model import NodeInfo, parse_api_time
from controller.nodes import NodeAllocations
from controller.poolrank import PASSED_DISABLED, PASSED_FAMILIES, Candidate, Judged, judge
from controller.pools import DEFAULT_POOL, PoolSpec, PoolSpecError
from controller.reservations import ReservationError

# What a Node's state is.
SERVED = "served"  # it holds podCIDRs
IN_FLIGHT = "in-flight"  # a patch of unknown outcome is recorded for it in the Lease
WAITING = "waiting"  # no pool that may serve it has room
UNASSIGNED = "unassigned"  # a pool has room: a leader gives it a range

# What became of a pool.
HOLDS = "holds"  # the Node's range lies in it
TAKEN = "taken"  # the first in order with room: the range comes from it
FULL = "full"
DRAINING = "draining"  # no room because its CIDRs of a family are all draining
NOT_TRIED = "not tried"  # an earlier pool in the order serves the Node
NO_MATCH = "no match"
DISABLED = "disabled"
FAMILIES = "families"
REFUSED = "refused"
INVALID = "invalid"
MAY_SERVE = "may serve"  # in the order, for a Node holding a range elsewhere


@dataclasses.dataclass(frozen=True)
class PoolVerdict:
    """One pool as selection saw it for the Node: what became of it, and why."""

    pool: str
    verdict: str
    reason: str
    priority: int = 0
    selector: str = ""
    specificity: int | None = None
    free: tuple[int, ...] = ()  # Node ranges free per family (IPv4 first); a draining CIDR has none


@dataclasses.dataclass(frozen=True)
class Leader:
    """The controller's Lease as read: its holder ("" none), and a sentence about it."""

    lease: str  # "namespace/name"
    holder: str
    note: str


@dataclasses.dataclass(frozen=True)
class Explanation:
    node: str
    uid: str
    state: str
    summary: str
    pod_cidrs: tuple[str, ...]  # what it holds, or what it would get
    pool: str  # the pool the ranges lie in or come from ("" none)
    pools: tuple[PoolVerdict, ...]
    in_flight: tuple[str, ...]  # ranges of a patch of unknown outcome recorded in the Lease for this Node
    leader: Leader | None

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def explain(
    name: str,
    nodes: Sequence[NodeInfo],
    ranges: Sequence[FamilyRange],
    service_cidrs: Sequence[netaddr.IPNetwork],
    pool_bodies: Sequence[Mapping[str, Any]],
    in_flight: Sequence[InFlight] = (),
    leader: Leader | None = None,
) -> Explanation:
    """Why Node `name` (one of `nodes`, in LIST order) holds what it holds, or waits; KeyError when it is not listed."""
    node = next((node for node in nodes if node.name == name), None)
    if node is None:
        raise KeyError(name)
    specs, invalid, deleting = _pool_specs(pool_bodies)
    allocations = NodeAllocations(ranges, service_cidrs, specs)
    waiting = []
    for other in nodes:
        if other.pod_cidrs:
            allocations.observe(other)
        else:
            waiting.append(other)
    by_name = {other.name: other for other in waiting}
    adopted: dict[str, tuple[Adopted, str, tuple[str, ...]]] = {}
    for patch in in_flight:
        target = by_name.get(patch.name)
        if target is not None and target.uid == patch.uid:
            outcome, why = allocations.adopt(target, patch.cidrs)
            adopted[target.name] = (outcome, why, patch.cidrs)
    for other in waiting:  # the Nodes a leader would serve before this one
        if other.name == name:
            break
        if other.name not in adopted or adopted[other.name][0] is not Adopted.RESUMED:
            with contextlib.suppress(NoCIDRsRemainingError, ReservationError):  # it waits; the next Node may fit elsewhere
                allocations.reserve(other)
    judged = judge(allocations.pool_usage.candidates(), node.label_map, node.name, allocations.pool_sets.versions)
    refused = allocations.pool_sets.refused
    extra = [
        PoolVerdict(spec.name, REFUSED, f"serves no Node: {refused[spec.name]}", spec.priority, str(spec.selector))
        for spec in allocations.pool_sets.pools()
        if spec.name in refused
    ] + [PoolVerdict(pool, INVALID, f"is not valid, so serves no Node: {why}") for pool, why in invalid]

    def answer(
        state: str, summary: str, cidrs: Sequence[str], pool: str, verdicts: Sequence[PoolVerdict], kept: Sequence[str]
    ) -> Explanation:
        return Explanation(node.name, node.uid, state, summary, tuple(cidrs), pool, (*verdicts, *extra), tuple(kept), leader)

    if node.pod_cidrs:
        pool = _pool_of(allocations, node.pod_cidrs)
        first = next((item.candidate.name for item in judged if not item.passed), "")
        verdicts = [_verdict(item, HOLDS if item.candidate.name == pool else MAY_SERVE, deleting) for item in judged]
        held = ",".join(node.pod_cidrs)
        summary = f"holds {held}{_from(pool)}" if pool else f"holds {held}, which lies in no pool (nodeipam check tells more)"
        if first and first != pool:
            summary += f"; a new Node like it would be served from {_pool_name(first)} now: a Node keeps its range"
        return answer(SERVED, summary, node.pod_cidrs, pool, verdicts, ())
    entry = adopted.get(node.name)
    if entry is not None and entry[0] is Adopted.RESUMED:
        cidrs = entry[2]
        pool = _pool_of(allocations, cidrs)
        verdicts = [_verdict(item, HOLDS if item.candidate.name == pool else MAY_SERVE, deleting) for item in judged]
        summary = (
            f"a patch with {','.join(cidrs)} of unknown outcome is recorded in the Lease: a leader patches the Node"
            f" with the same ranges{_from(pool)} and gives it no others{_lead(leader, waiting=False)}"
        )
        return answer(IN_FLIGHT, summary, cidrs, pool, verdicts, cidrs)
    verdicts, taken = _walk(judged, deleting)
    kept: tuple[str, ...] = ()
    note = ""
    if entry is not None:  # kept apart: the Node gets ranges of its own
        kept = entry[2]
        note = f"; the Lease records a patch with {','.join(kept)} of unknown outcome, kept apart ({entry[1]})"
    if taken is None:
        tried = [verdict for verdict in verdicts if verdict.verdict in (FULL, DRAINING)]
        if tried:
            why = "every pool that may serve it is full: " + "; ".join(f"{v.pool} {v.reason}" for v in tried)
        else:
            why = "no pool may serve it: " + ("; ".join(f"{v.pool} {v.reason}" for v in (*verdicts, *extra)) or "there is none")
        return answer(WAITING, f"waits for a range: {why}{note}{_lead(leader, waiting=True)}", (), "", verdicts, kept)
    reservation = allocations.reserve(node)  # the controller's own choice: the pool the walk found, by the same order
    cidrs = tuple(str(cidr) for cidr in reservation.cidrs)
    summary = f"has no range yet; it would get {','.join(cidrs)}{_from(taken)}{note}{_lead(leader, waiting=False)}"
    return answer(UNASSIGNED, summary, cidrs, taken, verdicts, kept)


def _walk(judged: Sequence[Judged], deleting: Mapping[str, str]) -> tuple[list[PoolVerdict], str | None]:
    """The pools as `NodeAllocations.reserve` goes through them: the first in order with room in every family is taken."""
    verdicts = []
    taken: str | None = None
    for item in judged:
        if item.passed:
            verdicts.append(_verdict(item, "", deleting))
        elif taken is not None:
            verdicts.append(_verdict(item, NOT_TRIED, deleting))
        elif item.candidate.has_room:
            taken = item.candidate.name
            verdicts.append(_verdict(item, TAKEN, deleting))
        else:
            verdicts.append(_verdict(item, DRAINING if _drained(item.candidate) else FULL, deleting))
    return verdicts, taken


def _verdict(item: Judged, verdict: str, deleting: Mapping[str, str]) -> PoolVerdict:
    candidate = item.candidate
    spec = candidate.spec
    order = f"priority {spec.priority}, selector {_specificity(item.specificity)}, {_free(candidate)}"
    if spec.is_default:
        order = f"the flags' range, tried last; {_free(candidate)}"
    if item.passed == PASSED_DISABLED:
        verdict, reason = DISABLED, "is being deleted" if spec.name in deleting else "is disabled (spec.disabled)"
    elif item.passed == PASSED_FAMILIES:
        verdict, reason = FAMILIES, f"has {_families(spec.versions)}, not exactly the families the cluster serves"
    elif item.passed:
        verdict, reason = NO_MATCH, f"its selector ({spec.selector}) does not match the Node"
    else:
        reason = {
            HOLDS: f"the Node's range lies in it ({order})",
            TAKEN: f"first in order with room ({order})",
            FULL: f"has no room ({candidate.full} full; {order})",
            DRAINING: f"has no room: its {candidate.full} CIDRs are all draining ({order})",
            NOT_TRIED: f"an earlier pool in the order serves the Node ({order})",
            MAY_SERVE: f"may serve a Node like it ({order})",
        }[verdict]
    return PoolVerdict(spec.name, verdict, reason, spec.priority, str(spec.selector), item.specificity, candidate.free)


def _specificity(specificity: int | None) -> str:
    if specificity is None:
        return "no match"
    return "matches every Node" if specificity == 0 else f"matches with {specificity} requirement(s)"


def _free(candidate: Candidate) -> str:
    return ", ".join(
        f"{free} free /{family.node_mask_size} in IPv{family.version}"
        for family, free in zip(candidate.spec.families, candidate.free, strict=True)
    )


def _drained(candidate: Candidate) -> bool:
    """Whether the pool lacks room only because every CIDR of its full families is draining."""
    full = [family for family, free in zip(candidate.spec.families, candidate.free, strict=True) if free <= 0]
    return bool(full) and all(entry.draining for family in full for entry in family.cidrs)


def _families(versions: Sequence[int]) -> str:
    return " and ".join(f"IPv{version}" for version in versions) or "no family"


def _pool_name(pool: str) -> str:
    return "the flags' range (--cluster-cidr)" if pool == DEFAULT_POOL else f"pool {pool}"


def _from(pool: str) -> str:
    return f" from {_pool_name(pool)}" if pool else ""


def _pool_of(allocations: NodeAllocations, texts: Sequence[str]) -> str:
    """The pool the first parseable range lies in ("" none): containment, never labels."""
    for text in texts:
        try:
            cidr = parse_cidr_sloppy(text)[0]
        except (netaddr.AddrFormatError, ValueError, TypeError):
            continue
        return allocations.pool_sets.pool_of(cidr) or ""
    return ""


def _lead(leader: Leader | None, waiting: bool) -> str:
    """What the Lease adds: no leader, nothing happens; a leader serves an unassigned Node shortly."""
    if leader is None:
        return ""
    if leader.note:
        return f"; {leader.note}"
    return "" if waiting else f"; {leader.holder} leads and gives it shortly"


def _pool_specs(bodies: Sequence[Mapping[str, Any]]) -> tuple[list[PoolSpec], list[tuple[str, str]], dict[str, str]]:
    """The pools as the controller serves them (one being deleted takes no new Node), the invalid ones with why, and
    the names of those being deleted."""
    specs, invalid, deleting = [], [], {}
    for body in bodies:
        metadata = body.get("metadata") or {}
        try:
            spec = PoolSpec.from_body(body)
        except PoolSpecError as error:
            invalid.append((str(metadata.get("name", "")), str(error)))
            continue
        if metadata.get("deletionTimestamp"):
            spec = dataclasses.replace(spec, disabled=True)
            deleting[spec.name] = str(metadata["deletionTimestamp"])
        specs.append(spec)
    return specs, invalid, deleting


def leader_of(lease: str, body: Mapping[str, Any] | None, now: datetime.datetime) -> Leader:
    """The Lease (None: there is none) as explained: a holder that renews it leads; else no Node gets a range."""
    if body is None:
        return Leader(lease, "", f"no controller leads: there is no Lease {lease}, so no Node gets a range")
    spec = body.get("spec") or {}
    holder = str(spec.get("holderIdentity") or "")
    if not holder:
        return Leader(lease, "", f"no controller leads: the Lease {lease} has no holder, so no Node gets a range")
    renewed = parse_api_time(spec.get("renewTime"))
    duration = float(spec.get("leaseDurationSeconds") or 0)
    if renewed is not None and duration and (now - renewed).total_seconds() > duration:
        return Leader(
            lease,
            holder,
            f"the Lease {lease} is held by {holder} but was last renewed at {renewed.isoformat()}, longer ago than its"
            f" {duration:g}s: its holder may be down, and no Node gets a range until one leads",
        )
    return Leader(lease, holder, "")


def format_text(explanation: Explanation) -> str:
    """The summary, then the pools in the order selection tried them, each with what became of it and why."""
    lines = [f"node {explanation.node}: {explanation.state}", f"  {explanation.summary}"]
    if explanation.leader is not None:
        lead = explanation.leader
        lines.append(f"leader: {lead.holder or '(none)'} (Lease {lead.lease})")
    lines.append("")
    width = max([len("POOL"), *(len(verdict.pool) for verdict in explanation.pools)])
    lines.append(f"{'POOL':<{width}}  {'VERDICT':<10}  WHY")
    lines.extend(f"{v.pool:<{width}}  {v.verdict:<10}  {v.reason}" for v in explanation.pools)
    return "\n".join(lines)
