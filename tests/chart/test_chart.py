"""The Helm chart, rendered by the real helm binary: the values that matter, RBAC, the schema, the plain manifests.

Every rendered `nodeipam run` command line is also parsed by the controller's own flag validation,
so the chart cannot pass a flag combination that the controller would refuse at start-up.
"""

from __future__ import annotations

import functools
import shlex
import subprocess
import tempfile
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller import cli, run_flags
from controller.config import Settings
from controller.flagvalues import ConfigError
from localcluster.binaries import ensure_binaries

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "manifests" / "charts" / "nodeipam"
RENDERED = ROOT / "manifests" / "nodeipam.yaml"
RENDER_SCRIPT = "manifests/render.sh"
#: `helm template` checks the chart's kubeVersion against this instead of the helm build's default.
KUBE_VERSION = "1.31.0"
RELEASE = "ipam"
NAMESPACE = "ipam-system"
FULLNAME = "ipam-nodeipam"
EVENTS_ROLE = f"{FULLNAME}-events"
METRICS_READER = f"{FULLNAME}-metrics-reader"
SCRAPER = f"{FULLNAME}-scraper"
CLUSTER_SCOPED = {"ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition", "FlowSchema"}
RANGE_FLAGS = ("--cluster-cidr=", "--node-cidr-mask-size", "--service-cluster-ip-range=")
SCHEMA_ERROR = "values don't meet the specifications of the schema"

Values = dict[str, Any]
Objects = dict[tuple[str, str], dict[str, Any]]


@functools.cache
def helm() -> str:
    return str(ensure_binaries(("helm",))["helm"])


def run_helm(*args: str, values: Values | None = None) -> subprocess.CompletedProcess[str]:
    """helm with `values` passed as a -f file (commas and lists need no --set escaping)."""
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", prefix="nodeipam-values-") as handle:
        yaml.safe_dump(values or {}, handle)
        handle.flush()
        return subprocess.run([helm(), *args, "-f", handle.name], capture_output=True, text=True, timeout=60, cwd=ROOT)


def template(values: Values, *extra: str, release: str = RELEASE) -> subprocess.CompletedProcess[str]:
    return run_helm(
        "template", release, str(CHART), "--namespace", NAMESPACE, "--kube-version", KUBE_VERSION, *extra, values=values
    )


def render(values: Values, *extra: str, release: str = RELEASE) -> Objects:
    result = template(values, *extra, release=release)
    assert result.returncode == 0, f"helm template failed:\n{result.stderr}"
    return {(doc["kind"], doc["metadata"]["name"]): doc for doc in yaml.safe_load_all(result.stdout) if doc}


def render_fails(values: Values, *extra: str) -> str:
    result = template(values, *extra)
    assert result.returncode != 0, f"helm template accepted {values}:\n{result.stdout[:2000]}"
    return result.stderr


def with_cidr(cluster_cidr: str = "10.244.0.0/16", **values: Any) -> Values:
    return {"clusterCIDR": cluster_cidr, **values}


def deployment(objects: Objects, name: str = FULLNAME) -> dict[str, Any]:
    return objects[("Deployment", name)]


def pod_spec(objects: Objects, name: str = FULLNAME) -> dict[str, Any]:
    spec: dict[str, Any] = deployment(objects, name)["spec"]["template"]["spec"]
    return spec


def container(objects: Objects, name: str = FULLNAME) -> dict[str, Any]:
    containers = pod_spec(objects, name)["containers"]
    assert len(containers) == 1
    only: dict[str, Any] = containers[0]
    return only


def args(objects: Objects, name: str = FULLNAME) -> list[str]:
    return list(container(objects, name)["args"])


def flag(arguments: list[str], name: str) -> str | None:
    """The value of --name=value, None when absent; fails if it is given twice."""
    values = [arg.split("=", 1)[1] for arg in arguments if arg.startswith(f"--{name}=")]
    assert len(values) <= 1, f"--{name} given {len(values)} times: {arguments}"
    return values[0] if values else None


def controller_settings(arguments: list[str]) -> Settings:
    """Parse the container args exactly as `nodeipam` does in the pod; fails on anything it refuses."""
    assert arguments[0] == "run", arguments
    return run_flags.settings_from_args(cli.build_parser().parse_args(arguments))


# -- objects, names, namespaces, labels -------------------------------------------------------------


def test_default_objects_are_namespaced_and_labelled() -> None:
    objects = render(with_cidr())
    assert sorted(objects) == sorted(
        [
            ("ServiceAccount", FULLNAME),
            ("ClusterRole", FULLNAME),
            ("ClusterRoleBinding", FULLNAME),
            ("Role", FULLNAME),
            ("RoleBinding", FULLNAME),
            ("Role", EVENTS_ROLE),
            ("RoleBinding", EVENTS_ROLE),
            ("ClusterRole", METRICS_READER),
            ("ServiceAccount", SCRAPER),
            ("ClusterRoleBinding", SCRAPER),
            ("Service", FULLNAME),
            ("Deployment", FULLNAME),
            ("FlowSchema", FULLNAME),
        ]
    )
    for (kind, name), obj in objects.items():
        metadata = obj["metadata"]
        if kind in CLUSTER_SCOPED:
            assert "namespace" not in metadata, f"{kind}/{name} is cluster-scoped"
        elif name == EVENTS_ROLE:
            assert metadata.get("namespace") == "default", "Events about Nodes go to namespace default"
        else:
            assert metadata.get("namespace") == NAMESPACE, f"{kind}/{name} has no namespace for kubectl apply"
        labels = metadata["labels"]
        assert labels["app.kubernetes.io/name"] == "nodeipam"
        assert labels["app.kubernetes.io/instance"] == RELEASE
        assert labels["app.kubernetes.io/version"] == "0.1.0"
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["helm.sh/chart"] == "nodeipam-0.1.0"


