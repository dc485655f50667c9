"""What a pool shows: its usage (capacity, allocated, free per CIDR and family) and its NodeCIDRPool status.

Plain values, one pure function and the turns of the status writes: the
pool usage book computes the values, the status round writes `status_body`
(when `StatusTurns` lets it), `nodeipam status` and the metrics read the
values.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from controller.pools import PoolSpec

#: How many Nodes status.blockingNodes names at most.
BLOCKING_NODES_SHOWN = 10


@dataclasses.dataclass(frozen=True)
class CIDRUsage:
    cidr: str
    capacity: int  # Node ranges it holds, reserved ones excluded
    allocated: int  # Node ranges taken: held by Nodes, reserved for a patch, or covered by a podCIDR sticking out of another
    draining: bool


@dataclasses.dataclass(frozen=True)
class FamilyUsage:
    node_mask_size: int
    capacity: int
    allocated: int
    free: int  # ranges a new Node could get: draining CIDRs have none
    per_cidr: tuple[CIDRUsage, ...]

    @property
    def version(self) -> int:
        return 6 if ":" in self.per_cidr[0].cidr else 4  # the CIDR as str(IPNetwork) writes it

    @property
    def cidrs_shown(self) -> tuple[str, ...]:
        """Its CIDRs as `kubectl get` and `nodeipam status` show them: draining ones marked "(draining)"."""
        return tuple(f"{usage.cidr}(draining)" if usage.draining else usage.cidr for usage in self.per_cidr)


@dataclasses.dataclass(frozen=True)
class PoolUsage:
    """A pool's usage as its status and `nodeipam status` show it."""

    name: str
    priority: int
    selector: str
    disabled: bool
    families: tuple[FamilyUsage, ...]  # spec.families order: IPv4 first
    nodes: int
    blocking_nodes: tuple[str, ...]
    refused: str = ""  # why the pool serves no Node (it overlaps an earlier pool or a service range)

    @property
    def summary(self) -> str:
        """Node ranges in use of all there are, e.g. "37/256 (14%)"; dual-stack: the fuller family."""
        fullest = max(self.families, key=lambda f: (f.allocated / f.capacity) if f.capacity else 1.0)
        percent = 100 * fullest.allocated // fullest.capacity if fullest.capacity else 100
        return f"{fullest.allocated}/{fullest.capacity} ({percent}%)"


# -- status ------------------------------------------------------------------------------------------

CONDITION_READY = "Ready"
CONDITION_EXHAUSTED = "Exhausted"
CONDITION_OVERLAPPING = "Overlapping"
CONDITION_DRAINING = "Draining"


def _condition(type_: str, status: bool, reason: str, message: str) -> dict[str, Any]:
    return {"type": type_, "status": "True" if status else "False", "reason": reason, "message": message}


#: The largest count the status schema holds (format int64). An IPv6 pool of /112s in a /48 has 2^64 ranges:
#: its counts are reported as this, which the API server accepts, where the true one made every write a 422.
STATUS_COUNT_MAX = 2**63 - 1


def _count(value: int) -> int:
    return min(value, STATUS_COUNT_MAX)


