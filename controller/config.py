"""Settings of the controller, validated before anything touches the cluster.

The flag names, defaults and validation rules follow kube-controller-manager's
nodeipam flags, so that an operator can paste the flags they already use.
Every error names the flag and the fix.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence

import netaddr

DEFAULT_NODE_MASK_IPV4 = 24
DEFAULT_NODE_MASK_IPV6 = 64
MAX_CLUSTER_CIDRS = 2
MAX_SERVICE_CIDRS = 2
SUPPORTED_ALLOCATOR_TYPE = "RangeAllocator"


class ConfigError(ValueError):
    """A flag value that cannot work; the message names the flag and the fix."""

    def __init__(self, flag: str, problem: str, fix: str) -> None:
        super().__init__(f"{flag}: {problem}; {fix}")
        self.flag = flag


@dataclasses.dataclass(frozen=True)
class FamilyRange:
    """One cluster CIDR and the prefix length of the node subnets carved from it."""

    cluster_cidr: netaddr.IPNetwork
    node_mask_size: int

    @property
    def version(self) -> int:
        return int(self.cluster_cidr.version)

    def __str__(self) -> str:
        return f"{self.cluster_cidr}(/{self.node_mask_size} per node)"


@dataclasses.dataclass(frozen=True)
class LeaderElection:
    """Lease-based leader election, with kube-controller-manager's flags and defaults."""

    enabled: bool = True
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0
    resource_name: str = "nodeipam"
    resource_namespace: str = "kube-system"
    identity: str = ""


@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything `nodeipam run` needs, frozen after validation."""

    ranges: tuple[FamilyRange, ...]
    service_cidrs: tuple[netaddr.IPNetwork, ...] = ()
    kubeconfig: str | None = None
    master: str | None = None
    kube_api_qps: float = 0.0
    kube_api_burst: int = 0
    max_in_flight: int = 64
    resync_period: float = 180.0
    leader_election: LeaderElection = dataclasses.field(default_factory=LeaderElection)
    metrics_bind_address: str = "0.0.0.0:9254"
    log_level: str = "info"


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(flag: str, text: str) -> float:
    """Parse a Go-style duration ("15s", "2m30s", "500ms") into seconds."""
    text = text.strip()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(value + unit for value, unit in parts) != text:
        raise ConfigError(flag, f"{text!r} is not a duration", "write it like 15s, 2m or 1h30m")
    return sum(float(value) * _DURATION_UNITS[unit] for value, unit in parts)


def parse_bool(flag: str, text: str | bool) -> bool:
    """Accept the boolean spellings Go's flag package accepts."""
    if isinstance(text, bool):
        return text
    lowered = text.strip().lower()
    if lowered in ("1", "t", "true"):
        return True
    if lowered in ("0", "f", "false"):
        return False
    raise ConfigError(flag, f"{text!r} is not a boolean", "use true or false")


def _parse_cidr_list(flag: str, text: str, limit: int) -> list[netaddr.IPNetwork]:
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise ConfigError(flag, "is empty", "give at least one CIDR, e.g. 10.244.0.0/16")
    if len(items) > limit:
        raise ConfigError(flag, f"has {len(items)} CIDRs, at most {limit} are allowed", "give one IPv4 and/or one IPv6 CIDR")
    cidrs = []
    for item in items:
        try:
            cidr = netaddr.IPNetwork(item)
        except (netaddr.AddrFormatError, ValueError, TypeError) as error:
            raise ConfigError(
                flag, f"{item!r} is not a CIDR ({error})", "write it like 10.244.0.0/16 or fd00:10:244::/56"
            ) from None
        if "/" not in item:
            raise ConfigError(flag, f"{item!r} has no prefix length", f"write it with one, e.g. {cidr.cidr}")
        cidrs.append(cidr.cidr)
    if len(cidrs) == 2 and cidrs[0].version == cidrs[1].version:
        raise ConfigError(flag, f"both CIDRs are IPv{cidrs[0].version}", "dual-stack needs one IPv4 and one IPv6 CIDR")
    return cidrs