@pytest.mark.parametrize(
    ("release", "values", "fullname"),
    [
        pytest.param("ipam", {}, "ipam-nodeipam", id="release-prefix"),
        pytest.param("nodeipam", {}, "nodeipam", id="release-contains-chart-name"),
        pytest.param("ipam", {"fullnameOverride": "pod-cidrs"}, "pod-cidrs", id="fullnameOverride"),
        pytest.param("ipam", {"nameOverride": "cidr"}, "ipam-cidr", id="nameOverride"),
    ],
)
def test_names_follow_the_release_and_overrides(release: str, values: Values, fullname: str) -> None:
    objects = render(with_cidr(**values), release=release)
    assert {name for _, name in objects} == {fullname, f"{fullname}-events", f"{fullname}-metrics-reader", f"{fullname}-scraper"}
    assert flag(args(objects, fullname), "leader-elect-resource-name") == fullname
    if "nameOverride" in values:
        assert deployment(objects, fullname)["metadata"]["labels"]["app.kubernetes.io/name"] == values["nameOverride"]


# -- the controller's flags -------------------------------------------------------------------------


def test_default_container_command_and_args() -> None:
    objects = render(with_cidr())
    assert container(objects)["command"] == ["nodeipam"]
    assert args(objects) == [
        "run",
        "--cluster-cidr=10.244.0.0/16",
        "--node-cidr-mask-size-ipv4=24",
        "--leader-elect=true",
        f"--leader-elect-resource-name={FULLNAME}",
        f"--leader-elect-resource-namespace={NAMESPACE}",
        "--leader-elect-lease-duration=15s",
        "--leader-elect-renew-deadline=10s",
        "--leader-elect-retry-period=2s",
        "--metrics-bind-address=0.0.0.0:9254",
        "--health-probe-bind-address=0.0.0.0:9255",
        "--log-level=info",
    ]
    controller_settings(args(objects))


@pytest.mark.parametrize(
    ("values", "range_args", "masks"),
    [
        pytest.param(
            with_cidr("10.244.0.0/16"),
            ["--cluster-cidr=10.244.0.0/16", "--node-cidr-mask-size-ipv4=24"],
            {4: 24},
            id="ipv4-only-passes-only-ipv4-mask",
        ),
        pytest.param(
            with_cidr("fd00:10:244::/56"),
            ["--cluster-cidr=fd00:10:244::/56", "--node-cidr-mask-size-ipv6=64"],
            {6: 64},
            id="ipv6-only-passes-only-ipv6-mask",
        ),
        pytest.param(
            with_cidr("10.244.0.0/16,fd00:10:244::/56"),
            ["--cluster-cidr=10.244.0.0/16,fd00:10:244::/56", "--node-cidr-mask-size-ipv4=24", "--node-cidr-mask-size-ipv6=64"],
            {4: 24, 6: 64},
            id="dual-stack-ipv4-first-passes-both",
        ),
        pytest.param(
            with_cidr("fd00:10:244::/56,10.244.0.0/16", nodeCIDRMaskSizeIPv4=26, nodeCIDRMaskSizeIPv6=80),
            ["--cluster-cidr=fd00:10:244::/56,10.244.0.0/16", "--node-cidr-mask-size-ipv4=26", "--node-cidr-mask-size-ipv6=80"],
            {4: 26, 6: 80},
            id="dual-stack-ipv6-first-custom-masks",
        ),
        pytest.param(
            with_cidr("10.244.0.0/16", nodeCIDRMaskSize=26),
            ["--cluster-cidr=10.244.0.0/16", "--node-cidr-mask-size=26"],
            {4: 26},
            id="ipv4-nodeCIDRMaskSize-only",
        ),
        pytest.param(
            with_cidr("fd00:10:244::/56", nodeCIDRMaskSize=72),
            ["--cluster-cidr=fd00:10:244::/56", "--node-cidr-mask-size=72"],
            {6: 72},
            id="ipv6-nodeCIDRMaskSize-only",
        ),
        pytest.param(
            with_cidr("10.244.0.0/16", nodeCIDRMaskSizeIPv4=25, nodeCIDRMaskSizeIPv6=80),
            ["--cluster-cidr=10.244.0.0/16", "--node-cidr-mask-size-ipv4=25"],
            {4: 25},
            id="ipv4-ignores-ipv6-mask",
        ),
        pytest.param(
            with_cidr("fd00:10:244::/56", nodeCIDRMaskSizeIPv4=25, nodeCIDRMaskSizeIPv6=80),
            ["--cluster-cidr=fd00:10:244::/56", "--node-cidr-mask-size-ipv6=80"],
            {6: 80},
            id="ipv6-ignores-ipv4-mask",
        ),
        pytest.param(
            with_cidr("10.244.0.0/16", serviceClusterIPRange="10.96.0.0/12"),
            ["--cluster-cidr=10.244.0.0/16", "--node-cidr-mask-size-ipv4=24", "--service-cluster-ip-range=10.96.0.0/12"],
            {4: 24},
            id="ipv4-service-range",
        ),
        pytest.param(
            with_cidr("fd00:10:244::/56", serviceClusterIPRange="fd00:10:96::/112"),
            ["--cluster-cidr=fd00:10:244::/56", "--node-cidr-mask-size-ipv6=64", "--service-cluster-ip-range=fd00:10:96::/112"],
            {6: 64},
            id="ipv6-service-range",
        ),
    ],
)
def test_range_flags_are_the_ones_the_controller_accepts(values: Values, range_args: list[str], masks: dict[int, int]) -> None:
    arguments = args(render(values))
    assert [arg for arg in arguments if arg.startswith(RANGE_FLAGS)] == range_args
    settings = controller_settings(arguments)
    assert {r.version: r.node_mask_size for r in settings.ranges} == masks
    assert [str(r.cluster_cidr) for r in settings.ranges] == values["clusterCIDR"].split(",")


