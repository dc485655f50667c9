"""`helm install` the chart into a real kube-apiserver and run the controller exactly as the pod would.

There is no kubelet and no image here, so the Deployment's pods never run. Instead the controller runs
as a local process with the container args read back from the installed Deployment, authenticated
with a TokenRequest token of the chart's ServiceAccount: whatever it manages to do, it does with
exactly the chart's RBAC.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shlex
import shutil
import ssl
import subprocess
import tempfile
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from localcluster.binaries import ensure_binaries
from localcluster.cluster import LocalControlPlane
from localcluster.nodebodies import realistic_node
from tests.conftest import wait_for
from tests.integration.conftest import Cluster, ControllerProcess, run_cli

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "manifests" / "charts" / "nodeipam"
RENDERED = ROOT / "manifests" / "nodeipam.yaml"
STOP_TIMEOUT = 15.0


@dataclasses.dataclass(frozen=True)
class Family:
    cluster_cidr: str
    node_mask: int
    out_of_range: str  # a podCIDR of the same family outside cluster_cidr


FAMILIES = [
    pytest.param(Family("10.244.0.0/16", 24, "192.168.7.0/24"), id="ipv4"),
    pytest.param(Family("fd00:10:244::/56", 64, "fd00:99::/64"), id="ipv6"),
]


class Helm:
    """helm against the local control plane, with its own config/cache/data directories."""

    def __init__(self, plane: LocalControlPlane) -> None:
        self.binary = str(ensure_binaries(("helm",))["helm"])
        self.plane = plane
        self.home = Path(tempfile.mkdtemp(prefix="nodeipam-helm-"))
        self.env = dict(
            plane.env(),
            HELM_CONFIG_HOME=str(self.home / "config"),
            HELM_CACHE_HOME=str(self.home / "cache"),
            HELM_DATA_HOME=str(self.home / "data"),
        )

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [self.binary, f"--kubeconfig={self.plane.kubeconfig}", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if check:
            assert result.returncode == 0, f"helm {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
        return result


@dataclasses.dataclass
class Release:
    plane: LocalControlPlane
    helm: Helm
    name: str
    namespace: str
    family: Family
    install_output: str

    @property
    def cluster_cidr(self) -> str:
        return self.family.cluster_cidr

    @property
    def fullname(self) -> str:
        return self.name if "nodeipam" in self.name else f"{self.name}-nodeipam"

    @property
    def subject(self) -> str:
        return f"system:serviceaccount:{self.namespace}:{self.fullname}"

    def get(self, kind: str, name: str, namespaced: bool = True) -> dict[str, Any] | None:
        scope = ["-n", self.namespace] if namespaced else []
        out = self.plane.kubectl("get", kind, name, *scope, "--ignore-not-found", "-o", "json")
        return json.loads(out) if out.strip() else None

    def container_args(self) -> list[str]:
        deployment = self.get("deployment", self.fullname)
        assert deployment is not None, "the chart's Deployment is missing"
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        assert container["command"] == ["nodeipam"]
        return list(container["args"])

    def token_kubeconfig(self, directory: Path) -> Path:
        """A kubeconfig with a TokenRequest token of the chart's ServiceAccount."""
        token = self.plane.kubectl("create", "token", self.fullname, "-n", self.namespace, "--duration=1h").strip()
        assert token.count(".") == 2, "not a JWT"
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "local", "cluster": {"server": self.plane.server, "insecure-skip-tls-verify": True}}],
            "users": [{"name": "nodeipam", "user": {"token": token}}],
            "contexts": [{"name": "nodeipam", "context": {"cluster": "local", "user": "nodeipam", "namespace": self.namespace}}],
            "current-context": "nodeipam",
        }
        path = directory / f"{self.fullname}.kubeconfig"
        path.write_text(yaml.safe_dump(config))
        path.chmod(0o600)
        return path


