"""Run it as users run it: the image, the chart's Pod on a real Node, flannel, pods with IPs from our ranges.

The chain under test: our allocator -> the Node's spec.podCIDR -> flanneld (kube-subnet-mgr) ->
containerd's CRI -> flannel's CNI plugin -> bridge + host-local -> the pod's IP. The scenarios run
in order on one Node and one release, as a cluster lives: bootstrap, pods, scale, upgrade, release.
Run with ``-s`` to read the story (pod IPs against the Node's range).
"""

from __future__ import annotations

import itertools
import json

import netaddr
import pytest

from e2e.node.realnode import CLUSTER_CIDR, NODE_MASK, unavailable, wait_until
from e2e.node.story import CHART, CIDR_COLUMNS, NAMESPACE, RELEASE, TAGS, Story, inside, say
from localcluster.nodebodies import realistic_node

_UNAVAILABLE = unavailable()
if _UNAVAILABLE:
    pytest.skip(_UNAVAILABLE, allow_module_level=True)

# The first scenario builds the image (and, cold, flannel and the image base): allow for it.
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1800)]

API_ONLY_NODES = 500
APP = "web"
APP_REPLICAS = 5
POOL_SIZE = 2 ** (NODE_MASK - netaddr.IPNetwork(CLUSTER_CIDR).prefixlen)


def api_only(index: int) -> str:
    return f"api-only-{index:04d}"


def create_api_only_nodes(story: Story, indexes: range) -> None:
    """Nodes as a kubelet registers them (~10 KB each), with no kubelet behind them."""
    nodes = {"apiVersion": "v1", "kind": "List", "items": [realistic_node(api_only(index), index) for index in indexes]}
    story.plane.kubectl("create", "-f", "-", input_text=json.dumps(nodes))


def assert_disjoint(cidrs: dict[str, str]) -> None:
    assigned = [cidr for cidr in cidrs.values() if cidr]
    assert len(set(assigned)) == len(assigned), "a range is held by two Nodes"
    networks = sorted(netaddr.IPNetwork(cidr) for cidr in assigned)
    for left, right in itertools.pairwise(networks):
        assert left.last < right.first, f"{left} overlaps {right}"
    for network in networks:
        assert network in netaddr.IPNetwork(CLUSTER_CIDR) and network.prefixlen == NODE_MASK, network