@pytest.mark.parametrize(
    ("cluster_cidr", "values", "bind", "probe_bind"),
    [
        pytest.param("10.244.0.0/16", {}, "0.0.0.0:9254", "0.0.0.0:9255", id="ipv4"),
        pytest.param("fd00:10:244::/56", {}, "[::]:9254", "[::]:9255", id="ipv6"),
        pytest.param("10.244.0.0/16,fd00:10:244::/56", {}, "0.0.0.0:9254", "0.0.0.0:9255", id="dual-ipv4-primary"),
        pytest.param("fd00:10:244::/56,10.244.0.0/16", {}, "[::]:9254", "[::]:9255", id="dual-ipv6-primary"),
        pytest.param(
            "10.244.0.0/16",
            {"metrics": {"port": 10354}, "probes": {"port": 10355}},
            "0.0.0.0:10354",
            "0.0.0.0:10355",
            id="ipv4-port",
        ),
        pytest.param(
            "fd00:10:244::/56", {"metrics": {"bindHost": "[fd00::1]"}}, "[fd00::1]:9254", "[fd00::1]:9255", id="ipv6-host"
        ),
    ],
)
def test_metrics_port_is_bound_probed_and_served(cluster_cidr: str, values: Values, bind: str, probe_bind: str) -> None:
    objects = render(with_cidr(cluster_cidr, **values))
    port, probe_port = (int(address.rpartition(":")[2]) for address in (bind, probe_bind))
    the_container = container(objects)
    assert flag(args(objects), "metrics-bind-address") == bind
    assert flag(args(objects), "health-probe-bind-address") == probe_bind
    settings = controller_settings(args(objects))
    assert (settings.metrics_bind_address, settings.health_probe_bind_address) == (bind, probe_bind)
    assert the_container["ports"] == [
        {"name": "metrics", "containerPort": port, "protocol": "TCP"},
        {"name": "probes", "containerPort": probe_port, "protocol": "TCP"},
    ]
    # The kubelet probes the probe process, over plain http.
    assert the_container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "probes", "scheme": "HTTP"}
    assert the_container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "probes", "scheme": "HTTP"}
    service = objects[("Service", FULLNAME)]["spec"]
    assert service["type"] == "ClusterIP"
    assert service["ports"] == [{"name": "metrics", "port": port, "targetPort": "metrics", "protocol": "TCP"}]
    assert service["selector"] == deployment(objects)["spec"]["selector"]["matchLabels"]


POD_IP_ENV = {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}


def expand_like_the_kubelet(arguments: list[str], env: dict[str, str]) -> list[str]:
    """$(NAME) replaced by the container's env variable NAME; left as it is when there is none."""
    expanded = []
    for argument in arguments:
        for name, value in env.items():
            argument = argument.replace(f"$({name})", value)
        expanded.append(argument)
    return expanded


@pytest.mark.parametrize(
    ("cluster_cidr", "bind", "pod_ip", "expanded"),
    [
        pytest.param("10.244.0.0/16", "$(POD_IP):9254", "10.0.0.5", "10.0.0.5:9254", id="ipv4"),
        pytest.param("fd00:10:244::/56", "[$(POD_IP)]:9254", "fd00::5", "[fd00::5]:9254", id="ipv6"),
        pytest.param("10.244.0.0/16,fd00:10:244::/56", "$(POD_IP):9254", "10.0.0.5", "10.0.0.5:9254", id="dual-ipv4-primary"),
        pytest.param("fd00:10:244::/56,10.244.0.0/16", "[$(POD_IP)]:9254", "fd00::5", "[fd00::5]:9254", id="dual-ipv6-primary"),
    ],
)
def test_bind_pod_ip_binds_the_address_the_downward_api_gives(cluster_cidr: str, bind: str, pod_ip: str, expanded: str) -> None:
    objects = render(with_cidr(cluster_cidr, metrics={"bindPodIP": True}))
    the_container = container(objects)
    assert flag(args(objects), "metrics-bind-address") == bind
    assert flag(args(objects), "health-probe-bind-address") == bind.replace(":9254", ":9255")
    assert the_container["env"] == [POD_IP_ENV]
    settings = controller_settings(expand_like_the_kubelet(args(objects), {"POD_IP": pod_ip}))
    assert settings.metrics_bind_address == expanded
    assert settings.health_probe_bind_address == expanded.replace(":9254", ":9255")
    # Without the variable the kubelet leaves $(POD_IP) as it is: the controller refuses it at start-up.
    with pytest.raises(ConfigError, match=r"--metrics-bind-address: .*POD_IP"):
        controller_settings(args(objects))
    assert the_container["livenessProbe"]["httpGet"]["port"] == "probes"  # the kubelet probes the Pod's IP


def test_without_bind_pod_ip_there_is_no_env() -> None:
    assert "env" not in container(render(with_cidr()))


@pytest.mark.parametrize(
    ("values", "master"),
    [
        pytest.param({}, None, id="in-cluster"),
        pytest.param({"apiServer": "https://10.0.0.1:6443"}, "https://10.0.0.1:6443", id="ipv4"),
        pytest.param({"apiServer": "https://[fd00::1]:6443"}, "https://[fd00::1]:6443", id="ipv6"),
    ],
)
def test_api_server_gives_master(values: Values, master: str | None) -> None:
    arguments = args(render(with_cidr(**values)))
    assert flag(arguments, "master") == master
    assert controller_settings(arguments).master == master


@pytest.mark.parametrize(
    ("values", "qps", "burst", "settled_burst"),
    [
        pytest.param({}, None, None, 0, id="unset"),
        pytest.param({"kubeAPIQPS": 50, "kubeAPIBurst": 100}, "50", "100", 100, id="integers"),
        pytest.param({"kubeAPIQPS": 20.5, "kubeAPIBurst": 1000000}, "20.5", "1000000", 1000000, id="fraction-and-large"),
        # A rate alone gets kube-controller-manager's burst of 30.
        pytest.param({"kubeAPIQPS": "7.5"}, "7.5", None, 30, id="qps-as-string"),
    ],
)
def test_client_rate_limit_flags(values: Values, qps: str | None, burst: str | None, settled_burst: int) -> None:
    arguments = args(render(with_cidr(**values)))
    assert flag(arguments, "kube-api-qps") == qps
    assert flag(arguments, "kube-api-burst") == burst
    settings = controller_settings(arguments)
    assert settings.kube_api_qps == float(qps or 0)
    assert settings.kube_api_burst == settled_burst


