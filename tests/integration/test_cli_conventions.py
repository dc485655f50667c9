"""The conventions of a command-line tool, against the real API server: -o json|yaml, distinct exit statuses,
--service-cluster-ip-range in `check`, --context, kube-controller-manager's flags pasted into `run`, and
`kubectl ipam` run by a real kubectl through its plugin mechanism."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from localcluster.cluster import LocalControlPlane
from tests.integration.conftest import ROOT, Cluster, ControllerProcess, run_cli
from tests.integration.test_cli_errors import dead_server

pytestmark = pytest.mark.integration

Start = Callable[..., ControllerProcess]


@pytest.mark.parametrize(
    ("cluster_cidr", "good", "duplicate"),
    [
        pytest.param("10.244.0.0/16", "10.244.1.0/24", "10.244.5.0/24", id="ipv4"),
        pytest.param("fd00:10:244::/48", "fd00:10:244:1::/64", "fd00:10:244:5::/64", id="ipv6"),
    ],
)
def test_json_and_yaml_are_one_document_and_exit_statuses_stay(
    cluster: Cluster, cluster_cidr: str, good: str, duplicate: str
) -> None:
    """status always exits 0; check exits 1 for its findings, whatever -o says."""
    cluster.create_nodes(["fmt-good"], pod_cidrs=(good,))
    cluster.create_nodes(["fmt-dup-a"], pod_cidrs=(duplicate,))
    cluster.create_nodes(["fmt-dup-b"], pod_cidrs=(duplicate,))
    kubeconfig = cluster.plane.kubeconfig
    for command, code in (("status", 0), ("check", 1)):
        as_json = run_cli(command, f"--cluster-cidr={cluster_cidr}", "-o", "json", kubeconfig=kubeconfig)
        as_yaml = run_cli(command, f"--cluster-cidr={cluster_cidr}", "-o", "yaml", kubeconfig=kubeconfig)
        assert (as_json.returncode, as_json.stderr) == (code, ""), as_json.stderr
        assert (as_yaml.returncode, as_yaml.stderr) == (code, ""), as_yaml.stderr
        document = json.loads(as_json.stdout)
        assert yaml.safe_load(as_yaml.stdout) == document
        assert document["nodes"] == 3
    problems = json.loads(run_cli("check", f"--cluster-cidr={cluster_cidr}", "-o", "json", kubeconfig=kubeconfig).stdout)
    assert problems["problems"] == [f"duplicate podCIDRs: node fmt-dup-a has {duplicate}, node fmt-dup-b has {duplicate}"]


@pytest.mark.parametrize(
    ("cluster_cidr", "service_range", "inside", "outside"),
    [
        pytest.param("10.0.0.0/16", "10.0.128.0/20", "10.0.130.0/24", "10.0.1.0/24", id="ipv4"),
        pytest.param("fd00:10::/48", "fd00:10:0:8000::/112", "fd00:10:0:8000::/64", "fd00:10:0:1::/64", id="ipv6"),
    ],
)
def test_check_finds_pod_cidrs_in_the_service_range(
    cluster: Cluster, cluster_cidr: str, service_range: str, inside: str, outside: str
) -> None:
    """As the controller warns of them (InvalidPodCIDR): pods there may get the addresses of Services."""
    cluster.create_nodes(["svc-inside"], pod_cidrs=(inside,))
    cluster.create_nodes(["svc-outside"], pod_cidrs=(outside,))
    kubeconfig = cluster.plane.kubeconfig
    without = run_cli("check", f"--cluster-cidr={cluster_cidr}", kubeconfig=kubeconfig)
    assert without.returncode == 0, without.stdout + without.stderr
    found = run_cli(
        "check", f"--cluster-cidr={cluster_cidr}", f"--service-cluster-ip-range={service_range}", kubeconfig=kubeconfig
    )
    assert found.returncode == 1, found.stdout + found.stderr
    (finding, summary) = found.stdout.splitlines()
    assert finding.startswith(f"node svc-inside: podCIDR {inside} overlaps the service range {service_range}")
    assert summary == "checked 2 nodes: 1 problem(s)"


def two_contexts(plane: LocalControlPlane, path: Path) -> str:
    """A kubeconfig whose current context points where nothing listens; context `local` is the real API server."""
    document = yaml.safe_load(Path(plane.kubeconfig).read_text())
    document["clusters"].append(
        {"name": "gone", "cluster": {"server": dead_server("127.0.0.1"), "insecure-skip-tls-verify": True}}
    )
    document["contexts"].append({"name": "gone", "context": {"cluster": "gone", "user": "admin"}})
    document["current-context"] = "gone"
    path.write_text(yaml.safe_dump(document))
    return str(path)


@pytest.mark.parametrize("command", ["status", "check", "plan"])
def test_context_picks_the_cluster_and_an_unreachable_one_exits_3(cluster: Cluster, tmp_path: Path, command: str) -> None:
    kubeconfig = two_contexts(cluster.plane, tmp_path / "kubeconfig")
    unreachable = run_cli(command, "--cluster-cidr=10.244.0.0/16", kubeconfig=kubeconfig)
    assert unreachable.returncode == 3, unreachable.stderr
    assert "cannot reach the API server" in unreachable.stderr
    chosen = run_cli(command, "--cluster-cidr=10.244.0.0/16", "--context=local", kubeconfig=kubeconfig)
    assert (chosen.returncode, chosen.stderr) == (0, ""), chosen.stderr


PASTED = [
    "--v=2",
    "--secure-port=10257",
    "--bind-address=127.0.0.1",
    "--profiling=false",
    "--use-service-account-credentials=true",
    "--controllers=*,bootstrapsigner,tokencleaner",
    "--leader-elect-resource-lock=leases",
    "--feature-gates=SomeGate=true",
    "--cluster-name=kubernetes",
    "--kube-api-qps=20",
]


def test_run_allocates_with_pasted_kube_controller_manager_flags(cluster: Cluster, start_controller: Start) -> None:
    controller = start_controller("--cluster-cidr=10.244.0.0/16", *PASTED)
    cluster.create_nodes(["pasted-a", "pasted-b"])
    cluster.wait_single_ranges_inside(["pasted-a", "pasted-b"], "10.244.0.0/16", 24)
    log = controller.log()
    for flag in PASTED[:-1]:
        assert f"nodeipam run: note: {flag} ignored: kube-controller-manager's flag for " in log, log


# -- kubectl ipam, through kubectl ------------------------------------------------------------------


def plugin_path(tmp_path: Path) -> dict[str, str]:
    """An environment whose PATH finds kubectl-ipam, as `pip install` writes it for pyproject's [project.scripts] entry.

    Written from the entry point here, so that kubectl runs this checkout's code (the virtualenv's bin may hold a
    kubectl-ipam from an older install); the virtualenv's bin follows on PATH.
    """
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    module, _, function = scripts["kubectl-ipam"].partition(":")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "kubectl-ipam"
    script.write_text(
        f"#!{sys.executable}\nimport sys\nsys.path.insert(0, {str(ROOT)!r})\n"
        f"from {module} import {function}\nif __name__ == '__main__':\n    sys.exit({function}())\n"
    )
    script.chmod(0o755)
    env = os.environ.copy()
    env["PATH"] = os.pathsep.join([str(bin_dir), os.path.dirname(sys.executable), env.get("PATH", "")])
    return env


def kubectl(plane: LocalControlPlane, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """The real kubectl, which finds `ipam` as the kubectl-ipam command on PATH."""
    return subprocess.run([str(plane.binaries["kubectl"]), *args], capture_output=True, text=True, timeout=60, env=env)


def nodeipam_deployment(namespace: str, args: list[str]) -> dict[str, Any]:
    """A Deployment like the chart's: the API server only stores it (no controllers run here)."""
    labels = {"app": "nodeipam"}
    container = {"name": "nodeipam", "image": "nodeipam:test", "command": ["nodeipam"], "args": args}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "nodeipam", "namespace": namespace},
        "spec": {
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": {"containers": [container]}},
        },
    }