def install(plane: LocalControlPlane, name: str, namespace: str, family: Family, *extra: str) -> Release:
    helm = Helm(plane)
    result = helm.run(
        "install",
        name,
        str(CHART),
        "--namespace",
        namespace,
        "--create-namespace",
        "--set-string",
        f"clusterCIDR={family.cluster_cidr}",
        *extra,
    )
    return Release(plane, helm, name, namespace, family, result.stdout)


def remove(release: Release) -> None:
    release.helm.run("uninstall", release.name, "--namespace", release.namespace, check=False)
    release.plane.kubectl("delete", "lease", release.fullname, "-n", release.namespace, "--ignore-not-found", check=False)
    # No namespace controller runs here: the namespace stays Terminating, harmlessly, until the plane stops.
    release.plane.kubectl("delete", "namespace", release.namespace, "--wait=false", "--ignore-not-found", check=False)
    shutil.rmtree(release.helm.home, ignore_errors=True)


@pytest.fixture(scope="module", params=FAMILIES)
def release(request: pytest.FixtureRequest, control_plane: LocalControlPlane) -> Iterator[Release]:
    suffix = uuid.uuid4().hex[:6]
    namespace = f"nodeipam-e2e-{suffix}"
    reader = f"metrics.readers[0].kind=ServiceAccount,metrics.readers[0].name={SCRAPER},metrics.readers[0].namespace={namespace}"
    installed = install(control_plane, f"ipam-{suffix}", namespace, request.param, "--set", reader)
    yield installed
    remove(installed)


#: The ServiceAccount the release lets scrape /metrics (metrics.readers), as Prometheus's would be.
SCRAPER = "scraper"


def can(plane: LocalControlPlane, subject: str, *args: str) -> bool:
    answer = plane.kubectl("auth", "can-i", *args, f"--as={subject}", check=False).strip()
    assert answer in ("yes", "no"), f"kubectl auth can-i {' '.join(args)}: {answer!r}"
    return answer == "yes"


# -- the installed objects --------------------------------------------------------------------------


def test_install_creates_the_chart_objects(release: Release) -> None:
    name, namespace = release.fullname, release.namespace
    for kind in ("serviceaccount", "deployment", "role", "rolebinding", "service"):
        assert release.get(kind, name) is not None, f"{kind}/{name} missing in {namespace}"
    for kind in ("clusterrole", "clusterrolebinding"):
        assert release.get(kind, name, namespaced=False) is not None, f"{kind}/{name} missing"
    deployment = release.get("deployment", name)
    assert deployment is not None
    spec = deployment["spec"]
    assert spec["replicas"] == 1  # no control-plane Node here: one replica, none Pending (as many as fit, at most 2)
    assert release.get("poddisruptionbudget", name) is None  # no standby to keep
    assert release.get("serviceaccount", f"{name}-scraper") is not None
    assert spec["template"]["spec"]["hostNetwork"] is True
    assert spec["template"]["spec"]["serviceAccountName"] == name
    service = release.get("service", name)
    assert service is not None
    assert [port["name"] for port in service["spec"]["ports"]] == ["metrics"]


def test_notes_show_how_to_inspect_pod_cidrs(release: Release) -> None:
    notes = release.install_output
    assert "kubectl get nodes -o custom-columns=NAME:.metadata.name,CIDR:.spec.podCIDR" in notes
    assert (
        f"kubectl -n {release.namespace} exec deploy/{release.fullname} -- nodeipam status --cluster-cidr={release.cluster_cidr}"
        in notes
    )
    assert "kubectl get events -n default --field-selector reason=CIDRNotAvailable" in notes


