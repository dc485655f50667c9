"""Allocation from NodeCIDRPools against the real API server, with the chart's CRD: pools created, grown, drained,
deleted and refused while the controller runs; a restart; dual-stack atomicity; labels changed after allocation."""

from __future__ import annotations

import dataclasses
import ipaddress
import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import yaml

from localcluster.cluster import LocalControlPlane
from localcluster.nodebodies import realistic_node
from tests.conftest import wait_for
from tests.integration.conftest import Cluster, ControllerProcess, no_duplicates

pytestmark = pytest.mark.integration

Start = Callable[..., ControllerProcess]
SERVED_WITHIN = 15.0  # seconds: "within seconds, no restart"
FINALIZER = "nodeipam.io/ranges-in-use"


@dataclasses.dataclass(frozen=True)
class Family:
    """Ranges of one IP family: the flags' range and two pool CIDRs, each of one node range unless said otherwise."""

    key: str  # "ipv4" or "ipv6" in a pool's spec
    mask: int
    default: str
    first: str
    second: str
    wide: str  # two node ranges

    def flags(self) -> list[str]:
        return [f"--cluster-cidr={self.default}", f"--node-cidr-mask-size={self.mask}", "--resync-period=10m"]

    def family(self, *cidrs: str, draining: tuple[str, ...] = ()) -> dict[str, Any]:
        return {"nodeMaskSize": self.mask, "cidrs": [{"cidr": c, **({"draining": True} if c in draining else {})} for c in cidrs]}


V4 = Family("ipv4", 24, "10.244.0.0/24", "10.245.0.0/24", "10.245.1.0/24", "10.246.0.0/23")
V6 = Family("ipv6", 64, "fd00:10::/64", "fd00:20::/64", "fd00:20:0:1::/64", "fd00:30::/63")
FAMILIES = [pytest.param(V4, id="ipv4"), pytest.param(V6, id="ipv6")]
GPU = {"nodeSelectorTerms": [{"matchExpressions": [{"key": "gpu", "operator": "In", "values": ["true"]}]}]}


class Pools:
    """NodeCIDRPools through kubectl, as an administrator would handle them."""

    def __init__(self, plane: LocalControlPlane) -> None:
        self.plane = plane

    def apply(self, name: str, spec: dict[str, Any]) -> None:
        body = {"apiVersion": "nodeipam.io/v1alpha1", "kind": "NodeCIDRPool", "metadata": {"name": name}, "spec": spec}
        self.plane.kubectl("apply", "-f", "-", input_text=yaml.safe_dump(body))

    def get(self, name: str) -> dict[str, Any] | None:
        out = self.plane.kubectl("get", "nodecidrpool", name, "-o", "json", "--ignore-not-found")
        return json.loads(out) if out.strip() else None

    def status(self, name: str) -> dict[str, Any]:
        return (self.get(name) or {}).get("status") or {}

    def condition(self, name: str, kind: str) -> dict[str, Any]:
        return next((c for c in self.status(name).get("conditions") or () if c["type"] == kind), {})

    def wait_status(self, name: str, check: Callable[[dict[str, Any]], bool], what: str) -> dict[str, Any]:
        """The pool's status once `check` holds for it."""

        def ready() -> dict[str, Any] | None:
            status = self.status(name)
            return status if status and check(status) else None

        return wait_for(ready, timeout=30, what=what)

    def wait_finalizer(self, name: str) -> None:
        wait_for(lambda: FINALIZER in ((self.get(name) or {}).get("metadata") or {}).get("finalizers", ()), what="finalizer")

    def events(self, name: str) -> list[str]:
        out = self.plane.kubectl(
            "get", "events", "-n", "default", "--field-selector", f"involvedObject.name={name}", "-o", "json"
        )
        return [item["reason"] for item in json.loads(out)["items"] if item["involvedObject"]["kind"] == "NodeCIDRPool"]

    def delete_all(self) -> None:
        """Every pool gone, finalizers included: the controller of a test may have stopped before it could let go."""
        for name in self.plane.kubectl("get", "nodecidrpools", "-o", "name").split():
            self.plane.kubectl("patch", name, "--type=merge", "-p", '{"metadata":{"finalizers":null}}', check=False)
        self.plane.kubectl("delete", "nodecidrpools", "--all", "--wait=true", "--timeout=60s")


