"""The NodeCIDRPool CRD from the chart's crds/ against the real API server: what CEL refuses, with its message."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from controller.localcluster.cluster import LocalControlPlane

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