def test_service_account_has_exactly_the_minimal_rights(release: Release) -> None:
    plane, who, namespace, lease = release.plane, release.subject, release.namespace, release.fullname
    allowed = [
        ("get", "nodes"),
        ("list", "nodes"),
        ("watch", "nodes"),
        ("patch", "nodes"),
        ("create", "events", "-n", "default"),
        ("create", "tokenreviews.authentication.k8s.io"),
        ("create", "subjectaccessreviews.authorization.k8s.io"),
        ("create", "leases.coordination.k8s.io", "-n", namespace),
        ("get", f"leases.coordination.k8s.io/{lease}", "-n", namespace),
        ("update", f"leases.coordination.k8s.io/{lease}", "-n", namespace),
    ]
    denied = [
        ("delete", "nodes"),
        ("update", "nodes"),
        ("create", "nodes"),
        ("patch", "nodes", "--subresource=status"),
        ("update", "nodes", "--subresource=status"),
        ("get", "secrets", "-n", namespace),
        ("list", "secrets", "--all-namespaces"),
        ("list", "pods", "--all-namespaces"),
        ("list", "pods", "-n", namespace),
        ("list", "namespaces"),
        ("list", "customresourcedefinitions.apiextensions.k8s.io"),
        ("create", "leases.coordination.k8s.io", "-n", "kube-system"),
        ("get", f"leases.coordination.k8s.io/{lease}", "-n", "kube-system"),
        ("update", "leases.coordination.k8s.io/some-other-lease", "-n", namespace),
        ("list", "leases.coordination.k8s.io", "-n", namespace),
        ("delete", f"leases.coordination.k8s.io/{lease}", "-n", namespace),
        ("create", "events.events.k8s.io", "-n", "default"),
        ("delete", "events", "-n", "default"),
        ("patch", "events", "-n", "default"),
        ("create", "events", "-n", namespace),
        ("create", "events", "-n", "kube-system"),
        ("create", "localsubjectaccessreviews.authorization.k8s.io", "-n", namespace),
        ("get", "/metrics"),
    ]
    wrong = [" ".join(check) for check in allowed if not can(plane, who, *check)]
    wrong += ["NOT " + " ".join(check) for check in denied if can(plane, who, *check)]
    assert not wrong, f"RBAC of {who} is off: {wrong}"


def classified(plane: LocalControlPlane, token: str) -> tuple[str, str]:
    """(FlowSchema, priority level) that classified a request sent with `token`: the API server names their
    UIDs in its answer's headers."""
    request = urllib.request.Request(plane.server + "/api/v1/nodes?limit=1", headers={"Authorization": f"Bearer {token}"})
    insecure = ssl.create_default_context()
    insecure.check_hostname = False
    insecure.verify_mode = ssl.CERT_NONE
    try:
        with urllib.request.urlopen(request, context=insecure, timeout=30) as response:
            headers = response.headers
    except urllib.error.HTTPError as error:  # a 403 is classified too
        headers = error.headers
    names = {}
    for kind in ("flowschemas", "prioritylevelconfigurations"):
        for item in json.loads(plane.kubectl("get", kind, "-o", "json"))["items"]:
            names[item["metadata"]["uid"]] = item["metadata"]["name"]
    return names.get(headers["X-Kubernetes-PF-FlowSchema-UID"], "?"), names.get(headers["X-Kubernetes-PF-PriorityLevel-UID"], "?")


