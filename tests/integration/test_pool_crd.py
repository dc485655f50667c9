"""The NodeCIDRPool CRD from the chart's crds/ against the real API server: what CEL refuses, with its message;
and `nodeipam status` reading pools."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from typing import Any

import netaddr
import pytest
import yaml

from controller.config import FamilyRange
from controller.model import NodeInfo
from controller.nodes import NodeAllocations
from controller.pools import PoolSpec
from controller.poolstatus import status_body
from localcluster.cluster import LocalControlPlane
from tests.integration.conftest import Cluster, run_cli

pytestmark = pytest.mark.integration

V4 = {"nodeMaskSize": 24, "cidrs": [{"cidr": "10.245.0.0/16"}]}
V6 = {"nodeMaskSize": 64, "cidrs": [{"cidr": "fd00:20::/56"}]}


def pool(name: str, spec: dict[str, Any]) -> str:
    return yaml.safe_dump(
        {"apiVersion": "nodeipam.io/v1alpha1", "kind": "NodeCIDRPool", "metadata": {"name": name}, "spec": spec}
    )


def apply(plane: LocalControlPlane, name: str, spec: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(plane.binaries["kubectl"]), f"--kubeconfig={plane.kubeconfig}", "apply", "-f", "-"],
        input=pool(name, spec),
        text=True,
        capture_output=True,
        timeout=60,
    )


@pytest.fixture
def plane(control_plane: LocalControlPlane, pool_crd: str) -> Iterator[LocalControlPlane]:
    yield control_plane
    control_plane.kubectl("delete", "nodecidrpools", "--all", "--wait=false")


def selector(*expressions: dict[str, Any]) -> dict[str, Any]:
    return {"nodeSelectorTerms": [{"matchExpressions": list(expressions)}]}


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"priority": 1}, "a pool needs ipv4, ipv6 or both"),
        ({"ipv4": {"nodeMaskSize": 24, "cidrs": [{"cidr": "10.245.0.0"}]}}, "cidr must be a CIDR such as 10.245.0.0/16"),
        ({"ipv6": {"nodeMaskSize": 64, "cidrs": [{"cidr": "fd00:20::"}]}}, "cidr must be a CIDR such as fd00:20::/56"),
        ({"ipv4": {"nodeMaskSize": 24, "cidrs": [{"cidr": "fd00:20::/56"}]}}, "cidr must be an IPv4 CIDR"),
        ({"ipv6": {"nodeMaskSize": 64, "cidrs": [{"cidr": "10.245.0.0/16"}]}}, "cidr must be an IPv6 CIDR"),
        ({"ipv4": {"nodeMaskSize": 24, "cidrs": [{"cidr": "10.245.1.0/16"}]}}, "cidr must be in canonical form"),
        ({"ipv6": {"nodeMaskSize": 64, "cidrs": [{"cidr": "fd00:20::1/56"}]}}, "cidr must be in canonical form"),
        ({"ipv4": {"nodeMaskSize": 16, "cidrs": [{"cidr": "10.245.0.0/20"}]}}, "nodeMaskSize must be at least the prefix length"),
        ({"ipv6": {"nodeMaskSize": 48, "cidrs": [{"cidr": "fd00:20::/56"}]}}, "nodeMaskSize must be at least the prefix length"),
        (
            {"ipv4": {"nodeMaskSize": 24, "cidrs": [{"cidr": "10.245.0.0/16"}, {"cidr": "10.245.128.0/17"}]}},
            "the CIDRs of one pool must not overlap",
        ),
        (
            {"ipv6": {"nodeMaskSize": 64, "cidrs": [{"cidr": "fd00:20::/48"}, {"cidr": "fd00:20:0:100::/56"}]}},
            "the CIDRs of one pool must not overlap",
        ),
        ({"ipv4": {"nodeMaskSize": 24, "cidrs": [{"cidr": "10.245.0.0/16"}, {"cidr": "10.245.0.0/16"}]}}, "Duplicate value"),
        ({"ipv4": V4, "reserved": ["10.9.0.0/24"]}, "every reserved range must lie inside one of the pool's CIDRs"),
        ({"ipv6": V6, "reserved": ["fd00:99::/64"]}, "every reserved range must lie inside one of the pool's CIDRs"),
        ({"ipv4": V4, "reserved": ["fd00:20::/64"]}, "every reserved range must lie inside one of the pool's CIDRs"),
        ({"ipv4": V4, "reserved": ["10.245.0.0"]}, "reserved entries must be CIDRs"),
        ({"ipv4": V4, "nodeSelector": selector({"key": "gpu", "operator": "In"})}, "In and NotIn need at least one value"),
        (
            {"ipv4": V4, "nodeSelector": selector({"key": "gpu", "operator": "NotIn", "values": []})},
            "In and NotIn need at least one value",
        ),
        (
            {"ipv4": V4, "nodeSelector": selector({"key": "gpu", "operator": "Exists", "values": ["x"]})},
            "Exists and DoesNotExist take no values",
        ),
        (
            {"ipv6": V6, "nodeSelector": selector({"key": "gpu", "operator": "DoesNotExist", "values": ["x"]})},
            "Exists and DoesNotExist take no values",
        ),
        (
            {"ipv6": V6, "nodeSelector": selector({"key": "cores", "operator": "Gt", "values": ["many"]})},
            "Gt and Lt take exactly one integer value",
        ),
        (
            {"ipv6": V6, "nodeSelector": selector({"key": "cores", "operator": "Lt", "values": ["1", "2"]})},
            "Gt and Lt take exactly one integer value",
        ),
        ({"ipv4": V4, "nodeSelector": selector({"key": "gpu", "operator": "Near", "values": ["x"]})}, "Unsupported value"),
        (
            {
                "ipv4": V4,
                "nodeSelector": {
                    "nodeSelectorTerms": [{"matchFields": [{"key": "metadata.uid", "operator": "In", "values": ["x"]}]}]
                },
            },
            "Unsupported value",
        ),
    ],
)
def test_bad_pools_are_refused_with_the_reason(plane: LocalControlPlane, spec: dict[str, Any], message: str) -> None:
    result = apply(plane, "bad", spec)
    assert result.returncode != 0, result.stdout
    assert message in result.stderr, result.stderr


def test_a_good_pool_is_accepted_with_defaults(plane: LocalControlPlane) -> None:
    spec = {
        "ipv4": {"nodeMaskSize": 24, "cidrs": [{"cidr": "10.245.0.0/16"}, {"cidr": "10.246.0.0/16", "draining": True}]},
        "ipv6": V6,
        "reserved": ["10.245.0.0/24", "fd00:20::/64"],
        "nodeSelector": selector(
            {"key": "gpu", "operator": "In", "values": ["true"]}, {"key": "cores", "operator": "Gt", "values": ["8"]}
        ),
    }
    result = apply(plane, "good", spec)
    assert result.returncode == 0, result.stderr
    stored = yaml.safe_load(plane.kubectl("get", "nodecidrpool", "good", "-o", "yaml"))["spec"]
    assert stored["priority"] == 0 and stored["disabled"] is False
    assert [entry["draining"] for entry in stored["ipv4"]["cidrs"]] == [False, True]
    header = plane.kubectl("get", "nodecidrpools", "-o", "wide").splitlines()[0].split()
    assert header == ["NAME", "IPV4", "IPV6", "MASK", "USED", "READY", "AGE", "PRIORITY", "SELECTOR"]


def with_cidrs(family: str, mask: int, *cidrs: tuple[str, bool]) -> dict[str, Any]:
    return {family: {"nodeMaskSize": mask, "cidrs": [{"cidr": cidr, "draining": draining} for cidr, draining in cidrs]}}


@pytest.mark.parametrize(
    ("before", "after", "message"),
    [
        (
            with_cidrs("ipv4", 24, ("10.245.0.0/16", False)),
            with_cidrs("ipv4", 25, ("10.245.0.0/16", False)),
            "nodeMaskSize is immutable",
        ),
        (
            with_cidrs("ipv6", 64, ("fd00:20::/56", False)),
            with_cidrs("ipv6", 80, ("fd00:20::/56", False)),
            "nodeMaskSize is immutable",
        ),
        (
            with_cidrs("ipv4", 24, ("10.245.0.0/16", False), ("10.246.0.0/16", False)),
            with_cidrs("ipv4", 24, ("10.245.0.0/16", False)),
            "a CIDR can be removed only after it is set draining",
        ),
        (
            with_cidrs("ipv6", 64, ("fd00:20::/56", False), ("fd00:21::/56", False)),
            with_cidrs("ipv6", 64, ("fd00:21::/56", False)),
            "a CIDR can be removed only after it is set draining",
        ),
        (
            with_cidrs("ipv4", 24, ("10.245.0.0/16", False)),
            with_cidrs("ipv6", 64, ("fd00:20::/56", False)),
            "the families of a pool (ipv4, ipv6) cannot change",
        ),
        (
            with_cidrs("ipv6", 64, ("fd00:20::/56", False)),
            {**with_cidrs("ipv6", 64, ("fd00:20::/56", False)), **with_cidrs("ipv4", 24, ("10.245.0.0/16", False))},
            "the families of a pool (ipv4, ipv6) cannot change",
        ),
        # A rule skipped where its value did not change (a status write) still checks a value that did.
        (
            with_cidrs("ipv4", 24, ("10.245.0.0/16", False)),
            with_cidrs("ipv4", 24, ("10.245.0.0/16", False), ("10.245.128.0/17", False)),
            "the CIDRs of one pool must not overlap",
        ),
        (
            with_cidrs("ipv6", 64, ("fd00:20::/56", False)),
            with_cidrs("ipv6", 64, ("fd00:20::/56", False), ("fd00:20::/60", False)),
            "the CIDRs of one pool must not overlap",
        ),
        (
            with_cidrs("ipv4", 24, ("10.245.0.0/16", False)),
            with_cidrs("ipv4", 24, ("10.245.0.0/16", False), ("10.246.1.0/16", False)),
            "cidr must be in canonical form",
        ),
        (
            with_cidrs("ipv6", 64, ("fd00:20::/56", False)),
            with_cidrs("ipv6", 64, ("fd00:20::/56", False), ("fd00:30::/48", False), ("fd00:40::/80", False)),
            "nodeMaskSize must be at least the prefix length of every CIDR",
        ),
        (
            with_cidrs("ipv4", 24, ("10.245.0.0/16", False)),
            {**with_cidrs("ipv4", 24, ("10.245.0.0/16", False)), "reserved": ["10.9.0.0/24"]},
            "every reserved range must lie inside one of the pool's CIDRs",
        ),
    ],
)
def test_bad_changes_are_refused_with_the_reason(
    plane: LocalControlPlane, before: dict[str, Any], after: dict[str, Any], message: str
) -> None:
    assert apply(plane, "changing", before).returncode == 0
    result = apply(plane, "changing", after)
    assert result.returncode != 0, result.stdout
    assert message in result.stderr, result.stderr


@pytest.mark.parametrize(
    ("before", "after"),
    [
        # Appending a CIDR: a full pool grows.
        (
            with_cidrs("ipv4", 24, ("10.245.0.0/16", False)),
            with_cidrs("ipv4", 24, ("10.245.0.0/16", False), ("10.246.0.0/16", False)),
        ),
        (
            with_cidrs("ipv6", 64, ("fd00:20::/56", False)),
            with_cidrs("ipv6", 64, ("fd00:20::/56", False), ("fd00:21::/56", False)),
        ),
        # Draining one, then removing it.
        (
            with_cidrs("ipv4", 24, ("10.245.0.0/16", False), ("10.246.0.0/16", False)),
            with_cidrs("ipv4", 24, ("10.245.0.0/16", False), ("10.246.0.0/16", True)),
        ),
        (
            with_cidrs("ipv4", 24, ("10.245.0.0/16", False), ("10.246.0.0/16", True)),
            with_cidrs("ipv4", 24, ("10.245.0.0/16", False)),
        ),
        (
            with_cidrs("ipv6", 64, ("fd00:20::/56", True), ("fd00:21::/56", False)),
            with_cidrs("ipv6", 64, ("fd00:21::/56", False)),
        ),
    ],
)
def test_growing_and_draining_are_allowed(plane: LocalControlPlane, before: dict[str, Any], after: dict[str, Any]) -> None:
    assert apply(plane, "changing", before).returncode == 0
    result = apply(plane, "changing", after)
    assert result.returncode == 0, result.stderr


# -- nodeipam status with pools -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cluster_cidr", "mask", "pool_family", "in_pool", "in_draining", "in_default", "in_none"),
    [
        pytest.param(
            "10.244.0.0/22",
            24,
            {"ipv4": with_cidrs("ipv4", 24, ("10.245.0.0/23", False), ("10.246.0.0/24", True))["ipv4"]},
            "10.245.1.0/24",
            "10.246.0.0/24",
            "10.244.2.0/24",
            "10.99.0.0/24",
            id="ipv4",
        ),
        pytest.param(
            "fd00:10::/62",
            64,
            {"ipv6": with_cidrs("ipv6", 64, ("fd00:20::/63", False), ("fd00:21::/64", True))["ipv6"]},
            "fd00:20:0:1::/64",
            "fd00:21::/64",
            "fd00:10:0:2::/64",
            "fd00:99::/64",
            id="ipv6",
        ),
    ],
)
def test_status_shows_usage_per_pool_by_containment(
    plane: LocalControlPlane,
    cluster: Cluster,
    cluster_cidr: str,
    mask: int,
    pool_family: dict[str, Any],
    in_pool: str,
    in_draining: str,
    in_default: str,
    in_none: str,
) -> None:
    gpu = {**pool_family, "priority": 10, "nodeSelector": selector({"key": "gpu", "operator": "In", "values": ["true"]})}
    assert apply(plane, "gpu", gpu).returncode == 0
    # Labels play no part: the range decides which pool a Node's range counts for.
    for name, cidr in (("in-pool", in_pool), ("in-draining", in_draining), ("in-default", in_default), ("in-none", in_none)):
        cluster.create_nodes([name], (cidr,))
    result = run_cli(
        "status", f"--cluster-cidr={cluster_cidr}", f"--node-cidr-mask-size={mask}", "-o", "json", kubeconfig=plane.kubeconfig
    )
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    gpu_row, default_row = status["pools"]
    assert (gpu_row["name"], gpu_row["priority"], gpu_row["nodes"], gpu_row["summary"]) == ("gpu", 10, 2, "2/3 (66%)")
    assert gpu_row["selector"] == "gpu in (true)" and gpu_row["blocking_nodes"] == ["in-draining"]
    (family_row,) = gpu_row["families"]
    assert (family_row["capacity"], family_row["allocated"], family_row["free"]) == (3, 2, 1)
    assert family_row["cidrs"][1].endswith("(draining)")
    assert (default_row["name"], default_row["nodes"], default_row["summary"]) == ("(default)", 1, "1/4 (25%)")
    assert status["pool_problems"] == [f"node in-none: podCIDR {in_none} lies in no pool"]
    text = run_cli(
        "status", f"--cluster-cidr={cluster_cidr}", f"--node-cidr-mask-size={mask}", kubeconfig=plane.kubeconfig
    ).stdout
    assert "POOL" in text and "blocking: in-draining" in text and "2/3 (66%)" in text


@pytest.mark.parametrize(
    ("cluster_cidr", "mask", "pool_family", "in_pool", "in_none"),
    [
        pytest.param(
            "10.244.0.0/22", 24, with_cidrs("ipv4", 24, ("10.245.0.0/23", False)), "10.245.1.0/24", "10.99.0.0/24", id="ipv4"
        ),
        pytest.param(
            "fd00:10::/62", 64, with_cidrs("ipv6", 64, ("fd00:20::/63", False)), "fd00:20:0:1::/64", "fd00:99::/64", id="ipv6"
        ),
    ],
)
def test_check_accepts_ranges_in_pools_and_reports_the_rest(
    plane: LocalControlPlane,
    cluster: Cluster,
    cluster_cidr: str,
    mask: int,
    pool_family: dict[str, Any],
    in_pool: str,
    in_none: str,
) -> None:
    assert apply(plane, "gpu", pool_family).returncode == 0
    cluster.create_nodes(["in-pool"], (in_pool,))
    flags = (f"--cluster-cidr={cluster_cidr}", f"--node-cidr-mask-size={mask}")
    clean = run_cli("check", *flags, kubeconfig=plane.kubeconfig)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    cluster.create_nodes(["in-none"], (in_none,))
    dirty = run_cli("check", *flags, kubeconfig=plane.kubeconfig)
    assert dirty.returncode == 1
    assert f"node in-none: podCIDR {in_none} is outside every pool CIDR" in dirty.stdout
    assert "in-pool" not in dirty.stdout


@pytest.mark.parametrize(
    ("pool_family", "holdings", "row"),
    [
        pytest.param(
            with_cidrs("ipv4", 26, ("10.245.0.0/24", False), ("10.246.0.0/24", True)),
            [("a", "10.245.0.64/26"), ("b", "10.246.0.0/26")],
            {"IPV4": "10.245.0.0/24,10.246.0.0/24(draining)", "IPV6": "", "MASK": "/26", "USED": "2/8 (25%)"},
            id="ipv4",
        ),
        pytest.param(
            with_cidrs("ipv6", 64, ("fd00:20::/63", False)),
            [("a", "fd00:20::/64")],
            {"IPV4": "", "IPV6": "fd00:20::/63", "MASK": "/64", "USED": "1/2 (50%)"},
            id="ipv6",
        ),
    ],
)
def test_status_fits_the_schema_and_fills_the_columns(
    plane: LocalControlPlane, pool_family: dict[str, Any], holdings: list[tuple[str, str]], row: dict[str, str]
) -> None:
    spec = {**pool_family, "priority": 10, "nodeSelector": selector({"key": "gpu", "operator": "In", "values": ["true"]})}
    assert apply(plane, "gpu", spec).returncode == 0
    pool = PoolSpec.from_body(yaml.safe_load(plane.kubectl("get", "nodecidrpool", "gpu", "-o", "yaml")))
    allocations = NodeAllocations(
        [FamilyRange(netaddr.IPNetwork("10.244.0.0/16"), 24), FamilyRange(netaddr.IPNetwork("fd00:10::/56"), 64)], pools=[pool]
    )
    for node, cidr in holdings:
        allocations.observe(NodeInfo(node, f"uid-{node}", (cidr,)))
    usage = allocations.pool_usage.usage("gpu")
    assert usage is not None
    status = status_body(pool, usage, now="2026-11-28T10:00:00Z")
    plane.kubectl("patch", "nodecidrpool", "gpu", "--subresource=status", "--type=merge", "-p", json.dumps({"status": status}))
    stored = yaml.safe_load(plane.kubectl("get", "nodecidrpool", "gpu", "-o", "yaml"))["status"]
    assert stored == status  # nothing pruned: every field is in the schema
    shown = table(plane.kubectl("get", "nodecidrpools", "-o", "wide"))
    assert shown == [
        {"NAME": "gpu", **row, "READY": "True", "AGE": shown[0]["AGE"], "PRIORITY": "10", "SELECTOR": "gpu in (true)"}
    ]


def table(output: str) -> list[dict[str, str]]:
    """kubectl's table output as rows of header -> cell, cut at the header's column starts (cells may be empty)."""
    header, *lines = output.splitlines()
    starts = [match.start() for match in re.finditer(r"\S+", header)]
    names = header.split()
    bounds = [*starts[1:], None]
    return [{name: line[start:end].strip() for name, start, end in zip(names, starts, bounds, strict=True)} for line in lines]


@pytest.mark.parametrize(
    ("pool_family", "capacity"),
    [
        pytest.param(with_cidrs("ipv4", 32, ("10.0.0.0/8", False)), 2**24, id="ipv4-every-address"),
        pytest.param(with_cidrs("ipv6", 112, ("fd00:30::/48", False)), 2**63 - 1, id="ipv6-past-int64"),
    ],
)
def test_the_status_of_a_pool_with_more_ranges_than_int64_counts_is_accepted(
    plane: LocalControlPlane, pool_family: dict[str, Any], capacity: int
) -> None:
    """fd00:30::/48 of /112s holds 2^64 ranges: past what the schema's int64 counts hold; the status caps them."""
    assert apply(plane, "huge", pool_family).returncode == 0
    pool = PoolSpec.from_body(yaml.safe_load(plane.kubectl("get", "nodecidrpool", "huge", "-o", "yaml")))
    allocations = NodeAllocations([FamilyRange(netaddr.IPNetwork("10.244.0.0/16"), 24)], pools=[pool])
    usage = allocations.pool_usage.usage("huge")
    assert usage is not None
    status = status_body(pool, usage, now="2026-11-28T10:00:00Z")
    plane.kubectl("patch", "nodecidrpool", "huge", "--subresource=status", "--type=merge", "-p", json.dumps({"status": status}))
    stored = yaml.safe_load(plane.kubectl("get", "nodecidrpool", "huge", "-o", "yaml"))["status"]
    (key,) = (key for key in ("ipv4", "ipv6") if key in stored)
    assert stored[key]["capacity"] == stored[key]["free"] == stored[key]["perCIDR"][0]["capacity"] == capacity
