"""Node CIDR pools as plain values: what a NodeCIDRPool says, which pools may serve a Node, in which order.

Pure: nothing here talks to the cluster or holds allocation state. The
default pool, from --cluster-cidr and the mask flags, is a pool like the
others, named DEFAULT_POOL, that every Node matches and that is tried last.

Node selectors follow the scheduler's required node affinity exactly: terms
are ORed, the requirements of a term ANDed (matchExpressions on labels,
matchFields on metadata.name); an empty term matches nothing; an omitted
selector matches every Node.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import netaddr

from controller import cidrs
from controller.allocators import node_mask_bounds
from controller.config import FamilyRange

#: The pool made of the --cluster-cidr and mask flags; not a valid object name, so no NodeCIDRPool can take it.
DEFAULT_POOL = "(default)"

_INTEGER = re.compile(r"-?[0-9]+")
_INT64 = (-(2**63), 2**63 - 1)


class PoolSpecError(ValueError):
    """A NodeCIDRPool whose spec cannot be used (the CRD's validation should have refused it)."""


class Operator(enum.Enum):
    IN = "In"
    NOT_IN = "NotIn"
    EXISTS = "Exists"
    DOES_NOT_EXIST = "DoesNotExist"
    GT = "Gt"
    LT = "Lt"


#: The one field matchFields may name, as for Pods' node affinity.
NODE_NAME_FIELD = "metadata.name"


def _int64(text: str) -> int | None:
    """An integer label value as Go's strconv.ParseInt(text, 10, 64) reads it, else None."""
    if not _INTEGER.fullmatch(text.removeprefix("+")):
        return None
    value = int(text)
    return value if _INT64[0] <= value <= _INT64[1] else None


@dataclasses.dataclass(frozen=True)
class Requirement:
    """One matchExpressions (on labels) or matchFields (on the Node's name) entry."""

    key: str
    operator: Operator
    values: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.operator in (Operator.IN, Operator.NOT_IN) and not self.values:
            raise PoolSpecError(f"{self.key}: {self.operator.value} needs at least one value")
        if self.operator in (Operator.EXISTS, Operator.DOES_NOT_EXIST) and self.values:
            raise PoolSpecError(f"{self.key}: {self.operator.value} takes no values")
        if self.operator in (Operator.GT, Operator.LT) and (len(self.values) != 1 or _int64(self.values[0]) is None):
            raise PoolSpecError(f"{self.key}: {self.operator.value} takes exactly one integer value")

    def matches(self, value: str | None) -> bool:
        """Whether a label (or field) with this value, None when absent, satisfies the requirement."""
        if self.operator is Operator.IN:
            return value is not None and value in self.values
        if self.operator is Operator.NOT_IN:
            return value is None or value not in self.values
        if self.operator is Operator.EXISTS:
            return value is not None
        if self.operator is Operator.DOES_NOT_EXIST:
            return value is None
        number = _int64(value) if value is not None else None
        if number is None:
            return False
        bound = int(self.values[0])
        return number > bound if self.operator is Operator.GT else number < bound

    def __str__(self) -> str:
        values = ",".join(self.values)
        return {
            Operator.IN: f"{self.key} in ({values})",
            Operator.NOT_IN: f"{self.key} notin ({values})",
            Operator.EXISTS: self.key,
            Operator.DOES_NOT_EXIST: f"!{self.key}",
            Operator.GT: f"{self.key}>{values}",
            Operator.LT: f"{self.key}<{values}",
        }[self.operator]


@dataclasses.dataclass(frozen=True)
class SelectorTerm:
    """Requirements that must all hold; a term with none matches no Node."""

    expressions: tuple[Requirement, ...] = ()
    fields: tuple[Requirement, ...] = ()

    @property
    def size(self) -> int:
        return len(self.expressions) + len(self.fields)

    def matches(self, labels: Mapping[str, str], name: str) -> bool:
        if not self.size:
            return False
        return all(r.matches(labels.get(r.key)) for r in self.expressions) and all(r.matches(name) for r in self.fields)

    def __str__(self) -> str:
        return ",".join(str(requirement) for requirement in (*self.expressions, *self.fields))


@dataclasses.dataclass(frozen=True)
class NodeSelector:
    """Terms, any one of which selects a Node. No terms: every Node (an omitted selector)."""

    terms: tuple[SelectorTerm, ...] = ()

    def specificity(self, labels: Mapping[str, str], name: str) -> int | None:
        """How specifically this selects the Node (requirements in the largest matching term), or None: not at all.

        An omitted selector matches every Node with specificity 0.
        """
        if not self.terms:
            return 0
        sizes = [term.size for term in self.terms if term.matches(labels, name)]
        return max(sizes) if sizes else None

    def matches(self, labels: Mapping[str, str], name: str) -> bool:
        return self.specificity(labels, name) is not None

    def __str__(self) -> str:
        return " | ".join(str(term) for term in self.terms) if self.terms else "<all nodes>"

    @classmethod
    def from_body(cls, body: Any) -> NodeSelector:
        if body is None:
            return cls()
        terms = _list(_mapping(body, "nodeSelector").get("nodeSelectorTerms"), "nodeSelectorTerms")
        if not terms:
            raise PoolSpecError("nodeSelector has no nodeSelectorTerms; omit nodeSelector to match every Node")
        return cls(tuple(_term(_mapping(term, "a nodeSelectorTerm")) for term in terms))


def _mapping(value: Any, what: str) -> Mapping[str, Any]:
    """`value` as a mapping, or PoolSpecError: a CRD without the chart's schema lets any shape through."""
    if not isinstance(value, Mapping):
        raise PoolSpecError(f"{what} is a {type(value).__name__}, not an object")
    return value


def _list(value: Any, what: str) -> list[Any]:
    """`value` as a list (None: empty), or PoolSpecError."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise PoolSpecError(f"{what} is a {type(value).__name__}, not a list")
    return value


def _requirement(body: Mapping[str, Any]) -> Requirement:
    try:
        operator = Operator(body.get("operator"))
    except ValueError:
        raise PoolSpecError(f"{body.get('key')}: unknown operator {body.get('operator')!r}") from None
    values = _list(body.get("values"), f"{body.get('key')}: values")
    return Requirement(str(body.get("key", "")), operator, tuple(str(value) for value in values))


def _term(body: Mapping[str, Any]) -> SelectorTerm:
    fields = tuple(_requirement(_mapping(field, "a matchField")) for field in _list(body.get("matchFields"), "matchFields"))
    for field in fields:
        if field.key != NODE_NAME_FIELD or field.operator not in (Operator.IN, Operator.NOT_IN) or len(field.values) != 1:
            raise PoolSpecError(f"matchFields supports only {NODE_NAME_FIELD} In/NotIn one name, not {field}")
    expressions = _list(body.get("matchExpressions"), "matchExpressions")
    return SelectorTerm(tuple(_requirement(_mapping(expression, "a matchExpression")) for expression in expressions), fields)


@dataclasses.dataclass(frozen=True)
class PoolCIDR:
    cidr: netaddr.IPNetwork
    draining: bool = False


@dataclasses.dataclass(frozen=True)
class PoolFamily:
    """The CIDRs of one IP family of a pool and the prefix length of each Node's range."""

    node_mask_size: int
    cidrs: tuple[PoolCIDR, ...]

    @functools.cached_property  # read for every pool on every allocation
    def version(self) -> int:
        return int(self.cidrs[0].cidr.version)


@dataclasses.dataclass(frozen=True)
class PoolSpec:
    """What a NodeCIDRPool (or the flags) says, parsed and checked."""

    name: str
    families: tuple[PoolFamily, ...]  # one per IP version, IPv4 first
    selector: NodeSelector = NodeSelector()
    priority: int = 0
    disabled: bool = False
    reserved: tuple[netaddr.IPNetwork, ...] = ()
    generation: int = 0
    created: str = ""  # metadata.creationTimestamp: the earlier of two overlapping pools keeps its ranges

    @property
    def is_default(self) -> bool:
        return self.name == DEFAULT_POOL

    @functools.cached_property  # read for every pool on every allocation
    def versions(self) -> tuple[int, ...]:
        return tuple(family.version for family in self.families)

    def family(self, version: int) -> PoolFamily | None:
        return next((family for family in self.families if family.version == version), None)

    def contains(self, cidr: netaddr.IPNetwork) -> bool:
        """Whether `cidr` lies inside one of the pool's CIDRs (draining ones included)."""
        family = self.family(int(cidr.version))
        return family is not None and any(cidr in entry.cidr for entry in family.cidrs)

    @classmethod
    def default(cls, ranges: Sequence[FamilyRange]) -> PoolSpec:
        """The pool the flags describe: every Node matches it, and it is tried last."""
        families = tuple(
            PoolFamily(family.node_mask_size, (PoolCIDR(family.cluster_cidr),))
            for family in sorted(ranges, key=lambda family: family.version)
        )
        return cls(DEFAULT_POOL, families)

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> PoolSpec:
        """Parse a NodeCIDRPool; raises PoolSpecError naming what is wrong, whatever the shape of the body."""
        found = body.get("metadata")
        metadata: Mapping[str, Any] = found if isinstance(found, Mapping) else {}
        name = str(metadata.get("name", ""))
        try:
            spec = _mapping(body.get("spec") or {}, "spec")
            families = tuple(
                _family(_mapping(spec[key], key), version)
                for key, version in (("ipv4", 4), ("ipv6", 6))
                if spec.get(key) is not None
            )
            if not families:
                raise PoolSpecError("it has neither ipv4 nor ipv6")
            reserved = tuple(_cidr(text) for text in _list(spec.get("reserved"), "reserved"))
            pool = cls(
                name=name,
                families=families,
                selector=NodeSelector.from_body(spec.get("nodeSelector")),
                priority=int(spec.get("priority") or 0),
                disabled=bool(spec.get("disabled", False)),
                reserved=reserved,
                generation=int(metadata.get("generation") or 0),
                created=str(metadata.get("creationTimestamp") or ""),
            )
        except PoolSpecError as error:
            raise PoolSpecError(f"NodeCIDRPool {name}: {error}") from None
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise PoolSpecError(f"NodeCIDRPool {name}: malformed spec ({error!r})") from None
        for cidr in reserved:
            if not pool.contains(cidr):
                raise PoolSpecError(f"NodeCIDRPool {name}: reserved {cidr} lies outside the pool's CIDRs")
        return pool


def _cidr(text: Any) -> netaddr.IPNetwork:
    try:
        cidr = netaddr.IPNetwork(str(text))
    except (netaddr.AddrFormatError, ValueError, TypeError):
        raise PoolSpecError(f"{text!r} is not a CIDR") from None
    if "/" not in str(text) or cidr.ip != cidr.network:
        raise PoolSpecError(f"{text!r} is not a CIDR in canonical form")
    return cidr


def _family(body: Mapping[str, Any], version: int) -> PoolFamily:
    mask = int(body["nodeMaskSize"])
    entries = tuple(
        PoolCIDR(_cidr(_mapping(entry, f"an ipv{version} cidrs entry")["cidr"]), bool(entry.get("draining", False)))
        for entry in _list(body.get("cidrs"), f"ipv{version}.cidrs")
    )
    if not entries:
        raise PoolSpecError(f"ipv{version} has no cidrs")
    for entry in entries:
        if entry.cidr.version != version:
            raise PoolSpecError(f"{entry.cidr} is not IPv{version}")
        shortest, longest = node_mask_bounds(entry.cidr)
        if not shortest <= mask <= longest:
            raise PoolSpecError(f"nodeMaskSize {mask} does not fit {entry.cidr}")
    for index, entry in enumerate(entries):
        for other in entries[index + 1 :]:
            if cidrs.overlaps(entry.cidr, other.cidr):
                raise PoolSpecError(f"{entry.cidr} and {other.cidr} overlap")
    return PoolFamily(mask, entries)


# -- choosing pools --------------------------------------------------------------------------------


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


# -- usage -----------------------------------------------------------------------------------------

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
        return int(netaddr.IPNetwork(self.per_cidr[0].cidr).version)


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
        body["columns"][key] = ",".join(f"{c.cidr}(draining)" if c.draining else c.cidr for c in counts.per_cidr)
    return body