def test_log_level_and_extra_args_reach_the_controller() -> None:
    arguments = args(render(with_cidr(logLevel="debug", extraArgs=["--resync-period=5m", "--max-requests-in-flight=16"])))
    assert arguments[-2:] == ["--resync-period=5m", "--max-requests-in-flight=16"]
    settings = controller_settings(arguments)
    assert (settings.log_level, settings.resync_period, settings.max_in_flight) == ("debug", 300.0, 16)


@pytest.mark.parametrize(("dry_run", "rendered"), [(False, []), (True, ["--dry-run"])], ids=["active", "dry-run"])
def test_dry_run_reaches_the_controller_and_takes_no_lease(dry_run: bool, rendered: list[str]) -> None:
    arguments = args(render(with_cidr(dryRun=dry_run)))
    assert [arg for arg in arguments if arg.startswith("--dry-run")] == rendered
    settings = controller_settings(arguments)
    assert (settings.dry_run, settings.leader_election.enabled) == (dry_run, not dry_run)


@pytest.mark.parametrize(
    ("values", "replicas"),
    [
        pytest.param({}, 1, id="unset-rendered-without-a-cluster"),
        pytest.param({"hostNetwork": False}, 2, id="unset-without-host-network"),
        pytest.param({"leaderElection": {"enabled": False}}, 1, id="unset-without-leader-election"),
        pytest.param({"replicas": 1}, 1, id="one"),
        pytest.param({"replicas": 2}, 2, id="two"),
        pytest.param({"replicas": 5}, 5, id="five"),
    ],
)
def test_replicas(values: Values, replicas: int) -> None:
    """Unset, as many as fit at most 2: helm template cannot count the Nodes (e2e/local counts them)."""
    objects = render(with_cidr(**values))
    assert deployment(objects)["spec"]["replicas"] == replicas
    assert (("PodDisruptionBudget", FULLNAME) in objects) == (replicas > 1)  # by default, where there is a standby


def test_strategy_rolls_one_pod_at_a_time_without_surge() -> None:
    expected = {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}}
    assert deployment(render(with_cidr()))["spec"]["strategy"] == expected


# -- leader election --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "lease_name"),
    [
        pytest.param({}, FULLNAME, id="defaults"),
        pytest.param(
            {
                "fullnameOverride": "ipam-ctl",
                "leaderElection": {"leaseDuration": "30s", "renewDeadline": "20s", "retryPeriod": "5s"},
            },
            "ipam-ctl",
            id="override-and-durations",
        ),
        pytest.param(
            {"leaderElection": {"leaseDuration": "1m", "renewDeadline": "40.s", "retryPeriod": ".5s"}},
            FULLNAME,
            id="go-duration-syntax",
        ),
    ],
)
def test_leader_election_uses_a_lease_in_the_release_namespace(values: Values, lease_name: str) -> None:
    objects = render(with_cidr(**values))
    arguments = args(objects, lease_name)
    durations = {"leaseDuration": "15s", "renewDeadline": "10s", "retryPeriod": "2s", **values.get("leaderElection", {})}
    assert flag(arguments, "leader-elect") == "true"
    assert flag(arguments, "leader-elect-resource-name") == lease_name
    assert flag(arguments, "leader-elect-resource-namespace") == NAMESPACE
    assert flag(arguments, "leader-elect-lease-duration") == durations["leaseDuration"]
    assert flag(arguments, "leader-elect-renew-deadline") == durations["renewDeadline"]
    assert flag(arguments, "leader-elect-retry-period") == durations["retryPeriod"]
    election = controller_settings(arguments).leader_election
    assert (election.enabled, election.resource_name, election.resource_namespace) == (True, lease_name, NAMESPACE)
    role = objects[("Role", lease_name)]
    assert role["metadata"]["namespace"] == NAMESPACE
    assert [rule.get("resourceNames") for rule in role["rules"]] == [None, [lease_name]]


def test_leader_election_off_needs_one_replica_and_drops_the_lease_role() -> None:
    objects = render(with_cidr(replicas=1, leaderElection={"enabled": False}))
    assert flag(args(objects), "leader-elect") == "false"
    assert not controller_settings(args(objects)).leader_election.enabled
    assert ("Role", FULLNAME) not in objects
    assert ("RoleBinding", FULLNAME) not in objects
    stderr = render_fails(with_cidr(replicas=2, leaderElection={"enabled": False}))
    assert "leaderElection.enabled=false needs replicas=1" in stderr


# -- pod: security, scheduling, image ---------------------------------------------------------------


def test_security_context_meets_the_restricted_standard() -> None:
    objects = render(with_cidr())
    pod = pod_spec(objects)["securityContext"]
    assert pod["runAsNonRoot"] is True
    assert pod["runAsUser"] == 65532
    assert pod["runAsGroup"] == 65532
    assert pod["seccompProfile"] == {"type": "RuntimeDefault"}
    the_container = container(objects)["securityContext"]
    assert the_container["allowPrivilegeEscalation"] is False
    assert the_container["readOnlyRootFilesystem"] is True
    assert the_container["capabilities"] == {"drop": ["ALL"]}
    assert "privileged" not in the_container
    assert not the_container.get("capabilities", {}).get("add")
    mounts = {mount["mountPath"] for mount in container(objects)["volumeMounts"]}
    assert mounts == {"/tmp"}, "a read-only root filesystem gets a writable /tmp only"
    volumes = pod_spec(objects)["volumes"]
    assert all(set(volume) == {"name", "emptyDir"} for volume in volumes), "no hostPath or other privileged volumes"