def test_the_service_accounts_requests_are_classified_by_the_charts_flow_schema(release: Release) -> None:
    """Outside kube-system the chart's FlowSchema moves the controller from workload-low to workload-high;
    in kube-system the built-in one already gives workload-high (ours then gives a flow of its own)."""
    plane, namespace = release.plane, release.namespace
    assert release.get("flowschema", release.fullname, namespaced=False) is not None
    ours = plane.kubectl("create", "token", release.fullname, "-n", namespace, "--duration=1h").strip()
    # The API server's flow-control configuration follows new FlowSchemas through a watch: poll.
    expected = (release.fullname, "workload-high")
    wait_for(lambda: classified(plane, ours) == expected, timeout=30, what=f"{release.subject}'s requests to go to workload-high")
    plane.kubectl("create", "serviceaccount", "bystander", "-n", namespace, check=False)
    bystander = plane.kubectl("create", "token", "bystander", "-n", namespace, "--duration=1h").strip()
    assert classified(plane, bystander) == ("service-accounts", "workload-low")  # where ours would be without it
    plane.kubectl("create", "serviceaccount", f"bystander-{namespace}", "-n", "kube-system", check=False)
    try:
        in_kube_system = plane.kubectl("create", "token", f"bystander-{namespace}", "-n", "kube-system", "--duration=1h").strip()
        assert classified(plane, in_kube_system) == ("kube-system-service-accounts", "workload-high")
    finally:
        plane.kubectl(
            "delete", "serviceaccount", f"bystander-{namespace}", "-n", "kube-system", "--ignore-not-found", check=False
        )


# -- the controller with the chart's args and the ServiceAccount's token ----------------------------