@pytest.fixture
def pools(control_plane: LocalControlPlane, pool_crd: str) -> Iterator[Pools]:
    the_pools = Pools(control_plane)
    the_pools.delete_all()
    yield the_pools
    the_pools.delete_all()


def create(cluster: Cluster, name: str, index: int, pod_cidrs: tuple[str, ...] = (), **labels: str) -> None:
    body = realistic_node(name, index, pod_cidrs)
    body["metadata"]["labels"].update(labels)
    cluster.core.create_node(body)


def inside(cidr: str, container: str) -> bool:
    inner, outer = ipaddress.ip_network(cidr), ipaddress.ip_network(container)
    return inner.version == outer.version and inner.subnet_of(outer)  # type: ignore[arg-type]


@pytest.mark.parametrize("family", FAMILIES)
def test_a_pool_created_at_runtime_serves_a_waiting_node(
    cluster: Cluster, pools: Pools, start_controller: Start, family: Family
) -> None:
    start_controller(*family.flags())
    create(cluster, "first", 0)
    cluster.wait_assigned(["first"])
    create(cluster, "waiting", 1)
    cluster.wait_event("waiting", "CIDRNotAvailable")
    pools.apply("more", {family.key: family.family(family.first)})
    (cidr,) = cluster.wait_assigned(["waiting"], timeout=SERVED_WITHIN)["waiting"]
    assert inside(cidr, family.first)
    status = pools.wait_status("more", lambda s: s.get("nodes") == 1, "the pool's status to count its Node")
    assert status["summary"] == "1/1 (100%)"
    pools.wait_finalizer("more")


@pytest.mark.parametrize("family", FAMILIES)
def test_a_cidr_appended_to_an_exhausted_pool_serves_the_waiting_node(
    cluster: Cluster, pools: Pools, start_controller: Start, family: Family
) -> None:
    start_controller(*family.flags())
    pools.apply("gpu", {"priority": 10, "nodeSelector": GPU, family.key: family.family(family.first)})
    pools.wait_status("gpu", lambda s: "summary" in s, "the pool's first status")
    create(cluster, "plain", 0)
    create(cluster, "gpu-1", 1, gpu="true")
    cidrs = cluster.wait_assigned(["plain", "gpu-1"])
    assert inside(cidrs["gpu-1"][0], family.first) and inside(cidrs["plain"][0], family.default)
    create(cluster, "gpu-2", 2, gpu="true")
    event = cluster.wait_event("gpu-2", "CIDRNotAvailable")
    assert "gpu" in event.message and "(default)" in event.message, "the pools tried are named"
    pools.wait_status("gpu", lambda s: pools.condition("gpu", "Exhausted").get("status") == "True", "Exhausted")
    pools.apply("gpu", {"priority": 10, "nodeSelector": GPU, family.key: family.family(family.first, family.second)})
    (cidr,) = cluster.wait_assigned(["gpu-2"], timeout=SERVED_WITHIN)["gpu-2"]
    assert inside(cidr, family.second)
    no_duplicates(cluster.pod_cidrs())


@pytest.mark.parametrize("family", FAMILIES)
def test_a_draining_cidr_takes_no_new_node_and_names_who_holds_it(
    cluster: Cluster, pools: Pools, start_controller: Start, family: Family
) -> None:
    held = str(next(ipaddress.ip_network(family.first).subnets(new_prefix=family.mask)))
    create(cluster, "old", 0, (held,))
    spec = {"priority": 1, family.key: family.family(family.first, family.wide)}
    pools.apply("p", spec)
    start_controller(*family.flags())
    pools.wait_status("p", lambda s: s.get("nodes") == 1, "the pool to count the Node in it")
    pools.apply("p", {"priority": 1, family.key: family.family(family.first, family.wide, draining=(family.first,))})
    status = pools.wait_status("p", lambda s: s.get("blockingNodes") == ["old"], "blockingNodes")
    assert pools.condition("p", "Draining")["status"] == "True"
    create(cluster, "new", 1)
    (cidr,) = cluster.wait_assigned(["new"])["new"]
    assert inside(cidr, family.wide), "not from the draining CIDR"
    status = pools.wait_status("p", lambda s: s.get("nodes") == 2, "both Nodes counted")
    assert status[family.key]["free"] == 1, "a draining CIDR has nothing free"