def sized_memory(nodes: int, headroom_percent: int = 50) -> tuple[str, str]:
    """The memory request and limit the chart should compute, from its own default sizing values."""
    sizing = yaml.safe_load((CHART / "values.yaml").read_text())["sizing"]
    request = sizing["baseMemoryMiB"] + -(-nodes * sizing["memoryPerNodeKiB"] // 1024)
    return f"{request}Mi", f"{request * (100 + headroom_percent) // 100}Mi"


@pytest.mark.parametrize(
    ("values", "requests", "limits"),
    [
        pytest.param(
            {},
            {"cpu": "200m", "memory": sized_memory(20000)[0]},
            {"memory": sized_memory(20000)[1]},
            id="default-sized-for-20000-nodes",
        ),
        pytest.param(
            {"sizing": {"nodes": 100000}},
            {"cpu": "200m", "memory": sized_memory(100000)[0]},
            {"memory": sized_memory(100000)[1]},
            id="sized-for-100000-nodes",
        ),
        pytest.param(
            {"sizing": {"nodes": 100000, "burstHeadroomPercent": 100}},
            {"cpu": "200m", "memory": sized_memory(100000)[0]},
            {"memory": sized_memory(100000, 100)[1]},
            id="more-headroom",
        ),
        pytest.param(
            {"resources": {"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"memory": "2Gi", "cpu": "2"}}},
            {"cpu": "1", "memory": "1Gi"},
            {"memory": "2Gi", "cpu": "2"},
            id="explicit-resources-win",
        ),
    ],
)
def test_memory_request_and_limit_follow_the_nodes_the_cluster_is_sized_for(
    values: Values, requests: dict[str, str], limits: dict[str, str]
) -> None:
    resources = container(render(with_cidr(**values)))["resources"]
    assert resources["requests"] == requests
    assert resources["limits"] == limits


DEFAULT_TOLERATIONS = [
    {"key": "node-role.kubernetes.io/control-plane", "operator": "Exists", "effect": "NoSchedule"},
    {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoSchedule"},
    {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute"},
    {"key": "node.cloudprovider.kubernetes.io/uninitialized", "operator": "Equal", "value": "true", "effect": "NoSchedule"},
]


def test_it_runs_before_pod_networking_exists() -> None:
    objects = render(with_cidr())
    spec = pod_spec(objects)
    assert spec["hostNetwork"] is True
    assert spec["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert spec["priorityClassName"] == "system-cluster-critical"
    assert spec["tolerations"] == DEFAULT_TOLERATIONS
    assert spec["nodeSelector"] == {"node-role.kubernetes.io/control-plane": ""}
    assert spec["automountServiceAccountToken"] is True
    assert spec["serviceAccountName"] == FULLNAME
    preferred = spec["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert len(preferred) == 1
    term = preferred[0]["podAffinityTerm"]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    pod_labels = deployment(objects)["spec"]["template"]["metadata"]["labels"]
    assert term["labelSelector"]["matchLabels"].items() <= pod_labels.items()
    assert "requiredDuringSchedulingIgnoredDuringExecution" not in spec["affinity"]["podAntiAffinity"]


def test_host_network_can_be_turned_off() -> None:
    spec = pod_spec(render(with_cidr(hostNetwork=False)))
    assert spec["hostNetwork"] is False
    assert spec["dnsPolicy"] == "ClusterFirst"


def test_scheduling_overrides() -> None:
    extra = {"key": "dedicated", "operator": "Equal", "value": "infra", "effect": "NoSchedule"}
    term = {"matchExpressions": [{"key": "pool", "operator": "In", "values": ["infra"]}]}
    affinity: Values = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [term]}}}
    spec = pod_spec(
        render(
            with_cidr(
                extraTolerations=[extra],
                affinity=affinity,
                nodeSelector={"node-role.kubernetes.io/control-plane": None, "pool": "infra"},
                priorityClassName="system-node-critical",
            )
        )
    )
    assert spec["tolerations"] == [*DEFAULT_TOLERATIONS, extra]
    assert spec["affinity"] == affinity
    assert spec["nodeSelector"] == {"pool": "infra"}
    assert spec["priorityClassName"] == "system-node-critical"
    assert pod_spec(render(with_cidr(tolerations=[extra])))["tolerations"] == [extra]


def test_image_and_pod_metadata() -> None:
    objects = render(with_cidr())
    assert container(objects)["image"] == "nodeipam:0.1.0"
    assert container(objects)["imagePullPolicy"] == "IfNotPresent"
    assert "imagePullSecrets" not in pod_spec(objects)
    objects = render(
        with_cidr(
            image={"repository": "registry.example.com/nodeipam", "tag": "e2e", "pullPolicy": "Never"},
            imagePullSecrets=[{"name": "regcred"}],
            podAnnotations={"example.com/scrape": "true"},
            podLabels={"team": "network"},
        )
    )
    assert container(objects)["image"] == "registry.example.com/nodeipam:e2e"
    assert container(objects)["imagePullPolicy"] == "Never"
    assert pod_spec(objects)["imagePullSecrets"] == [{"name": "regcred"}]
    template_metadata = deployment(objects)["spec"]["template"]["metadata"]
    assert template_metadata["annotations"] == {"example.com/scrape": "true"}
    assert template_metadata["labels"]["team"] == "network"
    assert "team" not in deployment(objects)["spec"]["selector"]["matchLabels"]


# -- the NodeCIDRPool CRD ------------------------------------------------------------------------------


def test_pool_crd_is_in_crds_and_cluster_scoped_in_a_group_of_our_own() -> None:
    """Helm installs crds/ before the templates; `--include-crds` renders it, as manifests/nodeipam.yaml does."""
    assert [path.name for path in sorted((CHART / "crds").iterdir())] == ["nodecidrpools.yaml"]
    crd = render(with_cidr(), "--include-crds")[("CustomResourceDefinition", "nodecidrpools.nodeipam.io")]
    assert crd["spec"]["group"] == "nodeipam.io" and not crd["spec"]["group"].endswith(".k8s.io")
    assert crd["spec"]["scope"] == "Cluster"
    assert [version["name"] for version in crd["spec"]["versions"]] == ["v1alpha1"]
    (version,) = crd["spec"]["versions"]
    assert version["subresources"] == {"status": {}}
    columns = [(column["name"].upper(), column.get("priority", 0)) for column in version["additionalPrinterColumns"]]
    assert columns == [
        *(("IPV4", 0), ("IPV6", 0), ("MASK", 0), ("USED", 0), ("READY", 0), ("AGE", 0)),
        *(("PRIORITY", 1), ("SELECTOR", 1)),
    ]
    assert ("CustomResourceDefinition", "nodecidrpools.nodeipam.io") not in render(with_cidr())


# -- RBAC: exactly the minimal set ------------------------------------------------------------------


def test_cluster_role_is_exactly_nodes_pools_and_the_reviews_of_metrics_tokens() -> None:
    objects = render(with_cidr())
    assert objects[("ClusterRole", FULLNAME)]["rules"] == [
        {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch", "patch"]},
        {"apiGroups": ["nodeipam.io"], "resources": ["nodecidrpools"], "verbs": ["get", "list", "watch", "patch"]},
        {"apiGroups": ["nodeipam.io"], "resources": ["nodecidrpools/status"], "verbs": ["patch"]},
        {"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"], "verbs": ["create"]},
        {"apiGroups": ["authorization.k8s.io"], "resources": ["subjectaccessreviews"], "verbs": ["create"]},
    ]
    binding = objects[("ClusterRoleBinding", FULLNAME)]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": FULLNAME}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": FULLNAME, "namespace": NAMESPACE}]


def test_role_is_exactly_the_lease() -> None:
    objects = render(with_cidr())
    assert objects[("Role", FULLNAME)]["rules"] == [
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "resourceNames": [FULLNAME], "verbs": ["get", "update"]},
    ]
    binding = objects[("RoleBinding", FULLNAME)]
    assert binding["metadata"]["namespace"] == NAMESPACE
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": FULLNAME}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": FULLNAME, "namespace": NAMESPACE}]


