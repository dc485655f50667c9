"""Node CIDR pools as plain values: what a NodeCIDRPool says, and which Nodes its selector matches.

Which pool serves a Node, owns a range or is refused is `poolrank`; the
usage and the status a pool shows is `poolstatus`. Pure: nothing here talks
to the cluster or holds allocation state. The
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
from collections.abc import Mapping, Sequence
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

    @property
    def label_keys(self) -> frozenset[str]:
        """The labels whose values decide whether it matches: Nodes alike in these are alike to it."""
        return frozenset(requirement.key for term in self.terms for requirement in term.expressions)

    @property
    def reads_name(self) -> bool:
        """Whether the Node's name decides whether it matches (matchFields)."""
        return any(term.fields for term in self.terms)

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