@pytest.mark.parametrize("family", FAMILIES)
def test_a_deleted_pool_waits_for_its_last_node(cluster: Cluster, pools: Pools, start_controller: Start, family: Family) -> None:
    start_controller(*family.flags())
    pools.apply("p", {"priority": 1, family.key: family.family(family.wide)})
    create(cluster, "a", 0)
    create(cluster, "b", 1)
    cidrs = cluster.wait_assigned(["a", "b"])
    assert all(inside(cidrs[name][0], family.wide) for name in ("a", "b"))
    pools.wait_finalizer("p")
    pools.plane.kubectl("delete", "nodecidrpool", "p", "--wait=false")
    pools.wait_status("p", lambda s: sorted(s.get("blockingNodes") or ()) == ["a", "b"], "blockingNodes a, b")
    assert pools.condition("p", "Draining")["status"] == "True"
    assert pools.condition("p", "Ready")["status"] == "False"
    create(cluster, "c", 2)
    (cidr,) = cluster.wait_assigned(["c"])["c"]
    assert inside(cidr, family.default), "a pool being deleted takes no new Node"
    cluster.delete_node("a")
    pools.wait_status("p", lambda s: s.get("blockingNodes") == ["b"], "only b blocking")
    assert pools.get("p") is not None
    cluster.delete_node("b")
    wait_for(lambda: pools.get("p") is None, timeout=30, what="the pool to be gone once no Node holds a range in it")


@pytest.mark.parametrize("family", FAMILIES)
def test_a_pool_overlapping_an_earlier_one_is_refused(
    cluster: Cluster, pools: Pools, start_controller: Start, family: Family
) -> None:
    start_controller(*family.flags())
    pools.apply("earlier", {family.key: family.family(family.wide)})
    pools.wait_status("earlier", lambda s: "summary" in s, "the earlier pool's status")
    # The later pool has a CIDR of its own beside the clashing one: refused, it hands out neither.
    pools.apply("later", {"priority": 100, family.key: family.family(family.wide, family.first)})
    pools.wait_status("later", lambda s: pools.condition("later", "Overlapping").get("status") == "True", "Overlapping")
    assert pools.condition("later", "Ready")["status"] == "False"
    wait_for(lambda: "PoolOverlapping" in pools.events("later"), what="a PoolOverlapping event")
    names = [f"n{index}" for index in range(4)]  # the earlier pool's two ranges, the flags' one, and one more
    for index, name in enumerate(names):
        create(cluster, name, index)
    wait_for(lambda: sum(1 for cidrs in cluster.pod_cidrs().values() if cidrs) == 3, what="three Nodes served")
    waiting = next(name for name, cidrs in cluster.pod_cidrs().items() if not cidrs)
    cluster.wait_event(waiting, "CIDRNotAvailable")
    held = [cidr for cidrs in cluster.pod_cidrs().values() for cidr in cidrs]
    assert sum(inside(cidr, family.wide) for cidr in held) == 2 and not any(inside(cidr, family.first) for cidr in held)
    pools.wait_status("earlier", lambda s: s.get("nodes") == 2, "the earlier pool to hold two Nodes")
    assert pools.status("later").get("nodes") == 0


