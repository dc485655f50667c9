"""Writes that land late, and duplicates made by anyone: the controller against the real API server.

A podCIDR patch can spend seconds on its way (a slow network, the API
server's priority-and-fairness queues), long enough for its sender to lose
the lease. The next leader must never hand the range that patch carries to
another Node. And a duplicate that someone else made (another allocator, a
person) is reported on both Nodes.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable

import pytest

from localcluster.cluster import ADMIN_TOKEN
from tests.conftest import wait_for
from tests.faultproxy import Action, Rule
from tests.integration.conftest import Cluster, ControllerProcess, Proxied, fetch, no_duplicates, run_cli
from tests.integration.test_faults import OLD_LEADER_EXIT_CODES, SMALL_RANGES, lease_holder

pytestmark = pytest.mark.integration

LEASE_FLAGS = ("--leader-elect-lease-duration=4s", "--leader-elect-renew-deadline=3s", "--leader-elect-retry-period=1s")
COMPETITORS = [f"n-{i}" for i in range(5)]  # listed before "victim": the next leader serves them first


def elect(identity: str, lease: str, cluster_cidr: str, mask: int) -> list[str]:
    return [
        f"--cluster-cidr={cluster_cidr}",
        f"--node-cidr-mask-size={mask}",
        "--resync-period=10m",
        "--leader-elect=true",
        f"--leader-elect-identity={identity}",
        f"--leader-elect-resource-name={lease}",
        "--leader-elect-resource-namespace=default",
        *LEASE_FLAGS,
    ]


@SMALL_RANGES
def test_a_patch_held_in_transit_past_the_hand_over_makes_no_duplicate(
    proxied: Proxied,
    cluster: Cluster,
    cluster_cidr: str,
    mask: int,
) -> None:
    """The leader's patch for `victim` is held on its way until the next leader has served five new Nodes.

    The range holds four node subnets. The new leader's start-up LIST shows the five new Nodes (before
    `victim`, by name) and `victim` without a range; then the held patch is let through.
    """
    lease = f"nodeipam-late-{mask}-{int(time.time())}"
    lease_path = f"^/apis/coordination.k8s.io/v1/namespaces/default/leases/{lease}$"
    lease_calls = frozenset({"GET", "PUT", "POST"})
    victim_path = "^/api/v1/nodes/victim$"
    first_proxy, first = proxied(*elect("first", lease, cluster_cidr, mask))
    first.expected_codes = OLD_LEADER_EXIT_CODES
    wait_for(lambda: lease_holder(cluster.plane, lease) == "first", what="first to hold the lease")
    second_proxy, second = proxied(*elect("second", lease, cluster_cidr, mask))
    wait_for(lambda: "waiting for the lease" in second.log(), what="second to stand by")
    wait_for(lambda: first.get("/readyz") == 200, what="the leader to be ready")

    hold = first_proxy.add(Rule(Action.STALL, path=victim_path, methods=frozenset({"PATCH"}), name="hold-victim-patch"))
    cluster.create_nodes(["victim"])
    wait_for(lambda: hold.fired, timeout=30, what="the leader's patch for victim to be held")
    # From now on the leader cannot renew; the standby may not take over until the competitors exist.
    first_proxy.add(Rule(Action.STALL, path=lease_path, methods=lease_calls, name="stall-first-lease"))
    second_stall = second_proxy.add(Rule(Action.STALL, path=lease_path, methods=lease_calls, name="stall-second-lease"))
    wait_for(lambda: "leadership lost" in first.log(), timeout=30, what="the leader to stop leading")
    cluster.create_nodes(COMPETITORS)
    second_proxy.remove(second_stall)
    wait_for(lambda: lease_holder(cluster.plane, lease) == "second", timeout=30, what="second to take the lease")

    def new_leader_done() -> bool:
        cidrs = cluster.pod_cidrs()
        waiting = set(re.findall(r"node (\S+) waits for a range", second.log()))
        return all(cidrs.get(name) or name in waiting for name in [*COMPETITORS, "victim"])

    wait_for(new_leader_done, timeout=60, what="the new leader to serve or queue every Node")
    first_proxy.remove(hold)
    wait_for(lambda: first_proxy.forwarded("PATCH", "/api/v1/nodes/victim"), timeout=30, what="the held patch to reach the API")
    cidrs = cluster.wait_assigned(["victim"])
    no_duplicates(cidrs)
    assert sum(1 for values in cidrs.values() if values) == 4, f"every node subnet is handed out once: {cidrs}"
    late = first_proxy.forwarded("PATCH", "/api/v1/nodes/victim")
    print(f"the held patch landed with {late[-1].status}; ranges: {cidrs}")


@pytest.mark.parametrize(
    ("cluster_cidr", "mask", "taken"),
    [
        pytest.param("10.0.0.0/28", 30, "10.0.0.0/30", id="ipv4"),
        pytest.param("fd00:10::/62", 64, "fd00:10::/64", id="ipv6"),
    ],
)
def test_a_duplicate_made_by_someone_else_is_reported_on_both_nodes(
    cluster: Cluster, start_controller: Callable[..., ControllerProcess], cluster_cidr: str, mask: int, taken: str
) -> None:
    controller = start_controller(f"--cluster-cidr={cluster_cidr}", f"--node-cidr-mask-size={mask}")
    cluster.create_nodes(["first"])
    assert cluster.wait_assigned(["first"])["first"] == [taken]
    # Another allocator (or a person) gives a second Node the same range.
    cluster.create_nodes(["copy"], pod_cidrs=(taken,))
    for name, other in (("first", "copy"), ("copy", "first")):
        event = cluster.wait_event(name, "DuplicatePodCIDR")
        assert event.type == "Warning" and other in event.message and taken in event.message, event.message

    def duplicates_gauge() -> str | None:
        status, text = fetch(f"https://127.0.0.1:{controller.metrics_port}/metrics", ADMIN_TOKEN)
        found = re.search(r"^node_ipam_controller_duplicate_pod_cidr_nodes (\S+)$", text, re.MULTILINE)
        return found.group(1) if status == 200 and found else None

    assert wait_for(duplicates_gauge, what="the duplicates gauge") == "2.0"
    check = run_cli(
        "check", f"--cluster-cidr={cluster_cidr}", f"--node-cidr-mask-size={mask}", kubeconfig=cluster.plane.kubeconfig
    )
    assert check.returncode == 1, check.stdout + check.stderr
    assert f"duplicate podCIDRs: node copy has {taken}, node first has {taken}" in check.stdout.splitlines(), check.stdout
    cluster.delete_node("copy")
    assert wait_for(lambda: duplicates_gauge() == "0.0", what="the gauge to drop once one holder is gone")
