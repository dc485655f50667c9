"""The chart in a real kind cluster: the image, the Deployment, kindnet routing pods by our podCIDRs.

kube-controller-manager's allocator is switched off (--allocate-node-cidrs=false), so no Node has a
podCIDR, no CNI config is written and no pod gets an IP until nodeipam, running on the host network
of the control-plane node, hands out the ranges. kindnet then builds each Node's pod network from
its spec.podCIDR, so pod IPs must fall inside their Node's range.

Needs Docker and `kind` on PATH (pytest-kind would otherwise download kind from the internet);
kubectl and helm come from the project's binary cache. Skipped, with the reason, where either is
missing. `pytest --keep-cluster` keeps the cluster, `--kind-image` picks the node image.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pytest_kind import KindCluster

from tests.conftest import wait_for

pytestmark = pytest.mark.e2e


def _kind_unavailable() -> str | None:
    docker = shutil.which("docker")
    if docker is None:
        return "Docker engine not available (docker is not on PATH): the kind suite needs Docker"
    try:
        info = subprocess.run([docker, "info"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"Docker engine not available (docker info failed: {error}): the kind suite needs Docker"
    if info.returncode != 0:
        return "Docker engine not available (docker info failed): the kind suite needs Docker"
    if shutil.which("kind") is None:
        return "kind is not on PATH: the kind suite needs it (pytest-kind would download it from the internet)"
    return None


_UNAVAILABLE = _kind_unavailable()
if _UNAVAILABLE:
    pytest.skip(_UNAVAILABLE, allow_module_level=True)

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "manifests" / "charts" / "nodeipam"
IMAGE = "nodeipam:e2e"
POD_SUBNET = "10.244.0.0/16"
NODE_MASK = 24
NAMESPACE = "kube-system"
RELEASE = "nodeipam"
SUITE_TIMEOUT = 1800

# kube-controller-manager must not allocate: kubeadm passes --allocate-node-cidrs=true whenever a
# podSubnet is set, so it is overridden through kubeadm's extraArgs. Both kubeadm API versions are
# patched (a map in v1beta3, a list in v1beta4); kind applies only the one matching its config.
KIND_CONFIG = f"""\
kind: Cluster
apiVersion: kind.x-k8s.io/v1alpha4
networking:
  disableDefaultCNI: false
  podSubnet: "{POD_SUBNET}"
kubeadmConfigPatches:
  - |
    apiVersion: kubeadm.k8s.io/v1beta3
    kind: ClusterConfiguration
    controllerManager:
      extraArgs:
        allocate-node-cidrs: "false"
  - |
    apiVersion: kubeadm.k8s.io/v1beta4
    kind: ClusterConfiguration
    controllerManager:
      extraArgs:
        - name: allocate-node-cidrs
          value: "false"
nodes:
  - role: control-plane
  - role: worker
  - role: worker
"""

PROBE_PODS = 6
PROBE_DEPLOYMENT = f"""\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: ipcheck
  namespace: default
spec:
  replicas: {PROBE_PODS}
  selector:
    matchLabels: {{app: ipcheck}}
  template:
    metadata:
      labels: {{app: ipcheck}}
    spec:
      topologySpreadConstraints:
        - maxSkew: 1
          topologyKey: kubernetes.io/hostname
          whenUnsatisfiable: ScheduleAnyway
          labelSelector:
            matchLabels: {{app: ipcheck}}
      containers:
        - name: sleep
          image: {IMAGE}
          imagePullPolicy: Never
          command: ["python", "-c", "import time; time.sleep(86400)"]
          securityContext:
            allowPrivilegeEscalation: false
            runAsNonRoot: true
            capabilities: {{drop: [ALL]}}
