"""Settings of the controller, validated before anything touches the cluster.

The flag names, defaults and validation rules follow kube-controller-manager's
nodeipam flags, so that an operator can paste the flags they already use.
Every error names the flag and the fix.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import re
from collections.abc import Sequence
from urllib.parse import urlsplit

import netaddr

from controller.allocators import node_mask_bounds
from controller.flagvalues import ConfigError, parse_duration
from controller.secure_serving import ServingOptions

DEFAULT_NODE_MASK_IPV4 = 24
DEFAULT_NODE_MASK_IPV6 = 64
MAX_CLUSTER_CIDRS = 2
MAX_SERVICE_CIDRS = 2
SUPPORTED_ALLOCATOR_TYPE = "RangeAllocator"

# Floors below which a value would stall or hammer the controller rather than tune it.
MIN_KUBE_API_QPS = 1.0  # fewer than one request a second cannot keep up with Lease renewals and Node patches
MIN_RESYNC_PERIOD = 1.0  # seconds; every resync re-reads the Nodes left open, one GET each
MIN_RETRY_PERIOD = 0.1  # seconds; every retry is a request for the Lease
# client-go's leader election jitters each retry by up to this factor and requires
# RenewDeadline > JitterFactor * RetryPeriod, or a renewal could never fit in the deadline.
LEADER_ELECTION_JITTER_FACTOR = 1.2
MAX_LEASE_DURATION_SECONDS = 2**31 - 1  # the Lease API stores leaseDurationSeconds as an int32


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
    health_probe_bind_address: str = "0.0.0.0:9255"  # plain http, from a process of its own (controller.probes)
    serving: ServingOptions = dataclasses.field(default_factory=ServingOptions)  # TLS, paths served without a token
    log_level: str = "info"
    dry_run: bool = False  # decide and log, write nothing, take no Lease (controller.dryrun)


def check_rate_limit(qps: float, burst: int | None) -> None:
    """--kube-api-qps: 0 (no client-side limit) or a finite rate of at least MIN_KUBE_API_QPS.

    --kube-api-burst: not negative, and at least 1 when given with a rate, as
    client-go requires; not given, `kube_api_burst` settles it.
    """
    no_limit = "use 0 for no client-side limit (the default)"
    if not math.isfinite(qps):
        raise ConfigError("--kube-api-qps", f"{qps!r} is not a finite number", f"{no_limit}, or a rate such as 20")
    if qps < 0:
        raise ConfigError("--kube-api-qps", f"{qps!r} is negative", f"{no_limit}, or a rate such as 20")
    if 0 < qps < MIN_KUBE_API_QPS:
        raise ConfigError(
            "--kube-api-qps",
            f"{qps!r} requests/s would stall the controller",
            f"{no_limit}, or at least {MIN_KUBE_API_QPS:g}",
        )
    if burst is not None and burst < 0:
        raise ConfigError("--kube-api-burst", f"{burst} is negative", "use at least 1, e.g. 30")
    if burst is not None and burst < 1 and qps > 0:
        raise ConfigError(
            "--kube-api-burst",
            f"{burst} is below 1 while --kube-api-qps={qps:g} limits the rate",
            "use at least 1, e.g. 30 (or drop the flag)",
        )


def parse_resync_period(text: str) -> float:
    """--resync-period in seconds, at least MIN_RESYNC_PERIOD: each resync reads every Node left open."""
    seconds = parse_duration("--resync-period", text)
    if seconds < MIN_RESYNC_PERIOD:
        raise ConfigError(
            "--resync-period",
            f"{text!r} is below {MIN_RESYNC_PERIOD:g}s (every resync reads every Node left open)",
            "use e.g. 3m (the default) or at least 1s",
        )
    return seconds


def build_leader_election(
    enabled: bool,
    lease_duration: str,
    renew_deadline: str,
    retry_period: str,
    resource_name: str,
    resource_namespace: str,
    identity: str,
) -> LeaderElection:
    """The --leader-elect-* flags, by client-go's rules (checked only when leader election is on, as upstream does).

    Durations must always parse. With leader election on: the lease duration
    is a whole number of seconds (the Lease stores seconds) from 1s up to what
    an int32 holds; lease duration > renew deadline > 1.2 x retry period; the
    retry period is at least MIN_RETRY_PERIOD; the Lease's namespace is a DNS
    label and its name a DNS subdomain.
    """
    durations = {
        "--leader-elect-lease-duration": parse_duration("--leader-elect-lease-duration", lease_duration),
        "--leader-elect-renew-deadline": parse_duration("--leader-elect-renew-deadline", renew_deadline),
        "--leader-elect-retry-period": parse_duration("--leader-elect-retry-period", retry_period),
    }
    lease, renew, retry = durations.values()
    election = LeaderElection(
        enabled=enabled,
        lease_duration=lease,
        renew_deadline=renew,
        retry_period=retry,
        resource_name=resource_name,
        resource_namespace=resource_namespace,
        identity=identity,
    )
    if not enabled:
        return election
    example = "e.g. --leader-elect-lease-duration=15s --leader-elect-renew-deadline=10s --leader-elect-retry-period=2s"
    if lease < 1 or lease != int(lease):
        raise ConfigError(
            "--leader-elect-lease-duration",
            f"{lease_duration!r} is not a whole number of seconds of at least 1s (a Lease stores whole seconds)",
            "use e.g. 15s",
        )
    if lease > MAX_LEASE_DURATION_SECONDS:
        raise ConfigError(
            "--leader-elect-lease-duration",
            f"{lease_duration!r} is longer than a Lease can hold ({MAX_LEASE_DURATION_SECONDS}s)",
            "use e.g. 15s",
        )
    if retry < MIN_RETRY_PERIOD:
        raise ConfigError(
            "--leader-elect-retry-period",
            f"{retry_period!r} is below {MIN_RETRY_PERIOD:g}s (every retry is a request to the API server)",
            example,
        )
    if not renew < lease:
        raise ConfigError(
            "--leader-elect-renew-deadline",
            f"{renew_deadline!r} is not shorter than --leader-elect-lease-duration={lease_duration}",
            example,
        )
    if not renew > LEADER_ELECTION_JITTER_FACTOR * retry:
        raise ConfigError(
            "--leader-elect-renew-deadline",
            f"{renew_deadline!r} is not above {LEADER_ELECTION_JITTER_FACTOR} x --leader-elect-retry-period={retry_period}"
            " (client-go's rule: retries are jittered by up to 20%)",
            example,
        )
    if not is_dns_label(resource_namespace):
        raise ConfigError(
            "--leader-elect-resource-namespace",
            f"{resource_namespace!r} is not a namespace name (an RFC 1123 label)",
            "use lower-case letters, digits and '-', at most 63, e.g. kube-system",
        )
    if not is_dns_subdomain(resource_name):
        raise ConfigError(
            "--leader-elect-resource-name",
            f"{resource_name!r} is not a Lease name (an RFC 1123 subdomain)",
            "use lower-case letters, digits, '-' and '.', at most 253, e.g. nodeipam",
        )
    return election


_UNEXPANDED_VARIABLE = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_HOST_LABEL = re.compile(r"[a-z0-9_]([-a-z0-9_]*[a-z0-9_])?", re.IGNORECASE)


def is_dns_label(text: str) -> bool:
    """An RFC 1123 label as Kubernetes checks it (namespace names)."""
    return len(text) <= 63 and _DNS_LABEL.fullmatch(text) is not None


def is_dns_subdomain(text: str) -> bool:
    """An RFC 1123 subdomain as Kubernetes checks it (most object names)."""
    return 0 < len(text) <= 253 and all(_DNS_LABEL.fullmatch(label) for label in text.split("."))


def _host_problem(host: str) -> str | None:
    """Why `host` (an IP address or a host name, IPv6 in brackets) cannot be one, or None."""
    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            return f"{host} is not an IPv6 address"
        return None
    if ":" in host:
        return f"{host} is an IPv6 address without brackets" if _is_ipv6(host) else f"{host} is not a host"
    if re.fullmatch(r"[\d.]+", host):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            return f"{host} is not an IPv4 address"
        return None
    labels = host.removesuffix(".").split(".")
    if len(host) > 253 or not all(len(label) <= 63 and _HOST_LABEL.fullmatch(label) for label in labels):
        return f"{host!r} is not a host name"
    return None


def _is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def check_master(master: str | None) -> None:
    """--master: an http(s) URL of the API server, or host[:port] (https is assumed), as client-go takes it."""
    if not master:
        return
    url = master if "://" in master else "https://" + master
    fix = "write it like https://10.0.0.1:6443, https://[fd00::1]:6443 or https://api.example.com"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number from 0 to 65535
    except ValueError as error:
        bare_ipv6 = _is_ipv6(url.partition("://")[2].rstrip("/"))
        problem = "is an IPv6 address without brackets" if bare_ipv6 else f"is not a URL ({error})"
        raise ConfigError("--master", f"{master!r} {problem}", fix) from None
    if parts.scheme not in ("http", "https"):
        raise ConfigError("--master", f"{master!r} has scheme {parts.scheme!r}", f"use https (or http); {fix}")
    if not parts.hostname:
        raise ConfigError("--master", f"{master!r} has no host", fix)
    if parts.username is not None or parts.query or parts.fragment:
        raise ConfigError(
            "--master", f"{master!r} has a user, query or fragment", f"give only scheme, host, port and path; {fix}"
        )
    # urlsplit has already checked an address in brackets; hostname drops the brackets.
    host_problem = None if ":" in parts.hostname else _host_problem(parts.hostname)
    if host_problem:
        raise ConfigError("--master", f"{master!r}: {host_problem}", fix)


def check_bind_address(flag: str, address: str) -> None:
    """host:port to listen on (host: an IP address, [IPv6], a name, or empty for all); "0" or "" turns it off."""
    if address in ("", "0"):
        return
    fix = "write it as host:port, :port, [::]:port, or 0 to turn it off (e.g. 127.0.0.1:9254)"
    unexpanded = _UNEXPANDED_VARIABLE.search(address)
    if unexpanded:  # the kubelet leaves $(NAME) as it is when the container has no such env variable
        raise ConfigError(
            flag,
            f"{address!r} holds {unexpanded.group(0)}, which was not expanded",
            f"give the container the env variable {unexpanded.group(1)} (the chart's metrics.bindPodIP sets POD_IP"
            " from the downward API, status.podIP), or write an address, e.g. 10.0.0.5:9254",
        )
    host, colon, port = address.rpartition(":")
    if not colon:
        raise ConfigError(flag, f"{address!r} has no port", fix)
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(flag, f"port {port!r} of {address!r} is not a number from 0 to 65535", fix)
    problem = _host_problem(host) if host else None
    if problem:
        raise ConfigError(flag, f"{address!r}: {problem}", fix)


def split_bind_address(address: str) -> tuple[str, int] | None:
    """A bind address that `check_bind_address` passed -> (host, port); None for "0" or "", which turn it off.

    The brackets of an IPv6 host go; an empty host is 0.0.0.0, as
    kube-controller-manager reads it. One home for the split, for the
    listen check at start (cli.py) and the server that then listens.
    """
    if address in ("", "0"):
        return None
    host, _, port = address.rpartition(":")
    return host.strip("[]") or "0.0.0.0", int(port)


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
        shortest, longest = node_mask_bounds(cidr)
        if mask < shortest:
            raise ConfigError(
                flag,
                f"node mask size {mask} is shorter than the cluster CIDR prefix /{cidr.prefixlen} of {cidr}",
                f"use a mask of at least {cidr.prefixlen} or a larger --cluster-cidr",
            )
        if mask > longest:
            raise ConfigError(flag, f"node mask size {mask} is longer than an IPv{cidr.version} address", "use a smaller mask")
        ranges.append(FamilyRange(cidr, mask))
    return tuple(ranges)


def build_service_cidrs(service_cluster_ip_range: str | None) -> tuple[netaddr.IPNetwork, ...]:
    if not service_cluster_ip_range:
        return ()
    return tuple(_parse_cidr_list("--service-cluster-ip-range", service_cluster_ip_range, MAX_SERVICE_CIDRS))


#: kube-controller-manager's default --kube-api-burst, for a --kube-api-qps given alone.
KCM_KUBE_API_BURST = 30


def kube_api_burst(qps: float, burst: int | None) -> int:
    """The burst to use: the one given; for a rate alone kube-controller-manager's 30 (the rate, if higher), so that
    a pasted --kube-api-qps=20 behaves as it did there, not as bursts of 1; 0 (none) without a rate."""
    if burst is not None:
        return burst
    return max(KCM_KUBE_API_BURST, math.ceil(qps)) if qps > 0 else 0


def check_allocator_type(allocator_type: str) -> None:
    """--cidr-allocator-type: nodeipam is kube-controller-manager's RangeAllocator; any other would allocate otherwise."""
    if allocator_type == SUPPORTED_ALLOCATOR_TYPE:
        return
    raise ConfigError(
        "--cidr-allocator-type",
        f"{allocator_type!r} is not supported: nodeipam allocates as {SUPPORTED_ALLOCATOR_TYPE} does, from --cluster-cidr,"
        " and never takes ranges from a cloud provider",
        f"use {SUPPORTED_ALLOCATOR_TYPE} (or drop the flag), or leave allocation to kube-controller-manager or the cloud"
        " controller manager",
    )