def test_kubectl_ipam_through_kubectl(cluster: Cluster, tmp_path: Path) -> None:
    plane = cluster.plane
    env = plugin_path(tmp_path)
    cluster.create_nodes(["plugin-a"], pod_cidrs=("10.244.3.0/24",))
    cluster.create_nodes(["plugin-b"])

    listed = kubectl(plane, env, "plugin", "list")
    assert str(tmp_path / "bin" / "kubectl-ipam") in listed.stdout, listed.stdout + listed.stderr

    status = kubectl(
        plane, env, "ipam", "status", f"--kubeconfig={plane.kubeconfig}", "--cluster-cidr=10.244.0.0/16", "-o", "json"
    )
    assert (status.returncode, status.stderr) == (0, ""), status.stderr
    document = json.loads(status.stdout)
    assert (document["nodes"], document["nodes_waiting"], document["ranges"][0]["allocated"]) == (2, ["plugin-b"], 1)

    # The ranges from the nodeipam Deployment in -n's namespace; its kube-controller-manager flags mean nothing here.
    namespace = "ipam-plugin"
    plane.kubectl("create", "namespace", namespace, check=False)
    deployment = nodeipam_deployment(namespace, ["run", "--cluster-cidr=10.244.0.0/16", "--v=2", "--secure-port", "10257"])
    plane.kubectl("apply", "-f", "-", input_text=json.dumps(deployment))
    check = kubectl(plane, env, "ipam", "check", f"--kubeconfig={plane.kubeconfig}", "-n", namespace)
    assert check.returncode == 1, check.stdout + check.stderr
    assert check.stdout.splitlines() == ["node plugin-b: has no podCIDR", "checked 2 nodes: 1 problem(s)"]
    assert check.stderr == ""

    # --context, and kubectl's exit statuses passed through: 3 where the cluster cannot be read, 2 for usage.
    kubeconfig = two_contexts(plane, tmp_path / "two-contexts")
    gone = kubectl(plane, env, "ipam", "status", f"--kubeconfig={kubeconfig}", "--cluster-cidr=10.244.0.0/16")
    assert gone.returncode == 3, gone.stderr
    assert gone.stderr.startswith("kubectl ipam status: error: cannot reach the API server"), gone.stderr
    chosen = kubectl(plane, env, "ipam", "status", f"--kubeconfig={kubeconfig}", "--context=local", "-n", namespace, "-o", "yaml")
    assert (chosen.returncode, chosen.stderr) == (0, ""), chosen.stderr
    assert yaml.safe_load(chosen.stdout)["nodes"] == 2
    usage = kubectl(plane, env, "ipam", "status", "--no-such-flag")
    assert usage.returncode == 2, usage.stderr


