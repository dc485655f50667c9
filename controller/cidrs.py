"""CIDRs as the controller reads them: Go-compatible parsing, the overlap test, and a Node's podCIDRs judged.

Pure values and functions (netaddr only, besides the controller's own
values): the one home of the overlap test, of how a list of ranges is
written in messages, and of how a podCIDR is read (as kube-controller-manager
reads it) and classified against the ranges served.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from collections.abc import Iterable

import netaddr

from controller.cidrindex import CIDRIndex
from controller.config import FamilyRange
from controller.model import REASON_INVALID_POD_CIDR, Problem


def overlaps(a: netaddr.IPNetwork, b: netaddr.IPNetwork) -> bool:
    """Whether two ranges share an address (never across IP versions)."""
    return bool(a.version == b.version and a.first <= b.last and b.first <= a.last)


def join(cidrs: Iterable[netaddr.IPNetwork]) -> str:
    """Ranges as messages and logs write them: comma-separated, no spaces, as podCIDRs are listed."""
    return ",".join(str(cidr) for cidr in cidrs)


_DECIMAL = re.compile(r"[0-9]+")


def _sloppy_ipv4(text: str) -> tuple[int, bool]:
    """An IPv4 address as Go's pre-1.17 parser reads it: octets in decimal, leading zeros allowed.

    Returns the address and whether any octet had a leading zero.
    """
    octets = text.split(".")
    if len(octets) != 4 or not all(_DECIMAL.fullmatch(octet) and len(octet) <= 3 for octet in octets):
        raise ValueError(f"{text!r} is not an IPv4 address")
    values = [int(octet) for octet in octets]
    if any(value > 255 for value in values):
        raise ValueError(f"{text!r} has an octet above 255")
    return int.from_bytes(bytes(values), "big"), any(len(octet) > 1 and octet[0] == "0" for octet in octets)


def parse_cidr_sloppy(text: str) -> tuple[netaddr.IPNetwork, bool]:
    """A CIDR read as kube-controller-manager's ParseCIDRSloppy reads it; and whether it had leading zeros.

    Leading zeros in IPv4 octets (also in an IPv6 address's embedded IPv4
    part) and in the prefix length are decimal, never octal: 10.244.01.0/24
    is 10.244.1.0/24. Host bits are cleared, as Go's ParseCIDR does. Raises
    ValueError for anything Go's parser would refuse.
    """
    address, slash, prefix = text.partition("/")
    if not slash or not _DECIMAL.fullmatch(prefix) or len(prefix) > 3:
        raise ValueError(f"{text!r} is not in CIDR notation")
    sloppy = len(prefix) > 1 and prefix[0] == "0"
    if ":" in address:
        if "%" in address:
            raise ValueError(f"{text!r} has a zone")
        head, _, tail = address.rpartition(":")
        if "." in tail:
            embedded, zeros = _sloppy_ipv4(tail)
            sloppy = sloppy or zeros
            address = f"{head}:{ipaddress.IPv4Address(embedded)}"
        value, version, bits = int(ipaddress.IPv6Address(address)), 6, 128
    else:
        value, zeros = _sloppy_ipv4(address)
        sloppy, version, bits = sloppy or zeros, 4, 32
    length = int(prefix)
    if length > bits:
        raise ValueError(f"{text!r} has a prefix longer than {bits} bits")
    return netaddr.IPNetwork((value, length), version).cidr, sloppy


def parsed_cidrs(texts: Iterable[str]) -> list[netaddr.IPNetwork]:
    """The texts that `parse_cidr_sloppy` reads, read; the others left out (a caller that reports them does so itself)."""
    found = []
    for text in texts:
        try:
            found.append(parse_cidr_sloppy(text)[0])
        except ValueError:
            continue
    return found


def reads_as(pod_cidrs: Iterable[str], cidrs: tuple[netaddr.IPNetwork, ...]) -> bool:
    """Whether podCIDRs are exactly `cidrs`, in order (read as kube-controller-manager reads them)."""
    try:
        return tuple(parse_cidr_sloppy(text)[0] for text in pod_cidrs) == cidrs
    except ValueError:
        return False


@dataclasses.dataclass(frozen=True)
class Classified:
    """A Node's podCIDRs sorted into what can be occupied and what is wrong."""

    usable: tuple[netaddr.IPNetwork, ...]
    problems: tuple[Problem, ...]