def node_mask_sizes(
    cluster_cidrs: Sequence[netaddr.IPNetwork],
    node_cidr_mask_size: int | None,
    node_cidr_mask_size_ipv4: int | None,
    node_cidr_mask_size_ipv6: int | None,
) -> list[int]:
    """The node mask size per cluster CIDR, by kube-controller-manager's rules."""
    ipv4_mask = DEFAULT_NODE_MASK_IPV4
    ipv6_mask = DEFAULT_NODE_MASK_IPV6
    if len(cluster_cidrs) > 1:
        if node_cidr_mask_size is not None:
            raise ConfigError(
                "--node-cidr-mask-size",
                "is not allowed with dual-stack clusters",
                "use --node-cidr-mask-size-ipv4 and --node-cidr-mask-size-ipv6 instead",
            )
        ipv4_mask = node_cidr_mask_size_ipv4 if node_cidr_mask_size_ipv4 is not None else ipv4_mask
        ipv6_mask = node_cidr_mask_size_ipv6 if node_cidr_mask_size_ipv6 is not None else ipv6_mask
    else:
        single_stack_ipv6 = cluster_cidrs[0].version == 6
        if node_cidr_mask_size is not None:
            if node_cidr_mask_size_ipv4 is not None or node_cidr_mask_size_ipv6 is not None:
                raise ConfigError(
                    "--node-cidr-mask-size",
                    "cannot be combined with --node-cidr-mask-size-ipv4/--node-cidr-mask-size-ipv6",
                    "keep only one of them",
                )
            ipv4_mask = ipv6_mask = node_cidr_mask_size
        if node_cidr_mask_size_ipv4 is not None:
            if single_stack_ipv6:
                raise ConfigError(
                    "--node-cidr-mask-size-ipv4",
                    "is not allowed for a single-stack IPv6 cluster",
                    "use --node-cidr-mask-size-ipv6 or --node-cidr-mask-size",
                )
            ipv4_mask = node_cidr_mask_size_ipv4
        if node_cidr_mask_size_ipv6 is not None:
            if not single_stack_ipv6:
                raise ConfigError(
                    "--node-cidr-mask-size-ipv6",
                    "is not allowed for a single-stack IPv4 cluster",
                    "use --node-cidr-mask-size-ipv4 or --node-cidr-mask-size",
                )
            ipv6_mask = node_cidr_mask_size_ipv6
    return [ipv4_mask if cidr.version == 4 else ipv6_mask for cidr in cluster_cidrs]


def build_ranges(
    cluster_cidr: str | None,
    node_cidr_mask_size: int | None = None,
    node_cidr_mask_size_ipv4: int | None = None,
    node_cidr_mask_size_ipv6: int | None = None,
) -> tuple[FamilyRange, ...]:
    """Validate the cluster CIDR flags into one FamilyRange per family, in flag order."""
    if not cluster_cidr:
        raise ConfigError("--cluster-cidr", "is required", "pass the pod network, e.g. --cluster-cidr=10.244.0.0/16")
    cidrs = _parse_cidr_list("--cluster-cidr", cluster_cidr, MAX_CLUSTER_CIDRS)
    masks = node_mask_sizes(cidrs, node_cidr_mask_size, node_cidr_mask_size_ipv4, node_cidr_mask_size_ipv6)
    ranges = []
    for cidr, mask in zip(cidrs, masks, strict=True):
        flag = "--node-cidr-mask-size" if node_cidr_mask_size is not None else f"--node-cidr-mask-size-ipv{cidr.version}"
        if mask < cidr.prefixlen:
            raise ConfigError(
                flag,
                f"node mask size {mask} is shorter than the cluster CIDR prefix /{cidr.prefixlen} of {cidr}",
                f"use a mask of at least {cidr.prefixlen} or a larger --cluster-cidr",
            )
        if mask > (32 if cidr.version == 4 else 128):
            raise ConfigError(flag, f"node mask size {mask} is longer than an IPv{cidr.version} address", "use a smaller mask")
        ranges.append(FamilyRange(cidr, mask))
    return tuple(ranges)


def build_service_cidrs(service_cluster_ip_range: str | None) -> tuple[netaddr.IPNetwork, ...]:
    if not service_cluster_ip_range:
        return ()
    return tuple(_parse_cidr_list("--service-cluster-ip-range", service_cluster_ip_range, MAX_SERVICE_CIDRS))