def status_body(
    spec: PoolSpec,
    usage: PoolUsage,
    now: str,
    previous: Sequence[Mapping[str, Any]] = (),
    deleting: bool = False,
) -> dict[str, Any]:
    """The NodeCIDRPool status for this usage: conditions, usage per family, and what `kubectl get` shows.

    A condition keeps its lastTransitionTime from `previous` while its status
    does not change. `deleting`: the pool waits for its Nodes to go (Draining).
    """
    exhausted = [f"IPv{family.version}" for family, counts in zip(spec.families, usage.families, strict=True) if counts.free <= 0]
    draining_cidrs = [str(entry.cidr) for family in spec.families for entry in family.cidrs if entry.draining]
    if usage.refused:
        ready = _condition(CONDITION_READY, False, "Overlapping", f"serves no Node: {usage.refused}")
    elif spec.disabled:
        ready = _condition(CONDITION_READY, False, "Disabled", "spec.disabled: serves no new Node")
    elif deleting:
        ready = _condition(CONDITION_READY, False, "Deleting", "being deleted: serves no new Node")
    else:
        ready = _condition(CONDITION_READY, True, "Serving", "serves the Nodes its selector matches")
    if deleting:
        draining = _condition(CONDITION_DRAINING, True, "Deleting", f"waits for {usage.nodes} Node(s) holding ranges in it")
    elif draining_cidrs:
        held = (
            f"{len(usage.blocking_nodes)} Node(s) still hold ranges in them"
            if usage.blocking_nodes
            else "no Node holds a range in them"
        )
        draining = _condition(CONDITION_DRAINING, True, "CIDRsDraining", f"{', '.join(draining_cidrs)}: {held}")
    else:
        draining = _condition(CONDITION_DRAINING, False, "NothingDraining", "no CIDR is draining")
    conditions = [
        ready,
        _condition(
            CONDITION_EXHAUSTED,
            bool(exhausted),
            "NoFreeRange" if exhausted else "RangesFree",
            f"no free range in {' and '.join(exhausted)}" if exhausted else "every family has free ranges",
        ),
        _condition(
            CONDITION_OVERLAPPING,
            bool(usage.refused),
            "OverlapsEarlierRange" if usage.refused else "NoOverlap",
            usage.refused or "overlaps no other pool nor the service range",
        ),
        draining,
    ]
    before = {str(condition.get("type")): condition for condition in previous}
    for condition in conditions:
        old = before.get(condition["type"])
        same = old is not None and old.get("status") == condition["status"]
        condition["lastTransitionTime"] = str(old.get("lastTransitionTime")) if same and old is not None else now
        condition["observedGeneration"] = spec.generation
    body: dict[str, Any] = {
        "observedGeneration": spec.generation,
        "conditions": conditions,
        "nodes": usage.nodes,
        "summary": usage.summary,
        "blockingNodes": list(usage.blocking_nodes),
        "columns": {
            "mask": ",".join(f"/{family.node_mask_size}" for family in spec.families),
            "selector": str(spec.selector),
        },
    }
    for family, counts in zip(spec.families, usage.families, strict=True):
        key = f"ipv{family.version}"
        body[key] = {
            "capacity": _count(counts.capacity),
            "allocated": _count(counts.allocated),
            "free": _count(counts.free),
            "perCIDR": [
                {"cidr": c.cidr, "capacity": _count(c.capacity), "allocated": _count(c.allocated), "draining": c.draining}
                for c in counts.per_cidr
            ],
        }
        body["columns"][key] = ",".join(counts.cidrs_shown)
    return body


# -- when a status is written ------------------------------------------------------------------------


def shown_conditions(status: object) -> list[Mapping[str, Any]]:
    """The conditions of a status as the API server showed it: where the CRD has no schema, anything at all."""
    conditions = status.get("conditions") if isinstance(status, Mapping) else None
    return [condition for condition in conditions if isinstance(condition, Mapping)] if isinstance(conditions, list) else []


def news(status: Mapping[str, Any], shown: Mapping[str, Any]) -> bool:
    """Whether `status` says more than changed counts against the status `shown`: a condition that flipped (True,
    False), or a spec change observed (observedGeneration, which `kubectl wait` and health checks read)."""

    def states(status: Mapping[str, Any]) -> dict[str, str]:
        return {str(condition.get("type")): str(condition.get("status")) for condition in shown_conditions(status)}

    return states(status) != states(shown) or status.get("observedGeneration") != shown.get("observedGeneration")


class StatusTurns:
    """Whose changed status a round writes: news (`news`) at once, changed counts in turn.

    A NodeCIDRPool status write costs the API server more than a Node's
    create does. When a burst changes the counts of many pools at once, a
    round writes `per_round` of them, those that waited longest first: a
    pool's counts then lag by at most (pools / per_round) rounds, and the
    writes stay a few a second however many pools there are.
    """

    def __init__(self, per_round: int) -> None:
        self._per_round = per_round
        self._left = per_round
        self._waiting: dict[str, None] = {}  # pools whose changed counts wait for their turn, longest waiting first

    def round(self, changed: Iterable[str]) -> list[str]:
        """Start a round: the pools to look at, those still waiting for their turn first, then those that changed."""
        self._left = self._per_round
        order = dict(self._waiting)
        order.update(dict.fromkeys(changed))
        return list(order)

    def may_write(self, name: str, urgent: bool) -> bool:
        """Whether this pool's changed status is written in this round; if not, it waits, ahead of later changes."""
        if urgent or self._left > 0:
            self._left -= 0 if urgent else 1
            self._waiting.pop(name, None)
            return True
        self._waiting[name] = None
        return False

    def retry(self, name: str) -> None:
        """A write that failed (or was not sent): the pool is looked at first in the next round."""
        self._waiting = {name: None, **{waiting: None for waiting in self._waiting if waiting != name}}

    def forget(self, name: str) -> None:
        """The pool is gone, or its status needs no write any more."""
        self._waiting.pop(name, None)

    @property
    def waiting(self) -> bool:
        """Some changed status waits for a round to come."""
        return bool(self._waiting)