def test_events_are_created_in_default_only() -> None:
    objects = render(with_cidr())
    assert objects[("Role", EVENTS_ROLE)]["rules"] == [{"apiGroups": [""], "resources": ["events"], "verbs": ["create"]}]
    binding = objects[("RoleBinding", EVENTS_ROLE)]
    assert binding["metadata"]["namespace"] == "default"
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": EVENTS_ROLE}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": FULLNAME, "namespace": NAMESPACE}]


def test_metrics_reader_is_get_on_metrics_bound_to_the_readers_given() -> None:
    objects = render(with_cidr())
    assert objects[("ClusterRole", METRICS_READER)]["rules"] == [{"nonResourceURLs": ["/metrics"], "verbs": ["get"]}]
    assert ("ClusterRoleBinding", METRICS_READER) not in objects
    readers = [
        {"kind": "ServiceAccount", "name": "prometheus-k8s", "namespace": "monitoring"},
        {"kind": "Group", "name": "scrapers", "apiGroup": "rbac.authorization.k8s.io"},
    ]
    binding = render(with_cidr(metrics={"readers": readers}))[("ClusterRoleBinding", METRICS_READER)]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": METRICS_READER}
    assert binding["subjects"] == readers


def test_tls_secret_is_mounted_and_passed_to_the_controller() -> None:
    objects = render(with_cidr())
    assert flag(args(objects), "tls-cert-file") is None  # self-signed at start-up
    objects = render(with_cidr(metrics={"tlsSecret": "nodeipam-serving"}))
    settings = controller_settings(args(objects))
    assert settings.serving.tls_cert_file == "/etc/nodeipam/tls/tls.crt"
    assert settings.serving.tls_private_key_file == "/etc/nodeipam/tls/tls.key"
    assert {"name": "serving-cert", "secret": {"secretName": "nodeipam-serving"}} in pod_spec(objects)["volumes"]
    mounts = container(objects)["volumeMounts"]
    assert {"name": "serving-cert", "mountPath": "/etc/nodeipam/tls", "readOnly": True} in mounts


def test_an_existing_service_account_is_bound_instead() -> None:
    objects = render(with_cidr(serviceAccount={"create": False, "name": "ipam-sa"}))
    assert ("ServiceAccount", FULLNAME) not in objects
    assert pod_spec(objects)["serviceAccountName"] == "ipam-sa"
    for kind, name in (("ClusterRoleBinding", FULLNAME), ("RoleBinding", FULLNAME), ("RoleBinding", EVENTS_ROLE)):
        assert objects[(kind, name)]["subjects"] == [{"kind": "ServiceAccount", "name": "ipam-sa", "namespace": NAMESPACE}]
    (rule,) = objects[("FlowSchema", FULLNAME)]["spec"]["rules"]
    assert rule["subjects"] == [{"kind": "ServiceAccount", "serviceAccount": {"name": "ipam-sa", "namespace": NAMESPACE}}]


@pytest.mark.parametrize(
    ("values", "priority_level", "precedence"),
    [
        pytest.param({}, "workload-high", 800, id="default-as-kube-controller-manager"),
        pytest.param({"priorityLevel": "system", "matchingPrecedence": 700}, "system", 700, id="overridden"),
    ],
)
def test_flow_schema_sends_every_request_of_the_service_account_to_one_priority_level(
    values: Values, priority_level: str, precedence: int
) -> None:
    schema = render(with_cidr(flowSchema=values))[("FlowSchema", FULLNAME)]
    assert schema["apiVersion"] == "flowcontrol.apiserver.k8s.io/v1"
    assert schema["spec"]["priorityLevelConfiguration"] == {"name": priority_level}
    assert schema["spec"]["matchingPrecedence"] == precedence
    assert schema["spec"]["rules"] == [
        {
            "subjects": [{"kind": "ServiceAccount", "serviceAccount": {"name": FULLNAME, "namespace": NAMESPACE}}],
            "resourceRules": [
                {"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"], "clusterScope": True, "namespaces": ["*"]}
            ],
            "nonResourceRules": [{"verbs": ["*"], "nonResourceURLs": ["*"]}],
        }
    ]


def test_flow_schema_can_be_left_out() -> None:
    objects = render(with_cidr(flowSchema={"enabled": False}))
    assert not [key for key in objects if key[0] == "FlowSchema"]


# -- optional objects -------------------------------------------------------------------------------


