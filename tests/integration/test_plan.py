"""`nodeipam plan` against the real API server: a cluster kube-controller-manager populated, and one seeded with conflicts.

The prediction is checked against kube-controller-manager itself: what the
plan says the next Nodes get is what kube-controller-manager, started again
with the same flags, gives them.
"""

from __future__ import annotations

import datetime
import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client, config

from localcluster.cluster import LocalControlPlane
from localcluster.nodebodies import realistic_node
from tests.integration.conftest import ROOT, Cluster, KubeControllerManager, run_cli
from tests.integration.test_cli_errors import dead_server, kubeconfig_like

pytestmark = pytest.mark.integration

CLUSTER_CIDR = "10.244.0.0/16"
MASK = 24


@pytest.fixture
def kcm(control_plane: LocalControlPlane, tmp_path: Path) -> Iterator[KubeControllerManager]:
    manager = KubeControllerManager(control_plane, tmp_path / "kube-controller-manager.log", CLUSTER_CIDR, MASK)
    yield manager
    manager.stop()


def plan(plane: LocalControlPlane, *flags: str) -> tuple[int, dict[str, Any], str]:
    """Run `nodeipam plan -o json` with `flags`: (exit status, the report, stderr)."""
    result = run_cli("plan", *flags, "-o", "json", kubeconfig=plane.kubeconfig)
    assert "Traceback" not in result.stderr, result.stderr
    return result.returncode, json.loads(result.stdout) if result.stdout else {}, result.stderr


def kcm_flags(plane: LocalControlPlane) -> list[str]:
    return [f"--cluster-cidr={CLUSTER_CIDR}", f"--node-cidr-mask-size={MASK}", f"--service-cluster-ip-range={plane.service_cidr}"]


def test_plan_of_a_cluster_kube_controller_manager_populated_is_safe_and_predicts_what_it_gives_next(
    cluster: Cluster, kcm: KubeControllerManager
) -> None:
    """Its Pod is not in the cluster (a process beside it), so nothing shows it: the plan finds nothing wrong."""
    plane = cluster.plane
    kcm.start()
    first = [f"kcm-{n}" for n in range(4)]
    cluster.create_nodes(first)
    assigned = cluster.wait_single_ranges_inside(first, CLUSTER_CIDR, MASK)
    kcm.stop()
    cluster.delete_node("kcm-1")  # a gap: the next Node fills it, by both allocators' next-fit from the start
    for round_names in (["next-a"], ["next-b", "next-c", "next-d"], ["next-e"]):
        cluster.create_nodes(round_names)
        status, report, stderr = plan(plane, *kcm_flags(plane))
        assert status == 0, (stderr, report.get("conflicts"))
        predicted = {node["name"]: node["would_get"] for node in report["nodes"] if node["would_get"]}
        assert sorted(predicted) == round_names
        held = {node["name"]: node["pod_cidrs"] for node in report["nodes"] if node["pod_cidrs"]}
        assert {name: cidrs for name, cidrs in held.items() if name in assigned} == {
            name: cidrs for name, cidrs in assigned.items() if name != "kcm-1"
        }
        kcm.start()
        given = cluster.wait_assigned(round_names)
        kcm.stop()
        given = {name: given[name] for name in round_names}
        log = Path(kcm.log_path).read_text()[-2000:]
        if len(round_names) == 1:
            assert given == predicted, log
        else:
            # kube-controller-manager serves the Nodes it finds at start-up with concurrent workers: which of them
            # gets which range is not fixed, the ranges handed out are.
            assert sorted(given.values()) == sorted(predicted.values()), log
    (headroom,) = report["headroom"]
    assert (headroom["capacity"], headroom["in_use"], headroom["to_assign"]) == (256, 7, 1)


# -- a seeded cluster --------------------------------------------------------------------------------

SEEDED_CIDR = "10.0.0.0/8"
SEEDED_NODES = {
    "mask": ("10.1.0.0/23",),  # a /23 against the flag's /24
    "dup-a": ("10.2.0.0/24",),
    "dup-b": ("10.2.0.0/24",),
    "wide": ("10.3.0.0/22",),  # overlaps narrow (and is a mask mismatch)
    "narrow": ("10.3.1.0/24",),
    "foreign": ("192.168.0.0/24",),
    "svc": ("10.96.0.0/24",),  # inside the service range 10.96.0.0/12
    "fine": ("10.4.0.0/24",),
    "new": (),
}