@pytest.fixture
def chart_controller(release: Release, tmp_path: Path) -> Iterator[ControllerProcess]:
    """The Deployment's args as a local process with the ServiceAccount's kubeconfig."""
    kubeconfig = release.token_kubeconfig(tmp_path)
    whoami = subprocess.run(
        [str(release.plane.binaries["kubectl"]), f"--kubeconfig={kubeconfig}", "auth", "whoami", "-o", "json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert whoami.returncode == 0, whoami.stderr
    assert json.loads(whoami.stdout)["status"]["userInfo"]["username"] == release.subject
    env = {key: value for key, value in os.environ.items() if key != "KUBECONFIG"}
    process = ControllerProcess([*release.container_args(), f"--kubeconfig={kubeconfig}"], tmp_path, env)
    yield process
    code = process.stop()
    assert code == 0, f"controller exited with {code}:\n{process.log()}"
    lease = release.get("lease", release.fullname)
    assert lease is not None and not lease["spec"].get("holderIdentity"), "the lease is released on SIGTERM"


def test_controller_with_the_chart_args_and_token(
    release: Release, cluster: Cluster, chart_controller: ControllerProcess
) -> None:
    family = release.family
    args = chart_controller.argv
    assert f"--leader-elect-resource-namespace={release.namespace}" in args
    assert f"--leader-elect-resource-name={release.fullname}" in args
    assert f"--cluster-cidr={release.cluster_cidr}" in args

    def holder() -> str:
        lease = release.get("lease", release.fullname)
        return str((lease or {}).get("spec", {}).get("holderIdentity") or "")

    identity = wait_for(holder, timeout=30, what=f"the lease {release.namespace}/{release.fullname} to be held")
    assert re.fullmatch(r".+_[0-9a-f-]{36}", identity), identity
    wait_for(lambda: chart_controller.get("/readyz") == 200, timeout=30, what="/readyz to answer 200 (the readinessProbe)")
    # /metrics over https, reviewed by the API server with the chart ServiceAccount's rights.
    plane, namespace = release.plane, release.namespace
    plane.kubectl("create", "serviceaccount", SCRAPER, "-n", namespace, check=False)
    plane.kubectl("create", "serviceaccount", "outsider", "-n", namespace, check=False)
    scraper_token = plane.kubectl("create", "token", SCRAPER, "-n", namespace, "--duration=1h").strip()
    outsider_token = plane.kubectl("create", "token", "outsider", "-n", namespace, "--duration=1h").strip()
    assert can(plane, f"system:serviceaccount:{namespace}:{SCRAPER}", "get", "/metrics")
    assert chart_controller.get("/healthz", token=None) == 200
    assert chart_controller.get("/metrics", token=None) == 401
    assert chart_controller.get("/metrics", token=outsider_token) == 403
    assert chart_controller.get("/metrics", token=scraper_token) == 200
    # The example of the install notes, as printed: its token may get /metrics.
    curl = next(line for line in release.install_output.splitlines() if line.strip().startswith("curl "))
    create_token = re.search(r"\$\(kubectl (create token [^)]+)\)", curl)
    assert create_token is not None, curl
    notes_token = plane.kubectl(*shlex.split(create_token.group(1))).strip()
    assert chart_controller.get("/metrics", token=notes_token) == 200

    names = [f"chart-node-{i}" for i in range(4)]
    cluster.create_nodes(names)
    cluster.wait_single_ranges_inside(names, family.cluster_cidr, family.node_mask)

    cluster.create_nodes(["stray"], pod_cidrs=(family.out_of_range,))
    event = cluster.wait_event("stray", "InvalidPodCIDR")
    assert event.type == "Warning"
    assert event.metadata.namespace == "default"
    assert family.out_of_range in event.message

    # The `nodeipam status` command NOTES.txt prints works with the ServiceAccount's rights too.
    notes_command = next(line for line in release.install_output.splitlines() if "nodeipam status" in line)
    status_args = shlex.split(notes_command.split(" -- nodeipam ", 1)[1])
    kubeconfig = next(arg for arg in args if arg.startswith("--kubeconfig=")).removeprefix("--kubeconfig=")
    status = run_cli(*status_args, "-o", "json", kubeconfig=kubeconfig)
    assert status.returncode == 0, status.stderr
    (usage,) = json.loads(status.stdout)["ranges"]
    assert (usage["cluster_cidr"], usage["allocated"]) == (family.cluster_cidr, len(names))

    log = chart_controller.log()
    assert "forbidden" not in log.lower(), f"an API call was denied by RBAC:\n{log}"
    assert chart_controller.process.poll() is None, log


# -- Pod Security -----------------------------------------------------------------------------------


def test_pod_meets_restricted_pod_security_without_host_network(control_plane: LocalControlPlane) -> None:
    """The API server's PodSecurity admission judges a Pod made from the Deployment's template."""
    suffix = uuid.uuid4().hex[:6]
    namespace = f"nodeipam-restricted-{suffix}"
    control_plane.kubectl("create", "namespace", namespace)
    control_plane.kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted")
    release = install(
        control_plane, f"ipam-{suffix}", namespace, Family("10.244.0.0/16", 24, "192.168.7.0/24"), "--set", "hostNetwork=false"
    )
    try:
        deployment = release.get("deployment", release.fullname)
        assert deployment is not None
        spec = deployment["spec"]["template"]["spec"]
        assert not spec.get("hostNetwork"), "hostNetwork=false"

        kubectl = str(control_plane.binaries["kubectl"])

        def create_pod(pod_spec: dict[str, Any]) -> subprocess.CompletedProcess[str]:
            pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "pss-check", "namespace": namespace}, "spec": pod_spec}
            return subprocess.run(
                [kubectl, f"--kubeconfig={control_plane.kubeconfig}", "create", "--dry-run=server", "-o", "name", "-f", "-"],
                input=json.dumps(pod),
                capture_output=True,
                text=True,
                timeout=60,
            )

        accepted = create_pod(spec)
        assert accepted.returncode == 0, f"the chart's pod violates the restricted standard:\n{accepted.stderr}"
        rejected = create_pod({**spec, "hostNetwork": True})
        assert rejected.returncode != 0, "hostNetwork must be refused under restricted"
        assert 'violates PodSecurity "restricted' in rejected.stderr, rejected.stderr
        assert "hostNetwork" in rejected.stderr, rejected.stderr
    finally:
        remove(release)


# -- the plain manifests, upgrade, uninstall --------------------------------------------------------


def test_rendered_manifest_is_accepted_by_the_api_server(control_plane: LocalControlPlane) -> None:
    out = control_plane.kubectl("apply", "--dry-run=server", "-f", str(RENDERED))
    kinds = ("serviceaccount", "clusterrole", "clusterrolebinding", "role", "rolebinding", "service", "deployment", "flowschema")
    for kind in kinds:
        assert re.search(rf"^{kind}[^ ]*/nodeipam (created|configured|unchanged) \(server dry run\)$", out, re.MULTILINE), out