def test_kubectl_ipam_without_a_deployment_names_the_one_it_looked_for(control_plane: LocalControlPlane, tmp_path: Path) -> None:
    """Neither --cluster-cidr nor a nodeipam Deployment in the namespace: exit 2, naming what to give."""
    env = plugin_path(tmp_path)
    result = kubectl(control_plane, env, "ipam", "check", f"--kubeconfig={control_plane.kubeconfig}", "-n", "default")
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(
        "kubectl ipam check: error: --deployment: there is no deployment nodeipam in namespace default"
    )


@pytest.mark.parametrize(
    ("cluster_cidr", "mask", "held", "waiting_gets"),
    [
        pytest.param("10.244.0.0/16", 24, "10.244.0.0/24", "10.244.1.0/24", id="ipv4"),
        pytest.param("fd00:10:244::/48", 64, "fd00:10:244::/64", "fd00:10:244:1::/64", id="ipv6"),
    ],
)
def test_plan_reads_the_flags_from_the_deployment_also_as_kubectl_ipam_plan(
    cluster: Cluster, tmp_path: Path, cluster_cidr: str, mask: int, held: str, waiting_gets: str
) -> None:
    """`plan --deployment` and `kubectl ipam plan -n` report what `plan` with the Deployment's flags reports."""
    plane = cluster.plane
    env = plugin_path(tmp_path)
    cluster.create_nodes(["plan-held"], pod_cidrs=(held,))
    cluster.create_nodes(["plan-waiting"])
    namespace = "ipam-plan"
    plane.kubectl("create", "namespace", namespace, check=False)
    flags = [f"--cluster-cidr={cluster_cidr}", f"--node-cidr-mask-size={mask}"]
    deployment = nodeipam_deployment(namespace, ["run", *flags, "--v=2", "--leader-elect-resource-lock=leases"])
    plane.kubectl("apply", "-f", "-", input_text=json.dumps(deployment))

    by_flags = run_cli("plan", *flags, "-o", "json", kubeconfig=plane.kubeconfig)
    by_deployment = run_cli("plan", f"--deployment={namespace}/nodeipam", "-o", "json", kubeconfig=plane.kubeconfig)
    kubeconfig = two_contexts(plane, tmp_path / "two-contexts")
    as_plugin = kubectl(
        plane, env, "ipam", "plan", f"--kubeconfig={kubeconfig}", "--context=local", "-n", namespace, "-o", "json"
    )
    for result in (by_flags, by_deployment, as_plugin):
        assert (result.returncode, result.stderr) == (0, ""), result.stdout + result.stderr
    report = json.loads(by_flags.stdout)
    assert json.loads(by_deployment.stdout) == report
    assert json.loads(as_plugin.stdout) == report
    rows = {node["name"]: node for node in report["nodes"]}
    assert rows["plan-waiting"]["would_get"] == [waiting_gets]

    gone = kubectl(plane, env, "ipam", "plan", f"--kubeconfig={kubeconfig}", "-n", namespace)
    assert gone.returncode == 3, gone.stderr
    assert gone.stderr.startswith("kubectl ipam plan: error: cannot reach the API server"), gone.stderr