def test_optional_objects() -> None:
    objects = render(
        with_cidr(
            replicas=2,
            serviceMonitor={"enabled": True, "labels": {"release": "prometheus"}, "scrapeTimeout": "10s"},
        )
    )
    selector = deployment(objects)["spec"]["selector"]["matchLabels"]
    pdb = objects[("PodDisruptionBudget", FULLNAME)]
    assert pdb["apiVersion"] == "policy/v1"
    assert pdb["metadata"]["namespace"] == NAMESPACE
    assert pdb["spec"] == {
        "maxUnavailable": 1,
        "unhealthyPodEvictionPolicy": "AlwaysAllow",
        "selector": {"matchLabels": selector},
    }
    monitor = objects[("ServiceMonitor", FULLNAME)]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["namespace"] == NAMESPACE
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    assert monitor["spec"]["selector"] == {"matchLabels": selector}
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    assert monitor["spec"]["endpoints"] == [
        {
            "port": "metrics",
            "path": "/metrics",
            "scheme": "https",
            "authorization": {"type": "Bearer", "credentials": {"name": f"{SCRAPER}-token", "key": "token"}},
            "tlsConfig": {"insecureSkipVerify": True},
            "interval": "30s",
            "scrapeTimeout": "10s",
        }
    ]
    # The scraper's token, from a Secret the token controller fills in for the ServiceMonitor to read.
    token = objects[("Secret", f"{SCRAPER}-token")]
    assert token["type"] == "kubernetes.io/service-account-token" and token["metadata"]["namespace"] == NAMESPACE
    assert token["metadata"]["annotations"] == {"kubernetes.io/service-account.name": SCRAPER}
    assert objects[("ClusterRoleBinding", SCRAPER)]["roleRef"]["name"] == METRICS_READER
    assert objects[("ClusterRoleBinding", SCRAPER)]["subjects"] == [
        {"kind": "ServiceAccount", "name": SCRAPER, "namespace": NAMESPACE}
    ]
    # A token of one's own: no Secret of the chart's.
    own = {"type": "Bearer", "credentials": {"name": "prometheus-token", "key": "token"}}
    objects = render(with_cidr(serviceMonitor={"enabled": True, "authorization": own, "namespace": "monitoring"}))
    assert objects[("ServiceMonitor", FULLNAME)]["spec"]["endpoints"][0]["authorization"] == own
    assert ("Secret", f"{SCRAPER}-token") not in objects
    elsewhere = render_fails(with_cidr(serviceMonitor={"enabled": True, "namespace": "monitoring"}))
    assert "give serviceMonitor.authorization a token Secret in that namespace" in elsewhere
    ca = {"ca": {"secret": {"name": "nodeipam-ca", "key": "ca.crt"}}, "serverName": "nodeipam"}
    monitor = render(with_cidr(serviceMonitor={"enabled": True, "tlsConfig": ca}))[("ServiceMonitor", FULLNAME)]
    assert monitor["spec"]["endpoints"][0]["tlsConfig"] == ca
    objects = render(with_cidr(service={"enabled": False}))
    assert ("Service", FULLNAME) not in objects
    assert "needs service.enabled" in render_fails(with_cidr(service={"enabled": False}, serviceMonitor={"enabled": True}))


# -- bad values fail at helm template / install -----------------------------------------------------


@pytest.mark.parametrize(
    ("values", "field"),
    [
        pytest.param({}, "clusterCIDR", id="missing-clusterCIDR"),
        pytest.param({"clusterCIDR": ""}, "clusterCIDR", id="empty-clusterCIDR"),
        pytest.param({"clusterCIDR": "10.244.0.0"}, "clusterCIDR", id="ipv4-without-prefix"),
        pytest.param({"clusterCIDR": "10.244.0.0/33"}, "clusterCIDR", id="ipv4-prefix-too-long"),
        pytest.param({"clusterCIDR": "10.256.0.0/16"}, "clusterCIDR", id="ipv4-bad-octet"),
        pytest.param({"clusterCIDR": "fd00:10:244::"}, "clusterCIDR", id="ipv6-without-prefix"),
        pytest.param({"clusterCIDR": "fd00:10:244::/129"}, "clusterCIDR", id="ipv6-prefix-too-long"),
        pytest.param({"clusterCIDR": "pods"}, "clusterCIDR", id="not-a-cidr"),
        pytest.param({"clusterCIDR": "10.244.0.0/16,10.245.0.0/16"}, "clusterCIDR", id="two-ipv4"),
        pytest.param({"clusterCIDR": "fd00:1::/56,fd00:2::/56"}, "clusterCIDR", id="two-ipv6"),
        pytest.param({"clusterCIDR": "10.244.0.0/16, fd00::/56"}, "clusterCIDR", id="space-after-comma"),
        pytest.param({"clusterCIDR": 10}, "clusterCIDR", id="not-a-string"),
        pytest.param(with_cidr(replicas=0), "replicas", id="replicas-0"),
        pytest.param(with_cidr(replicas="2"), "replicas", id="replicas-string"),
        pytest.param(with_cidr(clusterCidr="10.0.0.0/8"), "clusterCidr", id="unknown-top-level-key"),
        pytest.param(with_cidr(image={"name": "nodeipam"}), "name", id="unknown-image-key"),
        pytest.param(with_cidr(nodeCIDRMaskSizeIPv4=33), "nodeCIDRMaskSizeIPv4", id="ipv4-mask-33"),
        pytest.param(with_cidr(nodeCIDRMaskSizeIPv6=129), "nodeCIDRMaskSizeIPv6", id="ipv6-mask-129"),
        pytest.param(with_cidr(serviceClusterIPRange="10.96.0.0"), "serviceClusterIPRange", id="service-range-not-cidr"),
        pytest.param(with_cidr(apiServer="10.0.0.1:6443"), "apiServer", id="api-server-without-scheme"),
        pytest.param(with_cidr(leaderElection={"leaseDuration": "15"}), "leaseDuration", id="duration-without-unit"),
        pytest.param(with_cidr(logLevel="trace"), "logLevel", id="log-level"),
        pytest.param(with_cidr(extraArgs=["resync-period=5m"]), "extraArgs", id="extra-arg-without-dashes"),
        pytest.param(with_cidr(kubeAPIQPS=-1), "kubeAPIQPS", id="negative-qps"),
        pytest.param(with_cidr(kubeAPIQPS=20, kubeAPIBurst=0), "kubeAPIBurst", id="burst-0"),
        pytest.param(with_cidr(metrics={"port": 0}), "port", id="metrics-port-0"),
        pytest.param(with_cidr(probes={"port": 0}), "port", id="probe-port-0"),
        pytest.param(with_cidr(metrics={"readers": [{"name": "prometheus"}]}), "kind", id="metrics-reader-without-kind"),
        pytest.param(with_cidr(metrics={"tlsSecret": "Not_A_Name"}), "tlsSecret", id="tls-secret-not-a-name"),
        pytest.param(with_cidr(metrics={"bindPodIP": "yes"}), "bindPodIP", id="bind-pod-ip-not-a-boolean"),
        pytest.param(with_cidr(flowSchema={"priorityLevel": ""}), "priorityLevel", id="flow-schema-without-level"),
        pytest.param(with_cidr(flowSchema={"matchingPrecedence": 10000}), "matchingPrecedence", id="precedence-10000"),
    ],
)
def test_schema_rejects_bad_values(values: Values, field: str) -> None:
    stderr = render_fails(values)
    assert SCHEMA_ERROR in stderr, stderr
    assert field in stderr, stderr