@pytest.mark.parametrize(("control_plane_nodes", "replicas"), [(0, 1), (1, 1), (3, 2)], ids=["none", "one", "three"])
def test_replicas_fit_the_control_plane_nodes(control_plane: LocalControlPlane, control_plane_nodes: int, replicas: int) -> None:
    """By default, as many replicas as can run without one Pending for good (host ports), at most 2, counted at install."""
    suffix = uuid.uuid4().hex[:6]
    names = [f"control-plane-{suffix}-{index}" for index in range(control_plane_nodes)]
    cordoned = f"cordoned-{suffix}"  # a control-plane Node no pod goes to: not counted
    for name in [*names, cordoned]:
        control_plane.kubectl("create", "-f", "-", input_text=json.dumps(realistic_node(name, 1)))
        control_plane.kubectl("label", "node", name, "node-role.kubernetes.io/control-plane=")
    control_plane.kubectl("cordon", cordoned)
    helm = Helm(control_plane)
    try:
        dry_run = helm.run(
            "install",
            f"fit-{suffix}",
            str(CHART),
            "--namespace",
            f"fit-{suffix}",
            "--dry-run=server",
            "--set",
            "clusterCIDR=10.244.0.0/16",
        )
        manifests = [doc for doc in yaml.safe_load_all(dry_run.stdout.split("MANIFEST:", 1)[1].split("NOTES:", 1)[0]) if doc]
        (deployment,) = [doc for doc in manifests if doc["kind"] == "Deployment"]
        assert deployment["spec"]["replicas"] == replicas
        assert any(doc["kind"] == "PodDisruptionBudget" for doc in manifests) == (replicas > 1)
    finally:
        control_plane.kubectl("delete", "node", *names, cordoned, "--ignore-not-found", check=False)
        shutil.rmtree(helm.home, ignore_errors=True)


def test_upgrade_then_uninstall_leaves_nothing_behind(control_plane: LocalControlPlane) -> None:
    suffix = uuid.uuid4().hex[:6]
    release = install(
        control_plane,
        f"nodeipam-{suffix}",
        f"nodeipam-life-{suffix}",
        Family("10.244.0.0/16", 24, "192.168.7.0/24"),
        "--set",
        "replicas=2",
    )
    try:
        name, namespace = release.fullname, release.namespace
        assert name == release.name
        assert release.get("poddisruptionbudget", name) is not None

        release.helm.run(
            "upgrade", release.name, str(CHART), "--namespace", namespace, "--reuse-values", "--set", "replicas=3,logLevel=debug"
        )
        deployment = release.get("deployment", name)
        assert deployment is not None
        assert deployment["spec"]["replicas"] == 3
        assert "--log-level=debug" in release.container_args()
        assert f"--cluster-cidr={release.cluster_cidr}" in release.container_args()
        status = json.loads(release.helm.run("status", release.name, "--namespace", namespace, "-o", "json").stdout)
        assert (status["version"], status["info"]["status"]) == (2, "deployed")

        release.helm.run("uninstall", release.name, "--namespace", namespace)
        objects = [
            ("serviceaccount", True),
            ("deployment", True),
            ("role", True),
            ("rolebinding", True),
            ("service", True),
            ("poddisruptionbudget", True),
            ("clusterrole", False),
            ("clusterrolebinding", False),
            ("flowschema", False),
        ]

        def leftovers() -> list[str]:
            return [kind for kind, namespaced in objects if release.get(kind, name, namespaced) is not None]

        wait_for(lambda: not leftovers(), timeout=30, what="every object of the chart to be deleted")
        helm_records = control_plane.kubectl("get", "secrets", "-n", namespace, "-l", "owner=helm", "-o", "name")
        assert not helm_records.strip(), helm_records
    finally:
        remove(release)