def test_1_bootstrap_the_controller_pod_on_a_not_ready_node(story: Story) -> None:
    node = story.node.node_name
    assert not story.node_ready(), "the Node is Ready before any CNI config exists"
    assert story.node.pod_cidr() == "", "the Node has a podCIDR before our controller runs"
    say(f"Node {node} is NotReady (no CNI config yet) and has no podCIDR")

    story.build_and_load_image()
    code, output = story.image_demo
    # The demo is a checkout's (make demo): the image has no such command, not one that cannot run.
    assert code == 2 and "invalid choice: 'demo'" in output, ("the image ships a demo command", code, output)
    story.install(TAGS[0])
    pod = story.ready_controller(tag=TAGS[0])
    assert pod["spec"]["nodeName"] == node
    assert pod["spec"]["hostNetwork"] is True
    (container,) = pod["spec"]["containers"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["spec"]["securityContext"]["runAsUser"] == 65532
    say(f"controller Pod {pod['metadata']['name']} scheduled onto {node}, probes passed (Ready)")
    # The chart's defaults on one control-plane Node: one replica (its ports are host ports), none Pending.
    assert story.pending_pods() == [] and len(story.controller_pods()) == 1, story.controller_pods()
    say("the chart's defaults on one control-plane Node: 1 replica, no Pod Pending")
    assert not story.node_ready(), "the Node turned Ready before flannel ran: the test would prove nothing"
    say(f"... while {node} is still NotReady: the chart's tolerations and hostNetwork made that possible")

    holder = story.wait_new_holder("")
    say(f"Lease {NAMESPACE}/{RELEASE} held by {holder}")
    wait_until(story.node.pod_cidr, 60, f"Node {node} to get a podCIDR")
    pod_cidr = story.node.pod_cidr()
    assert netaddr.IPNetwork(pod_cidr) in netaddr.IPNetwork(CLUSTER_CIDR)
    assert netaddr.IPNetwork(pod_cidr).prefixlen == NODE_MASK
    say(f"Node {node} podCIDR {pod_cidr}, assigned by the controller Pod")

    subnet = story.node.start_flannel()
    assert netaddr.IPNetwork(subnet).cidr == netaddr.IPNetwork(pod_cidr), f"flannel's subnet {subnet} is not {pod_cidr}"
    say(f"flanneld (kube-subnet-mgr) wrote FLANNEL_SUBNET={subnet}; CNI config {story.node.cni_conf_dir}/10-flannel.conflist")
    wait_until(story.node_ready, 120, f"Node {node} to turn Ready")
    say(f"Node {node} is Ready")


def test_2_pod_ips_come_from_the_node_range(story: Story) -> None:
    pod_cidr = story.node.pod_cidr()
    story.run_app(APP, APP_REPLICAS)
    ips = story.app_pod_ips(APP, APP_REPLICAS)
    for name, ip in sorted(ips.items()):
        say(f"pod {name} IP {ip} in {story.node.node_name}'s podCIDR {pod_cidr}: {inside(ip, pod_cidr)}")
    outside = {name: ip for name, ip in ips.items() if not inside(ip, pod_cidr)}
    assert not outside, f"pod IPs outside {pod_cidr}: {outside}"
    assert len(set(ips.values())) == APP_REPLICAS, f"two pods share an IP: {ips}"
    columns = story.kubectl("get", "nodes", "-o", CIDR_COLUMNS)
    rows = [line.split() for line in columns.strip().splitlines()]
    assert rows == [["NAME", "CIDR"], [story.node.node_name, pod_cidr]], columns
    for line in columns.strip().splitlines():
        say(f"kubectl get nodes: {line}")


def test_3_api_only_nodes_get_disjoint_ranges_beside_the_real_one(story: Story) -> None:
    real = story.node.node_name
    before = story.node.pod_cidr()
    create_api_only_nodes(story, range(API_ONLY_NODES))
    say(f"created {API_ONLY_NODES} API-only Nodes")

    def all_assigned() -> bool:
        cidrs = story.pod_cidrs()
        return len(cidrs) == API_ONLY_NODES + 1 and all(cidrs.values())

    wait_until(all_assigned, 240, f"{API_ONLY_NODES} API-only Nodes to get ranges")
    cidrs = story.pod_cidrs()
    assert_disjoint(cidrs)
    assert cidrs[real] == before, f"the real Node's range moved from {before} to {cidrs[real]}"
    say(f"{len(cidrs)} Nodes hold {len(cidrs)} disjoint /{NODE_MASK} ranges; {real} kept {before}")

    check = story.nodeipam("check")
    assert check.returncode == 0, check.stdout + check.stderr
    assert f"checked {API_ONLY_NODES + 1} nodes: 0 problem(s)" in check.stdout, check.stdout
    say(f"nodeipam check: {check.stdout.strip().splitlines()[-1]}")
    status = story.nodeipam("status", "--output=json")
    assert status.returncode == 0, status.stderr
    report = json.loads(status.stdout)
    assert report["nodes"] == API_ONLY_NODES + 1
    (usage,) = report["ranges"]
    assert (usage["allocated"], usage["size"]) == (API_ONLY_NODES + 1, POOL_SIZE), usage
    say(f"nodeipam status: {usage['allocated']} of {usage['size']} ranges allocated in {usage['cluster_cidr']}")

    # As the chart's NOTES say, from inside the Pod, with its ServiceAccount (no kube-proxy here: --master).
    inside_pod = story.kubectl(
        "exec",
        "-n",
        NAMESPACE,
        f"deploy/{RELEASE}",
        "--",
        "nodeipam",
        "status",
        f"--cluster-cidr={CLUSTER_CIDR}",
        f"--node-cidr-mask-size={NODE_MASK}",
        f"--master={story.plane.server}",
        "--output=json",
    )
    assert json.loads(inside_pod)["nodes"] == API_ONLY_NODES + 1, inside_pod
    say(f"kubectl exec deploy/{RELEASE} -- nodeipam status: {json.loads(inside_pod)['nodes']} Nodes")


def test_4_upgrade_and_restart_keep_every_range(story: Story) -> None:
    before = story.pod_cidrs()
    old_pod = story.ready_controller()
    old_holder = story.lease_holder()
    story.helm("upgrade", RELEASE, str(CHART), "--namespace", NAMESPACE, "--reuse-values", "--set-string", f"image.tag={TAGS[1]}")
    say(f"helm upgrade {RELEASE} to nodeipam:{TAGS[1]}")
    story.kubectl("rollout", "status", f"deployment/{RELEASE}", "-n", NAMESPACE, "--timeout=240s")
    upgraded = story.ready_controller(not_named=old_pod["metadata"]["name"], tag=TAGS[1])
    assert story.pending_pods() == [], "a Pod of the upgrade waits Pending"
    holder = story.wait_new_holder(old_holder)
    say(f"rolled: {old_pod['metadata']['name']} -> {upgraded['metadata']['name']} (nodeipam:{TAGS[1]}), Lease now {holder}")

    story.kubectl("delete", "pod", upgraded["metadata"]["name"], "-n", NAMESPACE, "--wait=false")
    replacement = story.ready_controller(not_named=upgraded["metadata"]["name"], tag=TAGS[1])
    new_holder = story.wait_new_holder(holder)
    say(f"deleted the leader's Pod; {replacement['metadata']['name']} leads now ({new_holder})")

    after = story.pod_cidrs()
    changed = {name: (cidr, after.get(name)) for name, cidr in before.items() if after.get(name) != cidr}
    assert not changed, f"ranges changed across upgrade and restart: {changed}"
    assert_disjoint(after)
    say(f"no range changed across upgrade and restart ({len(after)} Nodes)")

    metrics = story.scrape_metrics(replacement)
    wanted = f'node_ipam_controller_cidrset_allocated_cidrs{{clusterCIDR="{CLUSTER_CIDR}"}} {float(len(after))}'
    assert wanted in metrics, [line for line in metrics.splitlines() if "allocated_cidrs" in line]
    say(f"/metrics through the Pod's port: {wanted}")


def test_5_deleting_a_node_frees_its_range_for_the_next(story: Story) -> None:
    count = len(story.pod_cidrs())
    create_api_only_nodes(story, range(API_ONLY_NODES, API_ONLY_NODES + POOL_SIZE - count))

    def full() -> bool:
        cidrs = story.pod_cidrs()
        return len(cidrs) == POOL_SIZE and all(cidrs.values())

    wait_until(full, 120, f"all {POOL_SIZE} ranges to be allocated")
    say(f"every one of the {POOL_SIZE} ranges is allocated")
    create_api_only_nodes(story, range(POOL_SIZE, POOL_SIZE + 1))
    waiting = api_only(POOL_SIZE)
    wait_until(lambda: story.events_for(waiting, "CIDRNotAvailable"), 60, f"CIDRNotAvailable for {waiting}")
    assert story.pod_cidrs()[waiting] == ""
    say(f"{waiting} waits: CIDRNotAvailable")

    victim = api_only(7)
    freed = story.pod_cidrs()[victim]
    story.kubectl("delete", "node", victim)
    wait_until(lambda: story.pod_cidrs().get(waiting) == freed, 60, f"{waiting} to get {freed}")
    say(f"deleted {victim}; its range {freed} went to {waiting}")
    assert_disjoint(story.pod_cidrs())
