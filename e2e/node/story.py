"""The chart's controller on the real Node, step by step: shared by the scenarios and ``make demo-node``.

Each step prints one line (``[node] ...``), so a run with ``pytest -s`` or the demo reads as the
story of a pod's IP: the Node registers NotReady, our Pod runs on it anyway and assigns its range,
flannel turns the range into a subnet, the Node turns Ready, pods get addresses from the range.
"""

from __future__ import annotations

import json
import ssl
import subprocess
import tempfile
import urllib.request
from pathlib import Path
from typing import Any

import netaddr

from e2e.node import assets
from e2e.node.image import Docker, build_images
from e2e.node.realnode import CLUSTER_CIDR, NODE_MASK, RealNode, wait_until
from localcluster.binaries import ensure_binaries

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "manifests" / "charts" / "nodeipam"
NAMESPACE = "kube-system"
RELEASE = "nodeipam"
SCRAPER = "scraper"
TAGS = ("e2e-1", "e2e-2")
CIDR_COLUMNS = "custom-columns=NAME:.metadata.name,CIDR:.spec.podCIDR"


def say(line: str) -> None:
    print(f"[node] {line}", flush=True)


class Story:
    """The real Node plus our release on it; every step waits with a timeout and says what it saw."""

    def __init__(self, node: RealNode) -> None:
        self.node = node
        self.plane = node.plane
        self.helm_binary = str(ensure_binaries(("helm",))["helm"])
        self.helm_home = Path(tempfile.mkdtemp(prefix="nodeipam-helm-", dir=node.dir))
        self.image_demo: tuple[int, str] = (0, "")

    # -- kubectl / helm --------------------------------------------------------------------------------

    def kubectl(self, *args: str) -> str:
        return self.plane.kubectl(*args)

    def get(self, *args: str) -> dict[str, Any]:
        return dict(json.loads(self.kubectl("get", *args, "-o", "json")))

    def helm(self, *args: str) -> str:
        home = self.helm_home
        env = dict(
            self.plane.env(),
            HELM_CONFIG_HOME=str(home / "config"),
            HELM_CACHE_HOME=str(home / "cache"),
            HELM_DATA_HOME=str(home / "data"),
        )
        result = subprocess.run(
            [self.helm_binary, f"--kubeconfig={self.plane.kubeconfig}", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        if result.returncode != 0:
            raise RuntimeError(f"helm {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
        return result.stdout

    # -- the image -------------------------------------------------------------------------------------

    def build_and_load_image(self) -> None:
        """``docker build`` the Dockerfile, ``docker save``, ``ctr images import`` into the Node's containerd."""
        docker = Docker()
        try:
            archive = self.node.dir / "nodeipam-images.tar"
            names = build_images(docker, archive, TAGS)
            say(f"built {', '.join(names)} from the Dockerfile (docker build, base from Debian's packages)")
            # As the chart runs it: non-root, read-only root filesystem, no capabilities, and without the demo.
            self.image_demo = docker.status(
                "run", "--rm", "--network=none", "--read-only", "--user=65532:65532", "--cap-drop=ALL", names[0], "demo"
            )
            last = (self.image_demo[1].strip().splitlines() or [""])[-1]
            say(f"docker run {names[0]} demo (read-only, non-root) -> exit {self.image_demo[0]}: {last}")
        finally:
            docker.stop()
        self.node.ctr("images", "import", str(archive))
        archive.unlink()
        say(f"imported into the Node's containerd: {', '.join(self.images())}")

    def images(self) -> list[str]:
        return [
            name for name in self.node.ctr("images", "ls", "-q").split() if f"/{RELEASE}:" in name or name.startswith("nodeipam:")
        ]

    # -- the Node ----------------------------------------------------------------------------------------

    def node_ready(self, name: str | None = None) -> bool:
        node = self.get("node", name or self.node.node_name)
        return any(c["type"] == "Ready" and c["status"] == "True" for c in node["status"].get("conditions", []))

    def events_for(self, node: str, reason: str) -> bool:
        events = self.get("events", "-n", "default", "--field-selector", f"reason={reason},involvedObject.name={node}")
        return bool(events["items"])

    def pod_cidrs(self) -> dict[str, str]:
        nodes = self.get("nodes")["items"]
        return {node["metadata"]["name"]: node["spec"].get("podCIDR", "") for node in nodes}

    # -- our release ---------------------------------------------------------------------------------------

    def install(self, tag: str) -> None:
        self.kubectl("create", "serviceaccount", SCRAPER, "-n", NAMESPACE)
        self.helm(
            "install",
            RELEASE,
            str(CHART),
            "--namespace",
            NAMESPACE,
            "--set-string",
            f"clusterCIDR={CLUSTER_CIDR}",
            "--set",
            f"nodeCIDRMaskSizeIPv4={NODE_MASK}",
            "--set-string",
            f"image.tag={tag}",
            "--set",
            "image.pullPolicy=Never",
            # No kube-proxy here: the `kubernetes` Service address leads nowhere, the API server's own does.
            "--set-string",
            f"apiServer={self.plane.server}",
            "--set",
            f"metrics.readers[0].kind=ServiceAccount,metrics.readers[0].name={SCRAPER},metrics.readers[0].namespace={NAMESPACE}",
        )
        say(f"helm install {RELEASE} (image nodeipam:{tag}, pullPolicy Never, clusterCIDR {CLUSTER_CIDR}, /{NODE_MASK} per Node)")

    def pending_pods(self) -> list[str]:
        """The Pods of the release still Pending: with the chart's defaults there are none once one is Ready."""
        return [pod["metadata"]["name"] for pod in self.controller_pods() if pod["status"].get("phase") == "Pending"]

    def controller_pods(self) -> list[dict[str, Any]]:
        selector = f"app.kubernetes.io/instance={RELEASE}"
        pods = self.get("pods", "-n", NAMESPACE, "-l", selector)["items"]
        return [pod for pod in pods if not pod["metadata"].get("deletionTimestamp")]

    def ready_controller(self, not_named: str = "", tag: str = "") -> dict[str, Any]:
        """Wait for one Ready controller Pod (other than ``not_named``, running ``tag`` if given)."""
        found: list[dict[str, Any]] = []

        def ready() -> bool:
            self.node.check_alive()
            found[:] = [
                pod
                for pod in self.controller_pods()
                if pod["metadata"]["name"] != not_named
                and (not tag or pod["spec"]["containers"][0]["image"].endswith(f":{tag}"))
                and any(c["type"] == "Ready" and c["status"] == "True" for c in pod["status"].get("conditions", []))
            ]
            return len(found) == 1

        wait_until(ready, 240, "a Ready controller Pod")
        return found[0]

    def lease_holder(self) -> str:
        lease = json.loads(self.kubectl("get", "lease", RELEASE, "-n", NAMESPACE, "--ignore-not-found", "-o", "json") or "{}")
        return str(lease.get("spec", {}).get("holderIdentity") or "")

    def wait_new_holder(self, old: str) -> str:
        holder: list[str] = [""]

        def changed() -> bool:
            holder[0] = self.lease_holder()
            return bool(holder[0]) and holder[0] != old

        wait_until(changed, 120, f"a Lease holder other than {old!r}")
        return holder[0]

    def nodeipam(self, *args: str) -> subprocess.CompletedProcess[str]:
        """The CLI of this checkout against the cluster, with the ranges read from the chart's Deployment."""
        nodeipam = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "nodeipam"
        return subprocess.run(
            [str(nodeipam), *args, f"--kubeconfig={self.plane.kubeconfig}", f"--deployment={NAMESPACE}/{RELEASE}"],
            capture_output=True,
            text=True,
            timeout=120,
        )

    def scrape_metrics(self, pod: dict[str, Any]) -> str:
        """GET https://<pod IP>:9254/metrics with a token the chart's metrics-reader ClusterRole allows."""
        token = self.kubectl("create", "token", SCRAPER, "-n", NAMESPACE, "--duration=10m").strip()
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # the controller's certificate is self-signed, as kube-controller-manager's
        url = f"https://{pod['status']['podIP']}:9254/metrics"
        request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(request, context=context, timeout=30) as response:
            return str(response.read().decode())

    # -- application pods --------------------------------------------------------------------------------

    def run_app(self, name: str, replicas: int) -> None:
        """Pods that need nothing pulled: the sandbox image is the app, on the real Node only."""
        deployment = {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": {"app": name}},
                "template": {
                    "metadata": {"labels": {"app": name}},
                    "spec": {
                        "nodeSelector": {"kubernetes.io/hostname": self.node.node_name},
                        "tolerations": [{"key": "node-role.kubernetes.io/control-plane", "operator": "Exists"}],
                        "automountServiceAccountToken": False,
                        "terminationGracePeriodSeconds": 5,
                        "containers": [{"name": "app", "image": assets.PAUSE_IMAGE, "imagePullPolicy": "Never"}],
                    },
                },
            },
        }
        self.plane.kubectl("apply", "-f", "-", input_text=json.dumps(deployment))

    def app_pod_ips(self, name: str, replicas: int) -> dict[str, str]:
        ips: dict[str, str] = {}

        def running() -> bool:
            self.node.check_alive()
            pods = self.get("pods", "-n", "default", "-l", f"app={name}")["items"]
            ips.clear()
            ips.update(
                {
                    pod["metadata"]["name"]: pod["status"].get("podIP", "")
                    for pod in pods
                    if pod["status"].get("phase") == "Running" and not pod["metadata"].get("deletionTimestamp")
                }
            )
            return len(ips) == replicas and all(ips.values())

        wait_until(running, 180, f"{replicas} Running pods of {name} with IPs")
        return dict(ips)

    def delete_app(self, name: str) -> None:
        self.kubectl("delete", "deployment", name, "-n", "default", "--ignore-not-found", "--wait=true", "--timeout=60s")


def inside(ip: str, cidr: str) -> bool:
    return netaddr.IPAddress(ip) in netaddr.IPNetwork(cidr)