def test_status_and_check_read_the_ranges_from_the_deployment(release: Release) -> None:
    reference = f"--deployment={release.namespace}/{release.fullname}"
    kubeconfig = release.plane.kubeconfig
    status = run_cli("status", reference, "-o", "json", kubeconfig=kubeconfig)
    assert status.returncode == 0, status.stderr
    (usage,) = json.loads(status.stdout)["ranges"]
    assert (usage["cluster_cidr"], usage["node_mask_size"]) == (release.family.cluster_cidr, release.family.node_mask)
    missing = run_cli("check", f"--deployment={release.namespace}/no-such-deployment", kubeconfig=kubeconfig)
    assert missing.returncode == 2
    assert "no-such-deployment" in missing.stderr and "Traceback" not in missing.stderr


# -- the NodeCIDRPool CRD: installed by helm, kept across upgrade and uninstall -----------------------------

POOL_CRD_NAME = "nodecidrpools.nodeipam.io"


def test_helm_installs_the_pool_crd_and_keeps_it_across_upgrade_and_uninstall() -> None:
    """On a cluster that never saw it, `helm install` creates the CRD from the chart's crds/, CEL included.

    Helm never changes or deletes what crds/ installed: an upgrade keeps it (a newer CRD is applied with
    kubectl, as the README says, and that apply is accepted), and an uninstall leaves it and the pools.
    A control plane of its own: the shared one has the CRD from the other tests already.
    """
    with LocalControlPlane() as plane:
        assert not plane.kubectl("get", "crd", POOL_CRD_NAME, "--ignore-not-found", "-o", "name").strip()
        release = install(plane, "nodeipam", "nodeipam-crd", Family("10.244.0.0/16", 24, "10.96.0.0/12"))
        try:
            plane.kubectl("wait", "--for=condition=Established", f"crd/{POOL_CRD_NAME}", "--timeout=60s")
            served = json.loads(plane.kubectl("get", "crd", POOL_CRD_NAME, "-o", "json"))
            chart_crd = yaml.safe_load((CHART / "crds" / "nodecidrpools.yaml").read_text())
            assert [version["schema"] for version in served["spec"]["versions"]] == [
                version["schema"] for version in chart_crd["spec"]["versions"]
            ]
            pool = {
                "apiVersion": "nodeipam.io/v1alpha1",
                "kind": "NodeCIDRPool",
                "metadata": {"name": "gpu"},
                "spec": {"ipv4": {"nodeMaskSize": 24, "cidrs": [{"cidr": "10.245.0.0/16"}]}},
            }
            bad_spec = {"ipv4": {"nodeMaskSize": 24, "cidrs": [{"cidr": "10.245.0.0/33"}]}}
            bad = {**pool, "metadata": {"name": "bad"}, "spec": bad_spec}
            with pytest.raises(RuntimeError, match="is invalid"):
                plane.kubectl("apply", "-f", "-", input_text=json.dumps(bad))
            plane.kubectl("apply", "-f", "-", input_text=json.dumps(pool))
            uid = served["metadata"]["uid"]

            release.helm.run("upgrade", release.name, str(CHART), "--namespace", release.namespace, "--reuse-values")
            assert json.loads(plane.kubectl("get", "crd", POOL_CRD_NAME, "-o", "json"))["metadata"]["uid"] == uid
            applied = plane.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CHART / "crds"))
            assert POOL_CRD_NAME in applied

            release.helm.run("uninstall", release.name, "--namespace", release.namespace)
            assert json.loads(plane.kubectl("get", "crd", POOL_CRD_NAME, "-o", "json"))["metadata"]["uid"] == uid
            assert plane.kubectl("get", "nodecidrpool", "gpu", "-o", "name").strip() == "nodecidrpool.nodeipam.io/gpu"
        finally:
            remove(release)
