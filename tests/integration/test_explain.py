"""`nodeipam explain NODE` against the real API server, beside the controller that chose: a Node served from a pool,
one from the flags' range, one waiting because every pool that may serve it is full, one waiting with no leader,
one with a patch of unknown outcome recorded in the Lease; and the exit statuses."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from controller import inflight
from localcluster.cluster import LocalControlPlane
from tests.integration.conftest import Cluster, ControllerProcess, run_cli
from tests.integration.test_cli_conventions import nodeipam_deployment
from tests.integration.test_cli_errors import dead_server, kubeconfig_like
from tests.integration.test_pools_runtime import FAMILIES, GPU, V4, Family, Pools, Start, create

pytestmark = pytest.mark.integration

NAMESPACE = "explain"
DEPLOYMENT = f"--deployment={NAMESPACE}/nodeipam"
IDENTITY = "explain-0"


@pytest.fixture
def pool_api(control_plane: LocalControlPlane, pool_crd: str) -> Iterator[Pools]:
    the_pools = Pools(control_plane)
    the_pools.delete_all()
    yield the_pools
    the_pools.delete_all()


def lease_name(family: Family) -> str:
    return f"nodeipam-explain-{family.key}"


def run_flags(family: Family) -> list[str]:
    """The controller's flags, as its Deployment lists them: one Node range in the flags' range, a Lease of its own."""
    return [
        f"--cluster-cidr={family.default}",
        f"--node-cidr-mask-size={family.mask}",
        f"--leader-elect-resource-namespace={NAMESPACE}",
        f"--leader-elect-resource-name={lease_name(family)}",
    ]


def explained(cluster: Cluster, node: str, *flags: str) -> dict[str, Any]:
    result = run_cli("explain", node, DEPLOYMENT, "-o", "json", *flags, kubeconfig=cluster.plane.kubeconfig)
    assert result.returncode == 0, result.stdout + result.stderr
    document: dict[str, Any] = json.loads(result.stdout)
    return document


def verdicts(document: dict[str, Any]) -> list[tuple[str, str]]:
    return [(pool["pool"], pool["verdict"]) for pool in document["pools"]]


@pytest.mark.parametrize("family", FAMILIES)
def test_explain_each_state(cluster: Cluster, pool_api: Pools, start_controller: Start, family: Family) -> None:
    plane = cluster.plane
    plane.kubectl("create", "namespace", NAMESPACE, check=False)
    plane.kubectl("apply", "-f", "-", input_text=json.dumps(nodeipam_deployment(NAMESPACE, ["run", *run_flags(family)])))
    pool_api.apply("gpu", {family.key: family.family(family.first), "nodeSelector": GPU, "priority": 10})
    controller: ControllerProcess = start_controller(
        *run_flags(family),
        "--leader-elect=true",
        f"--leader-elect-identity={IDENTITY}",
        "--leader-elect-lease-duration=4s",
        "--leader-elect-renew-deadline=3s",
        "--leader-elect-retry-period=1s",
        "--resync-period=10m",
    )
    create(cluster, "gpu-a", 0, gpu="true")
    assert cluster.wait_assigned(["gpu-a"])["gpu-a"] == [family.first]
    create(cluster, "plain-a", 1)
    assert cluster.wait_assigned(["plain-a"])["plain-a"] == [family.default]
    create(cluster, "gpu-b", 2, gpu="true")
    cluster.wait_event("gpu-b", "CIDRNotAvailable")

    served = explained(cluster, "gpu-a")
    assert (served["state"], served["pool"], served["pod_cidrs"]) == ("served", "gpu", [family.first])
    assert verdicts(served) == [("gpu", "holds"), ("(default)", "may serve")]
    assert served["leader"]["holder"] == IDENTITY

    flags_range = explained(cluster, "plain-a")
    assert (flags_range["state"], flags_range["pool"], flags_range["pod_cidrs"]) == ("served", "(default)", [family.default])
    assert verdicts(flags_range) == [("(default)", "holds"), ("gpu", "no match")]
    assert "from the flags' range" in flags_range["summary"]

    full = explained(cluster, "gpu-b")
    assert (full["state"], full["pool"], full["pod_cidrs"]) == ("waiting", "", [])
    assert verdicts(full) == [("gpu", "full"), ("(default)", "full")]
    assert "every pool that may serve it is full" in full["summary"]

    text = run_cli("explain", "gpu-b", DEPLOYMENT, kubeconfig=plane.kubeconfig)
    assert text.returncode == 0, text.stderr
    assert text.stdout.splitlines()[0] == "node gpu-b: waiting"
    assert any(line.split()[:2] == ["gpu", "full"] for line in text.stdout.splitlines())

    # No leader: the controller lets its Lease go; a range freed in the pool is what the next one would give.
    assert controller.stop() == 0
    cluster.delete_node("gpu-a")
    alone = explained(cluster, "gpu-b")
    assert (alone["state"], alone["pool"], alone["pod_cidrs"]) == ("unassigned", "gpu", [family.first])
    assert verdicts(alone) == [("gpu", "taken"), ("(default)", "not tried")]
    assert alone["leader"]["holder"] == ""
    assert "no controller leads" in alone["summary"]

    # A patch of unknown outcome recorded in the Lease: the next leader patches the same ranges.
    uid = str(cluster.core.read_node("gpu-b").metadata.uid)  # type: ignore[union-attr]
    record = inflight.encode([inflight.InFlight("gpu-b", uid, (family.first,))])
    lease = f"lease/{lease_name(family)}"
    plane.kubectl("annotate", "-n", NAMESPACE, lease, f"{inflight.ANNOTATION}={record}", "--overwrite")
    pending = explained(cluster, "gpu-b")
    assert (pending["state"], pending["pool"], pending["in_flight"]) == ("in-flight", "gpu", [family.first])
    plane.kubectl("annotate", "-n", NAMESPACE, lease, f"{inflight.ANNOTATION}-")


def test_exit_statuses(cluster: Cluster, tmp_path: Path) -> None:
    """0 explained; 2 a Node that does not exist, or bad flags; 3 the cluster cannot be read."""
    plane = cluster.plane
    cluster.create_nodes(["here"])
    flags = (f"--cluster-cidr={V4.default}", f"--node-cidr-mask-size={V4.mask}")
    here = run_cli("explain", "here", *flags, kubeconfig=plane.kubeconfig)
    assert here.returncode == 0, here.stderr
    assert here.stdout.startswith("node here: unassigned")
    assert "no controller leads" in here.stdout or "leads and gives it" in here.stdout  # the default Lease
    missing = run_cli("explain", "nowhere", *flags, kubeconfig=plane.kubeconfig)
    assert (missing.returncode, missing.stdout) == (2, "")
    assert missing.stderr.strip() == "nodeipam explain: error: there is no node nowhere; kubectl get nodes lists them"
    bad = run_cli("explain", "here", kubeconfig=plane.kubeconfig)
    assert bad.returncode == 2 and "--cluster-cidr" in bad.stderr
    yaml_out = run_cli("explain", "here", *flags, "-o", "yaml", kubeconfig=plane.kubeconfig)
    assert yaml_out.returncode == 0 and "state: unassigned" in yaml_out.stdout
    gone = run_cli("explain", "here", *flags, kubeconfig=kubeconfig_like(plane, tmp_path / "dead", dead_server("127.0.0.1")))
    assert gone.returncode == 3
    assert gone.stderr.startswith("nodeipam explain: error: cannot reach the API server"), gone.stderr