class ServedRanges:
    """The ranges podCIDRs are judged against, in order, and a lookup of the first one a podCIDR overlaps."""

    def __init__(self, ranges: Iterable[FamilyRange]) -> None:
        self.ranges = tuple(ranges)
        self.versions = frozenset(family.version for family in self.ranges)
        self._index = CIDRIndex((family.cluster_cidr, family) for family in self.ranges)

    def first_overlapping(self, cidr: netaddr.IPNetwork) -> FamilyRange | None:
        found = self._index.overlapping(cidr)
        return found[0] if found else None


def classify_pod_cidrs(
    pod_cidrs: Iterable[str],
    ranges: Iterable[FamilyRange] | ServedRanges,
    service_cidrs: Iterable[netaddr.IPNetwork] = (),
) -> Classified:
    """Decide which of a Node's podCIDRs to occupy, and what to warn about.

    `ranges` are the cluster CIDRs, or every CIDR of every pool (several per
    family): a podCIDR is judged against the first one it overlaps. A podCIDR that
    overlaps one is occupied even when its mask is wrong or it sticks out, so
    that no overlapping range is ever handed out. Values are read as
    kube-controller-manager reads them (leading zeros as decimal), so that
    both agree on which ranges are taken. A podCIDR overlapping one of
    `service_cidrs` is occupied too, and reported: its pods may get the
    addresses of Services. Judging many Nodes: pass a `ServedRanges`, made once.
    """
    served = ranges if isinstance(ranges, ServedRanges) else ServedRanges(ranges)
    services = tuple(service_cidrs)
    usable: list[netaddr.IPNetwork] = []
    problems: list[Problem] = []
    for text in pod_cidrs:
        try:
            cidr, sloppy = parse_cidr_sloppy(text)
        except (netaddr.AddrFormatError, ValueError, TypeError):
            problems.append(Problem(REASON_INVALID_POD_CIDR, f"podCIDR {text!r} is not a CIDR; ignored"))
            continue
        if cidr.version not in served.versions:
            listed = ", ".join(str(f.cluster_cidr) for f in served.ranges)
            problems.append(
                Problem(
                    REASON_INVALID_POD_CIDR,
                    f"podCIDR {text} is IPv{cidr.version}, but this controller serves only {listed}; ignored",
                )
            )
            continue
        family = served.first_overlapping(cidr)
        if family is None:
            same_family = [f for f in served.ranges if f.version == cidr.version]
            where = (
                f"the cluster CIDR {same_family[0].cluster_cidr}"
                if len(same_family) == 1
                else "every pool CIDR (" + ", ".join(str(f.cluster_cidr) for f in same_family) + ")"
            )
            problems.append(Problem(REASON_INVALID_POD_CIDR, f"podCIDR {text} is outside {where}; ignored"))
            continue
        if sloppy:
            problems.append(
                Problem(
                    REASON_INVALID_POD_CIDR,
                    f"podCIDR {text} is not in canonical form (leading zeros); read as {cidr}, as kube-controller-manager"
                    " reads it, and kept out of the pool",
                )
            )
        if cidr.prefixlen != family.node_mask_size or cidr not in family.cluster_cidr:
            problems.append(
                Problem(
                    REASON_INVALID_POD_CIDR,
                    f"podCIDR {text} does not match the node subnets of {family}; the ranges it covers are kept out of the pool",
                )
            )
        for service in services:
            if overlaps(cidr, service):
                problems.append(
                    Problem(
                        REASON_INVALID_POD_CIDR,
                        f"podCIDR {text} overlaps the service range {service} (--service-cluster-ip-range): pods on this"
                        " Node may get the addresses of Services; both stay out of the pool",
                    )
                )
        usable.append(cidr)
    return Classified(tuple(usable), tuple(problems))