"""


def _binary(name: str) -> Path:
    from localcluster.binaries import ensure_binaries

    return ensure_binaries((name,))[name]


@pytest.fixture(scope="module")
def kind(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[KindCluster]:
    workdir = tmp_path_factory.mktemp("kind")
    config = workdir / "kind.yaml"
    config.write_text(KIND_CONFIG)
    kind_path = shutil.which("kind")
    assert kind_path is not None
    image = request.config.getoption("kind_image", default=None)
    with contextlib.chdir(workdir):  # KindCluster makes a .pytest-kind/ directory in the working directory
        cluster = KindCluster(
            f"nodeipam-e2e-{uuid.uuid4().hex[:6]}",
            kubeconfig=workdir / "kubeconfig",
            image=image,
            kind_path=Path(kind_path),
            kubectl_path=_binary("kubectl"),
        )
    cluster.create(config_file=config)
    try:
        yield cluster
    finally:
        if not request.config.getoption("keep_cluster", default=False):
            cluster.delete()


@pytest.fixture(scope="module")
def installed(kind: KindCluster) -> KindCluster:
    """The image built and loaded into every node, and the chart installed with it."""
    subprocess.run(["docker", "build", "-t", IMAGE, str(ROOT)], check=True, timeout=900)
    kind.load_docker_image(IMAGE)
    # The API server by node IP, as on clusters where the service network needs the CNI.
    control_plane = _nodes(kind, "node-role.kubernetes.io/control-plane")
    assert len(control_plane) == 1, [node["metadata"]["name"] for node in control_plane]
    address = next(a["address"] for a in control_plane[0]["status"]["addresses"] if a["type"] == "InternalIP")
    subprocess.run(
        [
            str(_binary("helm")),
            f"--kubeconfig={kind.kubeconfig_path}",
            "install",
            RELEASE,
            str(CHART),
            "--namespace",
            NAMESPACE,
            "--set",
            f"clusterCIDR={POD_SUBNET}",
            "--set",
            "image.repository=nodeipam,image.tag=e2e,image.pullPolicy=Never",
            # One control-plane node, and the metrics port is a host port: a second replica would stay Pending.
            "--set",
            "replicas=1",
            "--set",
            f"apiServer=https://{address}:6443",
            "--wait",
            "--timeout=5m",
        ],
        check=True,
        timeout=600,
    )
    return kind


def _nodes(kind: KindCluster, selector: str | None = None) -> list[dict[str, Any]]:
    args = ["get", "nodes", "-o", "json", *(["-l", selector] if selector else [])]
    items: list[dict[str, Any]] = json.loads(kind.kubectl(*args))["items"]
    return items


def _pod_cidrs(kind: KindCluster) -> dict[str, list[str]]:
    return {node["metadata"]["name"]: list(node["spec"].get("podCIDRs") or []) for node in _nodes(kind)}


@pytest.mark.timeout(SUITE_TIMEOUT)
def test_every_node_gets_a_disjoint_pod_cidr_inside_the_pod_subnet(installed: KindCluster) -> None:
    def all_assigned() -> dict[str, list[str]] | None:
        cidrs = _pod_cidrs(installed)
        return cidrs if len(cidrs) == 3 and all(cidrs.values()) else None

    cidrs = wait_for(all_assigned, timeout=300, interval=2, what="a podCIDR on all 3 nodes")
    assert cidrs is not None
    subnet = ipaddress.ip_network(POD_SUBNET)
    flat = [ipaddress.ip_network(cidr) for values in cidrs.values() for cidr in values]
    assert len(flat) == len(set(flat)) == 3, f"duplicate or extra podCIDRs: {cidrs}"
    for network in flat:
        assert network.prefixlen == NODE_MASK and network.subnet_of(subnet), cidrs  # type: ignore[arg-type]
    for network in flat:
        assert not any(network.overlaps(other) for other in flat if other != network), cidrs
    log = installed.kubectl("logs", "-n", NAMESPACE, f"deploy/{RELEASE}", "--tail=-1")
    for name, values in cidrs.items():
        assert f"allocated {values[0]} to node {name}" in log, f"{name} was not allocated by nodeipam:\n{log}"


@pytest.mark.timeout(SUITE_TIMEOUT)
def test_pods_get_ips_from_their_nodes_pod_cidr(installed: KindCluster) -> None:
    def all_ready() -> bool:
        return all(
            any(c["type"] == "Ready" and c["status"] == "True" for c in node["status"].get("conditions", []))
            for node in _nodes(installed)
        )

    wait_for(all_ready, timeout=300, interval=2, what="every node Ready (kindnet configured from the podCIDRs)")
    installed.kubectl("apply", "-f", "-", input=PROBE_DEPLOYMENT)
    try:
        installed.kubectl("rollout", "status", "-n", "default", "deploy/ipcheck", "--timeout=300s")
        cidrs = _pod_cidrs(installed)
        pods = json.loads(installed.kubectl("get", "pods", "-n", "default", "-l", "app=ipcheck", "-o", "json"))["items"]
        running = [pod for pod in pods if pod["status"].get("phase") == "Running"]
        assert len(running) == PROBE_PODS, [pod["status"].get("phase") for pod in pods]
        assert len({pod["spec"]["nodeName"] for pod in running}) >= 2, "the pods should spread over the workers"
        for pod in running:
            node = pod["spec"]["nodeName"]
            networks = [ipaddress.ip_network(cidr) for cidr in cidrs[node]]
            ips = [ipaddress.ip_address(entry["ip"]) for entry in pod["status"].get("podIPs") or []]
            assert ips, f"{pod['metadata']['name']} has no IP"
            for ip in ips:
                assert any(ip in network for network in networks), (
                    f"{pod['metadata']['name']} on {node}: {ip} not in {cidrs[node]}"
                )
    finally:
        installed.kubectl("delete", "-n", "default", "deploy/ipcheck", "--ignore-not-found")
