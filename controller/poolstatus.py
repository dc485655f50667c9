"""What a pool shows: its usage (capacity, allocated, free per CIDR and family) and its NodeCIDRPool status.

Plain values and one pure function: the pool usage book computes the
values, the status round writes `status_body`, `nodeipam status` and the
metrics read the values.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
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
