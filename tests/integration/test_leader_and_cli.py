"""Leader election between two real processes, and the status/check commands."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest

from localcluster.nodebodies import realistic_node
from tests.conftest import wait_for
from tests.faultproxy import Action, Rule
from tests.integration.conftest import LEASE_SECONDS, Cluster, ControllerProcess, Proxied, leader_flags, no_duplicates, run_cli
from tests.integration.test_faults import NODE_PATCH, Registrations, patched_by

pytestmark = pytest.mark.integration

Start = Callable[..., ControllerProcess]

CLUSTER_FLAG = "--cluster-cidr=10.244.0.0/16"


def holder(cluster: Cluster, lease: str) -> str:
    out = cluster.plane.kubectl("get", "lease", lease, "-n", "default", "-o", "jsonpath={.spec.holderIdentity}", check=False)
    return out.strip()


def ready(controller: ControllerProcess) -> bool:
    return controller.get("/readyz") == 200


def leader_status(controller: ControllerProcess, lease: str) -> float | None:
    """leader_election_master_status{name=lease} from the controller's /metrics, as kube-controller-manager's."""
    found = re.search(
        rf'^leader_election_master_status\{{name="{re.escape(lease)}"\}} (\S+)$', controller.read("/metrics"), re.MULTILINE
    )
    return float(found.group(1)) if found else None


def test_only_the_leader_allocates_and_the_standby_takes_over(cluster: Cluster, start_controller: Start) -> None:
    lease = f"nodeipam-{int(time.time())}"
    first = start_controller(*leader_flags("first", lease, CLUSTER_FLAG))
    wait_for(lambda: holder(cluster, lease) == "first", what="first to hold the lease")
    second = start_controller(*leader_flags("second", lease, CLUSTER_FLAG))
    names = [f"le-{i}" for i in range(10)]
    cluster.create_nodes(names)
    cluster.wait_assigned(names)
    wait_for(lambda: ready(first), what="the leader to be ready")
    # A healthy standby is ready, so rolling updates and disruption budgets work.
    wait_for(lambda: ready(second) and "waiting for the lease" in second.log(), what="the standby to be ready")
    assert "allocated" in first.log()
    assert "allocated" not in second.log()
    assert (leader_status(first, lease), leader_status(second, lease)) == (1.0, 0.0)

    first.kill()
    killed_at = time.monotonic()
    wait_for(lambda: holder(cluster, lease) == "second", timeout=LEASE_SECONDS + 10, what="second to take the lease")
    took_over = time.monotonic() - killed_at
    later = [f"le-late-{i}" for i in range(10)]
    cluster.create_nodes(later)
    cidrs = cluster.wait_assigned(names + later)
    no_duplicates(cidrs)
    assert "allocated" in second.log()
    assert leader_status(second, lease) == 1.0
    print(f"standby took over {took_over:.1f}s after the leader was killed (lease {LEASE_SECONDS}s)")
    check = run_cli("check", "--cluster-cidr=10.244.0.0/16", kubeconfig=cluster.plane.kubeconfig)
    assert check.returncode == 0, check.stdout + check.stderr


def test_clean_shutdown_hands_the_lease_over_at_once(cluster: Cluster, start_controller: Start) -> None:
    lease = f"nodeipam-handover-{int(time.time())}"
    first = start_controller(*leader_flags("first", lease, CLUSTER_FLAG))
    wait_for(lambda: holder(cluster, lease) == "first", what="first to hold the lease")
    second = start_controller(*leader_flags("second", lease, CLUSTER_FLAG))
    wait_for(lambda: "waiting for the lease" in second.log(), what="second to wait")
    assert first.stop() == 0
    assert holder(cluster, lease) in ("", "second"), "the lease is released on SIGTERM"
    wait_for(lambda: holder(cluster, lease) == "second", timeout=LEASE_SECONDS, what="second to take the released lease")


def test_sigterm_at_any_moment_of_kopfs_start_stops_the_leader(cluster: Cluster, start_controller: Start) -> None:
    """SIGTERM swept across the moments after the rebuild, as kopf starts: every run exits 0 within the stop timeout.

    A signal that landed after the rebuild but before kopf took SIGTERM over once left kopf running for good.
    """
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: cluster.core.create_node(realistic_node(f"held-{i}", i, (f"10.244.{i}.0/24",))), range(250)))
    for step in range(8):
        lease = f"nodeipam-sigterm-{step}-{int(time.time())}"
        controller = start_controller(*leader_flags("leader", lease, CLUSTER_FLAG))
        wait_for(lambda controller=controller: "rebuilt the sets" in controller.log(), interval=0.002, what="the rebuild")  # type: ignore[misc]
        time.sleep(step * 0.015)  # the stimulus: when the signal lands, not a wait for a condition
        assert controller.stop() == 0, controller.log()


@pytest.mark.parametrize(
    ("cluster_cidr", "mask_flag", "expected_size"),
    [
        pytest.param("10.244.0.0/22", "--node-cidr-mask-size=24", 4, id="ipv4"),
        pytest.param("fd00:10:244::/62", "--node-cidr-mask-size=64", 4, id="ipv6"),
    ],
)
def test_status_reports_usage_and_waiting_nodes(
    cluster: Cluster, start_controller: Start, cluster_cidr: str, mask_flag: str, expected_size: int
) -> None:
    start_controller(f"--cluster-cidr={cluster_cidr}", mask_flag)
    names = [f"st-{i}" for i in range(5)]
    cluster.create_nodes(names)
    wait_for(lambda: sum(1 for v in cluster.pod_cidrs().values() if v) == 4, what="four nodes assigned")
    result = run_cli("status", f"--cluster-cidr={cluster_cidr}", mask_flag, "-o", "json", kubeconfig=cluster.plane.kubeconfig)
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    (usage,) = status["ranges"]
    assert (usage["size"], usage["allocated"], usage["free"], usage["percent_used"]) == (expected_size, 4, 0, 100.0)
    assert status["nodes"] == 5
    assert len(status["nodes_waiting"]) == 1
    text = run_cli("status", f"--cluster-cidr={cluster_cidr}", mask_flag, kubeconfig=cluster.plane.kubeconfig).stdout
    assert "100.00%" in text and "waiting for a range: 1" in text


@pytest.mark.parametrize(
    ("cluster_cidr", "duplicate"),
    [
        pytest.param("10.244.0.0/16", "10.244.5.0/24", id="ipv4"),
        pytest.param("fd00:10:244::/48", "fd00:10:244:5::/64", id="ipv6"),
    ],
)
def test_check_finds_duplicates_and_missing_ranges(cluster: Cluster, cluster_cidr: str, duplicate: str) -> None:
    cluster.create_nodes(["dup-a"], pod_cidrs=(duplicate,))
    cluster.create_nodes(["dup-b"], pod_cidrs=(duplicate,))
    cluster.create_nodes(["bare"])
    result = run_cli("check", f"--cluster-cidr={cluster_cidr}", kubeconfig=cluster.plane.kubeconfig)
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert f"duplicate podCIDRs: node dup-a has {duplicate}, node dup-b has {duplicate}" in lines
    assert "node bare: has no podCIDR" in lines
    assert lines[-1] == "checked 3 nodes: 2 problem(s)"


@pytest.mark.parametrize(
    ("cluster_cidr", "mask"),
    [pytest.param("10.244.0.0/16", 24, id="ipv4"), pytest.param("fd00:10:244::/56", 64, id="ipv6")],
)
def test_losing_the_lease_stops_allocation_and_exits(proxied: Proxied, cluster: Cluster, cluster_cidr: str, mask: int) -> None:
    """The leader's Lease calls are held (as in a partition) while Nodes keep registering, until it exits.

    Each Node that registers once the leader can no longer write to its Lease finds it still running, but
    leading no longer, or soon not: it can record no patch in the Lease, so it patches none of them. It
    exits once the renew deadline has passed, and the standby serves them.
    """
    lease = f"nodeipam-lost-{mask}-{int(time.time())}"
    lease_path = f"^/apis/coordination.k8s.io/v1/namespaces/default/leases/{lease}$"
    flags = (f"--cluster-cidr={cluster_cidr}", f"--node-cidr-mask-size={mask}")
    leader_proxy, leader = proxied(*leader_flags("leader", lease, *flags))
    leader.expected_codes = (1,)
    wait_for(lambda: holder(cluster, lease) == "leader", what="the leader to hold the lease")
    _, standby = proxied(*leader_flags("standby", lease, *flags))
    wait_for(lambda: "waiting for the lease" in standby.log(), what="the standby to wait")
    with Registrations(cluster.core, "reg") as registrations:
        wait_for(lambda: len(patched_by(leader_proxy)) >= 3, what="the leader to allocate")
        stalled_at = time.time()
        leader_proxy.add(Rule(Action.STALL, path=lease_path, methods=frozenset({"GET", "PUT"}), name="stall-lease"))
        wait_for(lambda: leader.process.poll() is not None, timeout=LEASE_SECONDS + 15, what="the leader to exit")
        exited_at = time.time()
        wait_for(lambda: holder(cluster, lease) == "standby", timeout=LEASE_SECONDS + 10, what="the standby to take over")
    assert leader.process.returncode == 1, leader.log()
    assert "leadership lost" in leader.log() and "lost the leader lease" in leader.log()

    arrived = sorted(name for name, at in registrations.sent.items() if stalled_at <= at < exited_at)
    assert len(arrived) >= 5, f"only {arrived} registered between the stall and the leader's exit"
    seen = [name for name in arrived if re.search(rf"node {name}\b", leader.log())]
    assert seen, f"the old leader never saw the Nodes that registered before it exited:\n{leader.log()}"
    patched = {entry.path.rsplit("/", 1)[-1] for entry in leader_proxy.forwarded("PATCH", NODE_PATCH)}
    assert not patched & set(arrived), f"the old leader patched {sorted(patched & set(arrived))} after its Lease stalled"
    cidrs = cluster.wait_single_ranges_inside(registrations.names, cluster_cidr, mask)
    assert all(cidrs[name] for name in arrived), "the standby serves them"