@pytest.fixture
def apps(control_plane: LocalControlPlane) -> client.AppsV1Api:
    return client.AppsV1Api(config.new_client_from_config(config_file=control_plane.kubeconfig))


@pytest.fixture
def seeded(cluster: Cluster, apps: client.AppsV1Api, pool_crd: str) -> Iterator[Callable[[], None]]:
    """One of each conflict in the cluster; everything made is removed after the test."""
    plane, core = cluster.plane, cluster.core
    undo: list[Callable[[], Any]] = []

    def seed() -> None:
        for index, (name, cidrs) in enumerate(SEEDED_NODES.items()):
            core.create_node(realistic_node(name, index, cidrs))
        plane.kubectl(
            "apply",
            "-f",
            "-",
            input_text=yaml.safe_dump(
                {
                    "apiVersion": "nodeipam.io/v1alpha1",
                    "kind": "NodeCIDRPool",
                    "metadata": {"name": "plan-clash"},
                    "spec": {"ipv4": {"nodeMaskSize": 24, "cidrs": [{"cidr": "10.5.0.0/16"}]}},
                }
            ),
        )
        undo.append(lambda: plane.kubectl("delete", "nodecidrpool", "plan-clash", "--ignore-not-found"))
        kcm = _deployment("kube-controller-manager", ["kube-controller-manager", "--allocate-node-cidrs=true", "--controllers=*"])
        apps.create_namespaced_deployment("kube-system", kcm)
        undo.append(lambda: apps.delete_namespaced_deployment("kube-controller-manager", "kube-system"))
        # As kubeadm's static Pod shows it (a mirror Pod): found by its label, though its args name no flag file.
        if not core.list_namespaced_service_account("kube-system", field_selector="metadata.name=default").items:
            core.create_namespaced_service_account("kube-system", {"metadata": {"name": "default"}})
        static = {
            "metadata": {"name": "kube-controller-manager-cp1", "labels": {"component": "kube-controller-manager"}},
            "spec": {
                "automountServiceAccountToken": False,
                "containers": [
                    {
                        "name": "kube-controller-manager",
                        "image": "registry.k8s.io/kube-controller-manager:v1.37.2",
                        "command": ["kube-controller-manager", "--allocate-node-cidrs=true", "--cluster-cidr=10.0.0.0/8"],
                    }
                ],
            },
        }
        core.create_namespaced_pod("kube-system", static)
        undo.append(lambda: core.delete_namespaced_pod("kube-controller-manager-cp1", "kube-system", grace_period_seconds=0))
        apps.create_namespaced_daemon_set("kube-system", _daemonset("cilium"))
        undo.append(lambda: apps.delete_namespaced_daemon_set("cilium", "kube-system"))
        flannel = {"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan"}}
        core.create_namespaced_config_map(
            "kube-system",
            {"metadata": {"name": "kube-flannel-cfg"}, "data": {"net-conf.json": json.dumps(flannel)}},
        )
        undo.append(lambda: core.delete_namespaced_config_map("kube-flannel-cfg", "kube-system"))
        proxy = {"apiVersion": "kubeproxy.config.k8s.io/v1alpha1", "kind": "KubeProxyConfiguration", "clusterCIDR": "10.0.0.0/8"}
        core.create_namespaced_config_map(
            "kube-system", {"metadata": {"name": "kube-proxy"}, "data": {"config.conf": yaml.safe_dump(proxy)}}
        )
        undo.append(lambda: core.delete_namespaced_config_map("kube-proxy", "kube-system"))
        now = datetime.datetime.now(datetime.UTC)
        core.create_namespaced_event(
            "default",
            {
                "metadata": {"name": "plan-kcm-event"},
                "involvedObject": {"kind": "Node", "name": "new", "apiVersion": "v1"},
                "reason": "CIDRNotAvailable",
                "message": "Node new status is now: CIDRNotAvailable",
                "source": {"component": "cidrAllocator"},
                "type": "Normal",
                "firstTimestamp": now,
                "lastTimestamp": now,
                "count": 1,
            },
        )
        undo.append(lambda: core.delete_namespaced_event("plan-kcm-event", "default"))

    yield seed
    for step in reversed(undo):
        step()


def _pod_template(command: list[str]) -> dict[str, Any]:
    return {
        "metadata": {"labels": {"app": command[0]}},
        "spec": {"containers": [{"name": "main", "image": "registry.k8s.io/pause:3.10", "command": command}]},
    }