@pytest.mark.parametrize(
    ("values", "message"),
    [
        pytest.param(
            with_cidr("10.244.0.0/16,fd00:10:244::/56", nodeCIDRMaskSize=24),
            "nodeCIDRMaskSize is for single-stack clusters only",
            id="single-mask-with-dual-stack",
        ),
        pytest.param(
            with_cidr("10.244.0.0/16", nodeCIDRMaskSizeIPv4=12),
            "set nodeCIDRMaskSizeIPv4 to at least 16",
            id="ipv4-mask-shorter-than-prefix",
        ),
        pytest.param(
            with_cidr("fd00:10:244::/56", nodeCIDRMaskSizeIPv6=48),
            "set nodeCIDRMaskSizeIPv6 to at least 56",
            id="ipv6-mask-shorter-than-prefix",
        ),
        pytest.param(
            with_cidr("fd00:10:244::/56", nodeCIDRMaskSize=40),
            "set nodeCIDRMaskSize to at least 56",
            id="ipv6-single-mask-shorter-than-prefix",
        ),
        pytest.param(
            with_cidr("10.244.0.0/16", nodeCIDRMaskSize=64),
            "longer than an IPv4 address",
            id="single-mask-too-long-for-ipv4",
        ),
        pytest.param(
            with_cidr(probes={"port": 9254}),
            "probes.port and metrics.port must differ",
            id="probe-port-is-metrics-port",
        ),
        pytest.param(
            with_cidr(metrics={"bindPodIP": True, "bindHost": "10.0.0.5"}),
            "metrics.bindPodIP and metrics.bindHost both choose the address to bind",
            id="bind-pod-ip-and-bind-host",
        ),
    ],
)
def test_template_rejects_what_the_controller_would_refuse(values: Values, message: str) -> None:
    assert message in render_fails(values)


def test_kube_version_below_the_minimum_is_rejected() -> None:
    result = run_helm("template", RELEASE, str(CHART), "--kube-version", "1.30.0", values=with_cidr())
    assert result.returncode != 0
    assert "kubeVersion" in result.stderr


def test_helm_lint_strict_passes() -> None:
    result = subprocess.run(
        [helm(), "lint", "--strict", str(CHART), "--set", "clusterCIDR=10.244.0.0/16"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout + result.stderr
    unset = subprocess.run([helm(), "lint", "--strict", str(CHART)], capture_output=True, text=True, timeout=60)
    assert unset.returncode != 0, "lint must apply the schema: clusterCIDR is required"
    assert "clusterCIDR" in unset.stdout + unset.stderr


# -- the plain manifests ----------------------------------------------------------------------------


def rendered_header() -> tuple[list[str], list[str]]:
    """The header lines of manifests/nodeipam.yaml and the helm command written in it."""
    lines = RENDERED.read_text().splitlines(keepends=True)
    header = []
    for line in lines:
        if not line.startswith("#"):
            break
        header.append(line)
    commands = [line.removeprefix("# Command:").strip() for line in header if line.startswith("# Command:")]
    assert len(commands) == 1, f"{RENDERED} needs exactly one '# Command: helm ...' header line; run {RENDER_SCRIPT}"
    command = shlex.split(commands[0])
    assert command[0] == "helm" and command[1] == "template", command
    return header, command


def test_rendered_manifest_is_current() -> None:
    header, command = rendered_header()
    result = subprocess.run([helm(), *command[1:]], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    expected = "".join(header) + result.stdout.rstrip("\n") + "\n"
    assert RENDERED.read_text() == expected, f"{RENDERED.relative_to(ROOT)} is stale: run {RENDER_SCRIPT}"


def test_rendered_manifest_works_with_kubectl_apply() -> None:
    _, command = rendered_header()
    assert command[command.index("--namespace") + 1] == "kube-system"
    objects = [doc for doc in yaml.safe_load_all(RENDERED.read_text()) if doc]
    kinds = sorted(obj["kind"] for obj in objects)
    assert kinds == sorted(
        [
            *("CustomResourceDefinition", "ServiceAccount", "ServiceAccount", "ClusterRole", "ClusterRole"),
            *("ClusterRoleBinding", "ClusterRoleBinding", "Role", "Role", "RoleBinding", "RoleBinding", "Service"),
            *("Deployment", "FlowSchema"),
        ]
    )
    for obj in objects:
        if obj["metadata"]["name"].endswith("-events"):
            assert obj["metadata"]["namespace"] == "default", obj["metadata"]
        elif obj["kind"] not in CLUSTER_SCOPED:
            assert obj["metadata"].get("namespace") == "kube-system", obj["metadata"]
    the_deployment = next(obj for obj in objects if obj["kind"] == "Deployment")
    arguments = the_deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert flag(arguments, "cluster-cidr") == "10.244.0.0/16"
    assert flag(arguments, "leader-elect-resource-namespace") == "kube-system"
    controller_settings(arguments)


def test_the_chart_version_and_app_version_are_the_packages() -> None:
    """One version for the package, the image (appVersion is its default tag) and the chart; `make package` sets both."""
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    package = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert (chart["version"], chart["appVersion"]) == (package, package)
    assert (ROOT / "LICENSE").read_text().lstrip().startswith("Apache License")