@pytest.mark.parametrize("family", FAMILIES)
def test_a_restart_with_several_pools_rebuilds_identically(
    cluster: Cluster, pools: Pools, start_controller: Start, family: Family
) -> None:
    pools.apply("gpu", {"priority": 10, "nodeSelector": GPU, family.key: family.family(family.wide)})
    pools.apply("other", {"priority": 5, family.key: family.family(family.first)})
    first = start_controller(*family.flags())
    create(cluster, "g0", 0, gpu="true")
    create(cluster, "o0", 1)
    create(cluster, "d0", 2)
    before = cluster.wait_assigned(["g0", "o0", "d0"])
    statuses = {
        name: pools.wait_status(name, lambda s: s.get("nodes") == 1, f"{name} counts one Node") for name in ("gpu", "other")
    }
    assert first.stop() == 0
    start_controller(*family.flags())
    create(cluster, "g1", 3, gpu="true")
    after = cluster.wait_assigned(["g1"])
    assert {name: after[name] for name in before} == before
    assert inside(after["g1"][0], family.wide) and after["g1"] != before["g0"]
    gpu = pools.wait_status("gpu", lambda s: s.get("nodes") == 2, "gpu counts both")
    assert gpu[family.key]["free"] == 0
    assert pools.status("other")[family.key] == statuses["other"][family.key]
    create(cluster, "late", 4)
    cluster.wait_event("late", "CIDRNotAvailable")
    no_duplicates(cluster.pod_cidrs())


@pytest.mark.parametrize(
    ("flags", "full"),
    [
        pytest.param(("10.244.0.0/23", "fd00:10::/63"), "ipv4", id="ipv4-exhausted"),
        pytest.param(("fd00:10::/63", "10.244.0.0/23"), "ipv6", id="ipv6-exhausted"),
    ],
)
def test_a_dual_stack_pool_with_one_family_full_takes_nothing_from_the_other(
    cluster: Cluster, pools: Pools, start_controller: Start, flags: tuple[str, str], full: str
) -> None:
    start_controller(f"--cluster-cidr={','.join(flags)}", "--node-cidr-mask-size-ipv4=24", "--node-cidr-mask-size-ipv6=64")
    small = {"ipv4": V4.family(V4.first), "ipv6": V6.family(V6.first)}  # one range each
    large = {"ipv4": V4.family(V4.wide), "ipv6": V6.family(V6.wide)}  # two each
    spec = {"priority": 1, **large, full: small[full]}
    pools.apply("dual", spec)
    pools.wait_status("dual", lambda s: "summary" in s, "the pool's first status")
    create(cluster, "a", 0)
    create(cluster, "b", 1)
    cidrs = cluster.wait_assigned(["a", "b"])
    in_pool = [name for name in ("a", "b") if any(inside(c, V4.first) or inside(c, V6.first) for c in cidrs[name])]
    assert len(in_pool) == 1, cidrs
    (other,) = {"a", "b"} - set(in_pool)
    assert not any(inside(c, V4.wide) or inside(c, V6.wide) for c in cidrs[other]), "nothing from the family with room"
    status = pools.wait_status("dual", lambda s: s.get("nodes") == 1, "the pool to count one Node")
    free_family = "ipv6" if full == "ipv4" else "ipv4"
    assert status[free_family]["allocated"] == 1 and status[full]["free"] == 0


@pytest.mark.parametrize("family", FAMILIES)
def test_labels_changed_after_allocation_change_nothing(
    cluster: Cluster, pools: Pools, start_controller: Start, family: Family
) -> None:
    start_controller(*family.flags())
    pools.apply("gpu", {"priority": 10, "nodeSelector": GPU, family.key: family.family(family.wide)})
    pools.wait_status("gpu", lambda s: "summary" in s, "the pool's first status")
    create(cluster, "n", 0)
    (cidr,) = cluster.wait_assigned(["n"])["n"]
    assert inside(cidr, family.default)
    cluster.core.patch_node("n", {"metadata": {"labels": {"gpu": "true"}}})
    create(cluster, "later", 1, gpu="true")  # handled after the relabelling: by then that was seen too
    cidrs = cluster.wait_assigned(["later"])
    assert cidrs["n"] == [cidr]
    pools.wait_status("gpu", lambda s: s.get("nodes") == 1, "gpu counts only the Node created in it")
    assert (pools.status("gpu").get(family.key) or {}).get("allocated") == 1