def _deployment(name: str, command: list[str]) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "spec": {"replicas": 0, "selector": {"matchLabels": {"app": command[0]}}, "template": _pod_template(command)},
    }


def _daemonset(name: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "spec": {"selector": {"matchLabels": {"app": name}}, "template": _pod_template([name])},
    }


def test_plan_of_a_seeded_cluster_names_each_conflict_and_exits_1(cluster: Cluster, seeded: Callable[[], None]) -> None:
    seeded()
    flags = [
        f"--cluster-cidr={SEEDED_CIDR}",
        f"--node-cidr-mask-size={MASK}",
        f"--service-cluster-ip-range={cluster.plane.service_cidr}",
    ]
    status, report, stderr = plan(cluster.plane, *flags)
    assert status == 1, stderr
    found = {(finding["kind"], finding["subject"]) for finding in report["conflicts"]}
    assert found == {
        ("mask-mismatch", "node mask"),
        ("mask-mismatch", "node wide"),
        ("duplicate", "node dup-a, node dup-b"),
        ("overlap", "node wide, node narrow"),
        ("foreign", "node foreign"),
        ("service-overlap", "node svc"),
        ("pool", "NodeCIDRPool plan-clash"),
        ("other-allocator", "Deployment kube-system/kube-controller-manager"),
        ("other-allocator", "Pod kube-system/kube-controller-manager-cp1"),
        ("other-allocator", "Events CIDRNotAvailable"),
        ("data-plane", "ConfigMap kube-system/kube-flannel-cfg"),
    }, report["conflicts"]
    assert [(w["kind"], w["subject"]) for w in report["warnings"]] == [("other-ipam", "DaemonSet kube-system/cilium")]
    rows = {node["name"]: node for node in report["nodes"]}
    assert rows["fine"]["findings"] == [] and rows["fine"]["held_in"] == ["(default) 10.0.0.0/8"]
    assert rows["new"]["would_get"] == ["10.0.0.0/24"]
    table = run_cli("plan", *flags, kubeconfig=cluster.plane.kubeconfig)
    assert table.returncode == 1
    assert "not safe to switch: 11 conflict(s)" in table.stdout
    print(table.stdout)


def test_plan_exits_3_when_the_cluster_cannot_be_read_and_2_for_bad_flags(
    control_plane: LocalControlPlane, tmp_path: Path
) -> None:
    unreachable = kubeconfig_like(control_plane, tmp_path / "dead", server=dead_server("127.0.0.1"))
    result = run_cli("plan", f"--cluster-cidr={CLUSTER_CIDR}", kubeconfig=unreachable)
    assert result.returncode == 3, result.stderr
    assert "cannot reach the API server" in result.stderr and "Traceback" not in result.stderr
    refused = kubeconfig_like(control_plane, tmp_path / "stranger", token="not-a-token")
    result = run_cli("plan", f"--cluster-cidr={CLUSTER_CIDR}", kubeconfig=refused)
    assert result.returncode == 3, result.stderr
    assert "401" in result.stderr
    result = run_cli("plan", "--cluster-cidr=10.244.0.0/33", kubeconfig=control_plane.kubeconfig)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("nodeipam plan: error: --cluster-cidr")


def test_plan_watch_names_podcidrs_kube_controller_manager_writes_meanwhile(cluster: Cluster, kcm: KubeControllerManager) -> None:
    """kube-controller-manager as a process shows nothing in the cluster but its writes: --watch sees those."""
    plane = cluster.plane
    kcm.start()
    cluster.create_nodes(["before"])
    cluster.wait_assigned(["before"])
    command = [sys.executable, "-m", "controller", "plan", *kcm_flags(plane), "--watch=12s", "-o", "json"]
    running = subprocess.Popen(
        [*command, f"--kubeconfig={plane.kubeconfig}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT
    )
    try:
        time.sleep(5)  # the first read is done: the process starts and lists in well under that
        cluster.create_nodes(["during"])
        cluster.wait_assigned(["during"])
        stdout, stderr = running.communicate(timeout=60)
    finally:
        running.kill()
    assert running.returncode == 1, stderr
    report = json.loads(stdout)
    assert [(f["kind"], f["subject"]) for f in report["conflicts"]] == [("other-allocator", "node during")]
    assert "written by kube-controller-manager" in report["conflicts"][0]["message"]
