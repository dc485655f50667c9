"""The controller as a process against a real kube-apiserver: the tests of record."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import re
from collections.abc import Callable
from typing import Any, cast

import kopf
import pytest

from bench.flood import REVIEWS_AT_ONCE, apiserver_token_reviews, measure, metrics_server_pid, raise_open_files_limit
from controller import handlers
from controller.credentials import Credentials
from controller.model import NodeInfo
from controller.reconciler import Reconciler
from localcluster.cluster import ADMIN_TOKEN
from localcluster.nodebodies import realistic_node
from tests.conftest import wait_for
from tests.integration.conftest import Cluster, ControllerProcess, no_duplicates, run_cli

pytestmark = pytest.mark.integration

Start = Callable[..., ControllerProcess]

FAMILIES = [
    pytest.param("10.244.0.0/16", 24, id="ipv4"),
    pytest.param("fd00:10:244::/48", 64, id="ipv6"),
]


def _mask_flag(cluster_cidr: str, mask: int) -> str:
    return f"--node-cidr-mask-size={mask}"


@pytest.mark.parametrize(("cluster_cidr", "mask"), FAMILIES)
def test_new_nodes_get_disjoint_ranges(cluster: Cluster, start_controller: Start, cluster_cidr: str, mask: int) -> None:
    start_controller(f"--cluster-cidr={cluster_cidr}", _mask_flag(cluster_cidr, mask))
    names = [f"node-{i}" for i in range(6)]
    cluster.create_nodes(names)
    cluster.wait_single_ranges_inside(names, cluster_cidr, mask)


#: The field manager of the tests' own writes (the official client's default user agent).
TEST_CLIENT = "OpenAPI-Generator"


def managers_and_fields(node: dict[str, Any]) -> dict[str, set[str]]:
    """Who wrote which fields of a Node, from its managedFields: manager -> {"spec.podCIDR", "metadata.labels", ...}."""
    written: dict[str, set[str]] = {}
    for entry in node["metadata"].get("managedFields") or []:
        fields = written.setdefault(entry["manager"], set())
        for section, inner in (entry.get("fieldsV1") or {}).items():
            fields.update(f"{section[2:]}.{key[2:]}" for key in inner if key.startswith("f:"))
    return written


@pytest.mark.parametrize(("cluster_cidr", "mask"), FAMILIES)
def test_nothing_but_the_pod_cidr_is_written_to_nodes(
    cluster: Cluster, start_controller: Start, cluster_cidr: str, mask: int
) -> None:
    """Only spec.podCIDR(s) is written: no kopf annotation, finalizer or status, nothing else, on 20 Nodes.

    kopf writes to an object only for change-detecting handlers (progress, diff base, finalizers); the
    controller has event handlers only. That kopf would store nothing even then is tested in-process below.
    """
    preset = str(next(ipaddress.ip_network(cluster_cidr).subnets(new_prefix=mask)))
    start_controller(f"--cluster-cidr={cluster_cidr}", _mask_flag(cluster_cidr, mask))
    names = [f"clean-{i}" for i in range(20)]
    cluster.create_nodes(names)
    cluster.create_nodes(["preset"], pod_cidrs=(preset,))
    cluster.wait_assigned(names)
    # A change of every Node after its patch: more events for kopf, each a chance to write something.
    for name in [*names, "preset"]:
        cluster.core.patch_node(name, {"metadata": {"labels": {"example.com/touched": "yes"}}})
    cluster.create_nodes(["last"])  # handled after the changes before it in the watch stream
    cluster.wait_assigned(["last"])
    created = {name: realistic_node(name, index) for index, name in enumerate(names)}
    created["preset"] = realistic_node("preset", 0, (preset,))
    nodes = {node["metadata"]["name"]: node for node in json.loads(cluster.core.list_node(_preload_content=False).data)["items"]}
    for name, body in created.items():
        node = nodes[name]
        metadata = node["metadata"]
        assert metadata.get("annotations") == body["metadata"]["annotations"], (name, metadata.get("annotations"))
        assert metadata.get("labels") == {**body["metadata"]["labels"], "example.com/touched": "yes"}, name
        assert not metadata.get("finalizers"), (name, metadata["finalizers"])
        assert node["status"]["conditions"] == body["status"]["conditions"], "status must be the kubelet's own"
        others = {writer: fields for writer, fields in managers_and_fields(node).items() if writer != TEST_CLIENT}
        assert all(fields <= {"spec.podCIDR", "spec.podCIDRs"} for fields in others.values()), (name, others)
        assert bool(others) == (name != "preset"), f"{name}: the controller's podCIDR patch, and nothing else: {others}"
    assert nodes["preset"]["spec"]["podCIDRs"] == [preset]


class RecordingReconciler:
    """What the controller's kopf registry needs of a Reconciler: no pools; each Node event recorded."""

    pools_served = False

    def __init__(self) -> None:
        self.touched: set[str] = set()  # Nodes seen with the label the test sets

    async def node_event(self, kind: str | None, node: NodeInfo) -> None:
        if node.label_map.get(TOUCHED) == "yes":
            self.touched.add(node.name)


TOUCHED = "example.com/touched"


def test_kopf_with_the_controllers_settings_stores_nothing_on_nodes_even_for_a_change_handler(cluster: Cluster) -> None:
    """kopf as the controller runs it (its settings, its registry), plus an @kopf.on.create handler.

    kopf keeps a change handler's progress and the last handled state; with its default storages it writes
    them onto the object (`kopf.zalando.org/...` annotations). The controller's storages keep nothing, so
    that kopf writes nothing onto a Node even if a handler of that kind were added. The controller's own
    registry has event handlers only, for which kopf stores nothing whatever the storages: this is what
    would fail if its storages went back to kopf's.
    """
    names = [f"kopf-{index}" for index in range(8)]
    credentials = Credentials.load(cluster.plane.kubeconfig)
    reconciler = RecordingReconciler()
    created: set[str] = set()

    async def until(condition: Callable[[], bool], what: str) -> None:
        try:
            async with asyncio.timeout(30):
                while not condition():
                    await asyncio.sleep(0.05)
        except TimeoutError:
            raise AssertionError(f"timed out waiting for {what}") from None

    async def run_kopf() -> None:
        registry = handlers.build_registry(credentials, cast(Reconciler, reconciler))

        @kopf.on.create("", "v1", "nodes", registry=registry)
        async def node_created(name: str, **_: Any) -> None:
            created.add(name)

        operator = asyncio.ensure_future(
            kopf.operator(registry=registry, settings=handlers.kopf_settings(), clusterwide=True, standalone=True)
        )
        try:
            await asyncio.to_thread(cluster.create_nodes, names)
            await until(lambda: created >= set(names), "the change handler to run for every Node")
            for name in names:
                await asyncio.to_thread(cluster.core.patch_node, name, {"metadata": {"labels": {TOUCHED: "yes"}}})
            # kopf handles a Node's events one batch after another, each with its writes: once the label is
            # seen, whatever kopf wrote after the change handler ran has been written.
            await until(lambda: reconciler.touched >= set(names), "the event handler to see every label")
        finally:
            operator.cancel()
            await asyncio.gather(operator, return_exceptions=True)

    asyncio.run(run_kopf())
    for node in json.loads(cluster.core.list_node(_preload_content=False).data)["items"]:
        metadata, name = node["metadata"], node["metadata"]["name"]
        assert metadata.get("annotations") == realistic_node(name)["metadata"]["annotations"], (name, metadata["annotations"])
        assert not metadata.get("finalizers"), (name, metadata["finalizers"])
        others = {writer: fields for writer, fields in managers_and_fields(node).items() if writer != TEST_CLIENT}
        assert not others, f"{name} was written by {others}"


@pytest.mark.parametrize(
    ("cluster_cidr", "mask", "preset"),
    [
        pytest.param("10.244.0.0/16", 24, ["10.244.0.0/24", "10.244.1.0/24", "10.244.3.0/24"], id="ipv4"),
        pytest.param("fd00:10:244::/48", 64, ["fd00:10:244::/64", "fd00:10:244:1::/64", "fd00:10:244:3::/64"], id="ipv6"),
    ],
)
def test_rebuild_from_existing_nodes_gives_no_duplicates(
    cluster: Cluster, start_controller: Start, cluster_cidr: str, mask: int, preset: list[str]
) -> None:
    for index, cidr in enumerate(preset):
        cluster.create_nodes([f"old-{index}"], pod_cidrs=(cidr,))
    waiting = [f"new-{i}" for i in range(4)]
    cluster.create_nodes(waiting)
    start_controller(f"--cluster-cidr={cluster_cidr}", _mask_flag(cluster_cidr, mask))
    cidrs = cluster.wait_assigned(waiting)
    no_duplicates(cidrs)
    assert [cidrs[f"old-{i}"] for i in range(3)] == [[cidr] for cidr in preset], "preset ranges must not change"
    assert not set(preset) & {cidrs[name][0] for name in waiting}


@pytest.mark.parametrize(
    ("cluster_cidr", "mask"),
    [pytest.param("10.244.0.0/23", 24, id="ipv4"), pytest.param("fd00:10:244::/63", 64, id="ipv6")],
)
def test_released_range_is_reused_after_delete(cluster: Cluster, start_controller: Start, cluster_cidr: str, mask: int) -> None:
    start_controller(f"--cluster-cidr={cluster_cidr}", _mask_flag(cluster_cidr, mask), "--resync-period=10m")
    cluster.create_nodes(["a", "b"])
    first = cluster.wait_assigned(["a", "b"])
    cluster.delete_node("a")
    cluster.create_nodes(["c"])
    # The range holds two subnets: "c" can only get the one "a" gave back,
    # and only from the DELETED event, since the resync is 10 minutes away.
    assert cluster.wait_assigned(["c"], timeout=30)["c"] == first["a"]


@pytest.mark.parametrize(
    ("cluster_cidr", "mask", "outside", "wrong_mask"),
    [
        pytest.param("10.244.0.0/16", 24, "192.168.5.0/24", "10.244.8.0/23", id="ipv4"),
        pytest.param("fd00:10:244::/48", 64, "fd00:99::/64", "fd00:10:244:8::/63", id="ipv6"),
    ],
)
def test_bad_pod_cidrs_are_reported_and_everything_else_is_served(
    cluster: Cluster, start_controller: Start, cluster_cidr: str, mask: int, outside: str, wrong_mask: str
) -> None:
    cluster.create_nodes(["outside"], pod_cidrs=(outside,))
    cluster.create_nodes(["wrong-mask"], pod_cidrs=(wrong_mask,))
    controller = start_controller(f"--cluster-cidr={cluster_cidr}", _mask_flag(cluster_cidr, mask))
    event = cluster.wait_event("outside", "InvalidPodCIDR")
    assert event.type == "Warning"
    assert outside in event.message and "outside the cluster CIDR" in event.message
    assert event.involved_object.namespace in (None, "")
    assert "InvalidPodCIDR" in cluster.plane.kubectl("describe", "node", "outside")
    cluster.wait_event("wrong-mask", "InvalidPodCIDR")
    # Later Nodes are still served, and never get a range the wrong-mask /63 or /23 covers.
    names = [f"later-{i}" for i in range(20)]
    cluster.create_nodes(names)
    cidrs = cluster.wait_assigned(names)
    covered = ipaddress.ip_network(wrong_mask)
    for name in names:
        assert not ipaddress.ip_network(cidrs[name][0]).overlaps(covered), (name, cidrs[name])  # type: ignore[arg-type]
    assert controller.process.poll() is None
    assert cidrs["outside"] == [outside]


@pytest.mark.parametrize(
    ("cluster_cidr", "mask", "other_family"),
    [
        pytest.param("10.244.0.0/16", 24, ("fd00:99::/64", "fd00:99:0:1::/64"), id="ipv6-pod-cidr-on-an-ipv4-controller"),
        pytest.param("fd00:10:244::/48", 64, ("10.99.0.0/24", "10.99.1.0/24"), id="ipv4-pod-cidr-on-an-ipv6-controller"),
    ],
)
def test_a_pod_cidr_of_a_family_not_served_is_a_warning_and_everything_else_is_served(
    cluster: Cluster, start_controller: Start, cluster_cidr: str, mask: int, other_family: tuple[str, str]
) -> None:
    """kube-controller-manager crash-loops on such a Node; here it is a Warning on it, seen at start-up and later."""
    listed, watched = other_family
    cluster.create_nodes(["listed"], pod_cidrs=(listed,))  # found by the start-up LIST
    controller = start_controller(f"--cluster-cidr={cluster_cidr}", _mask_flag(cluster_cidr, mask))
    cluster.create_nodes(["first"])
    cluster.wait_assigned(["first"])
    cluster.create_nodes(["watched"], pod_cidrs=(watched,))  # seen by the watch
    version = ipaddress.ip_network(listed).version
    for name, cidr in (("listed", listed), ("watched", watched)):
        event = cluster.wait_event(name, "InvalidPodCIDR")
        assert event.type == "Warning", (name, event.type)
        assert event.message == f"podCIDR {cidr} is IPv{version}, but this controller serves only {cluster_cidr}; ignored"
    later = [f"later-{i}" for i in range(3)]
    cluster.create_nodes(later)
    cidrs = cluster.wait_single_ranges_inside(["first", *later], cluster_cidr, mask)
    assert (cidrs["listed"], cidrs["watched"]) == ([listed], [watched]), "left as they are"
    assert controller.process.poll() is None


@pytest.mark.parametrize(
    ("cluster_cidr", "mask"),
    [pytest.param("10.244.0.0/23", 24, id="ipv4"), pytest.param("fd00:10:244::/63", 64, id="ipv6")],
)
def test_exhaustion_then_recovery_on_release(cluster: Cluster, start_controller: Start, cluster_cidr: str, mask: int) -> None:
    start_controller(f"--cluster-cidr={cluster_cidr}", _mask_flag(cluster_cidr, mask), "--resync-period=10m")
    cluster.create_nodes(["first", "second"])
    cluster.wait_assigned(["first", "second"])
    cluster.create_nodes(["third"])
    event = cluster.wait_event("third", "CIDRNotAvailable")
    assert event.type == "Warning"
    assert cluster.pod_cidrs()["third"] == []
    freed = cluster.pod_cidrs()["second"]
    cluster.delete_node("second")
    assert cluster.wait_assigned(["third"], timeout=30)["third"] == freed


@pytest.mark.parametrize(
    ("cluster_cidr", "first_family"),
    [
        pytest.param("10.244.0.0/16,fd00:10:244::/48", 4, id="ipv4-first"),
        pytest.param("fd00:10:244::/48,10.244.0.0/16", 6, id="ipv6-first"),
    ],
)
def test_dual_stack_follows_flag_order(cluster: Cluster, start_controller: Start, cluster_cidr: str, first_family: int) -> None:
    start_controller(f"--cluster-cidr={cluster_cidr}", "--node-cidr-mask-size-ipv4=24", "--node-cidr-mask-size-ipv6=64")
    names = [f"dual-{i}" for i in range(4)]
    cluster.create_nodes(names)
    cidrs = cluster.wait_assigned(names)
    no_duplicates(cidrs)
    for name in names:
        versions = [ipaddress.ip_network(cidr).version for cidr in cidrs[name]]
        assert versions == ([4, 6] if first_family == 4 else [6, 4]), cidrs[name]


@pytest.mark.parametrize(
    ("cluster_cidr", "service_cidr", "expected"),
    [
        pytest.param("10.100.0.0/22", "10.100.0.0/23", {"10.100.2.0/24", "10.100.3.0/24"}, id="ipv4"),
        pytest.param("fd00:10:244::/62", "fd00:10:244::/63", {"fd00:10:244:2::/64", "fd00:10:244:3::/64"}, id="ipv6"),
    ],
)
def test_service_cidr_is_kept_out_of_the_pool(
    cluster: Cluster, start_controller: Start, cluster_cidr: str, service_cidr: str, expected: set[str]
) -> None:
    mask = 24 if ":" not in cluster_cidr else 64
    start_controller(
        f"--cluster-cidr={cluster_cidr}", _mask_flag(cluster_cidr, mask), f"--service-cluster-ip-range={service_cidr}"
    )
    cluster.create_nodes(["s1", "s2", "s3"])

    def two_assigned() -> dict[str, list[str]] | None:
        cidrs = cluster.pod_cidrs()
        return cidrs if sum(1 for value in cidrs.values() if value) == 2 else None

    cidrs = wait_for(two_assigned, what="two nodes assigned")
    assert {value[0] for value in cidrs.values() if value} == expected
    (left_out,) = [name for name, value in cidrs.items() if not value]
    cluster.wait_event(left_out, "CIDRNotAvailable")


@pytest.mark.parametrize(
    ("cluster_cidr", "mask", "service_cidr", "at_start", "later"),
    [
        pytest.param("10.0.0.0/8", 24, "10.96.0.0/12", "10.96.3.0/24", "10.96.4.0/24", id="ipv4"),
        pytest.param("fd00:10::/48", 64, "fd00:10:0:4::/63", "fd00:10:0:4::/64", "fd00:10:0:5::/64", id="ipv6"),
    ],
)
def test_a_pod_cidr_in_the_service_range_is_a_warning_on_its_node(
    cluster: Cluster, start_controller: Start, cluster_cidr: str, mask: int, service_cidr: str, at_start: str, later: str
) -> None:
    cluster.create_nodes(["at-start"], pod_cidrs=(at_start,))
    start_controller(
        f"--cluster-cidr={cluster_cidr}", _mask_flag(cluster_cidr, mask), f"--service-cluster-ip-range={service_cidr}"
    )
    cluster.create_nodes(["fresh"])
    fresh = ipaddress.ip_network(cluster.wait_assigned(["fresh"])["fresh"][0])
    assert not fresh.overlaps(ipaddress.ip_network(service_cidr))  # type: ignore[arg-type]
    cluster.create_nodes(["later"], pod_cidrs=(later,))  # the controller is serving: seen by the watch
    for name, pod_cidr in (("at-start", at_start), ("later", later)):
        event = cluster.wait_event(name, "InvalidPodCIDR")
        assert event.type == "Warning"
        assert pod_cidr in event.message and f"service range {service_cidr}" in event.message, event.message
    assert cluster.pod_cidrs()["at-start"] == [at_start] and cluster.pod_cidrs()["later"] == [later]


def test_sigkill_mid_burst_then_restart_gives_no_duplicates(cluster: Cluster, start_controller: Start) -> None:
    names = [f"burst-{i}" for i in range(300)]
    first = start_controller("--cluster-cidr=10.240.0.0/14")
    cluster.create_nodes(names[:150])
    wait_for(lambda: sum(1 for v in cluster.pod_cidrs().values() if v) >= 20, what="some allocations")
    first.kill()
    cluster.create_nodes(names[150:])
    start_controller("--cluster-cidr=10.240.0.0/14")
    no_duplicates(cluster.wait_assigned(names, timeout=120))


def test_sigterm_stops_promptly(cluster: Cluster, start_controller: Start) -> None:
    controller = start_controller("--cluster-cidr=10.244.0.0/16")
    cluster.create_nodes(["x"])
    cluster.wait_assigned(["x"])
    assert controller.stop() == 0  # stop() fails the test past 15 s
    assert "allocated" in controller.log() and "stopped" in controller.log()
    assert "objects frozen for the garbage collector" in controller.log()
    assert "Traceback" not in controller.log() and "ERROR" not in controller.log(), controller.log()


def test_metrics_need_a_token_health_does_not(cluster: Cluster, start_controller: Start) -> None:
    controller = start_controller("--cluster-cidr=10.244.0.0/16")
    cluster.create_nodes(["m1", "m2"])
    cluster.wait_assigned(["m1", "m2"])
    wait_for(lambda: controller.get("/readyz", token=None) == 200, what="readyz")
    assert controller.get("/healthz", token=None) == 200
    assert controller.get("/livez", token=None) == 200
    # The kubelet's probes, from the probe process: plain http, what the main loop said at its last beat.
    assert [controller.probe(path) for path in ("/healthz", "/livez", "/readyz", "/metrics")] == [200, 200, 200, 404]
    assert controller.get("/metrics", token=None) == 401
    assert controller.get("/metrics", token="not-a-token") == 401
    metrics = controller.read("/metrics")  # the admin token: authenticated and authorized by the API server
    assert 'node_ipam_controller_cidrset_cidrs_allocations_total{clusterCIDR="10.244.0.0/16"} 2.0' in metrics
    assert 'node_ipam_controller_cidrset_max_cidrs{clusterCIDR="10.244.0.0/16"} 256.0' in metrics
    # kube-controller-manager's names, which its dashboards query: the misspelt one and the leader's status.
    assert 'node_ipam_controller_cirdset_max_cidrs{clusterCIDR="10.244.0.0/16"} 256.0' in metrics
    assert re.search(r'^leader_election_master_status\{name="[^"]+"\} 1\.0$', metrics, re.MULTILINE), metrics
    # The start-up freeze is one full collection at least, recorded as a pause of generation 2.
    full = re.search(r'node_ipam_controller_gc_pause_seconds_count\{generation="2"\} (\S+)', metrics)
    assert full is not None and float(full.group(1)) >= 1, metrics


#: What a flood of the metrics port may add to the controller's memory: 128 connections take ~40 MiB;
#: before the limits it added ~830 MiB (the chart's default memory limit is 412 MiB).
FLOOD_MEMORY_MIB = 100


def test_a_flood_of_the_metrics_port_leaves_memory_bounded_and_a_scrape_answers(
    cluster: Cluster, start_controller: Start
) -> None:
    """1,000 idle TLS connections, then 2,000 /metrics requests with random tokens, all held open (bench/flood.py)."""
    raise_open_files_limit()  # before the controller starts: it inherits the limit
    controller = start_controller("--cluster-cidr=10.244.0.0/16")
    cluster.create_nodes(["flooded"])
    cluster.wait_assigned(["flooded"])
    wait_for(lambda: controller.get("/readyz", token=None) == 200, what="readyz")

    def token_reviews() -> int:
        return apiserver_token_reviews(cluster.plane.server, ADMIN_TOKEN)

    # The port is served by a process of its own: the flood's connections are held there.
    server = wait_for(lambda: metrics_server_pid(controller.process.pid), what="the metrics port's process")
    figures = measure(controller.metrics_port, server, 1000, 2000, ADMIN_TOKEN, token_reviews)
    print("\n".join(figures.lines()))
    assert figures.peak_rss_mib - figures.rss_at_rest_mib < FLOOD_MEMORY_MIB, figures
    assert figures.scrape_status == 200 and figures.probe_status == 200, figures
    assert figures.token_reviews_after_clients_left <= REVIEWS_AT_ONCE, figures
    closed = re.search(
        r'^node_ipam_controller_metrics_port_refused_total\{reason="idle_closed"\} (\S+)$', controller.read("/metrics"), re.M
    )
    assert closed is not None and float(closed.group(1)) > 0, "idle connections closed to make room are counted"


BAD_FLAGS = [
    pytest.param([], "--cluster-cidr", id="missing-cluster-cidr"),
    pytest.param(["--cluster-cidr=10.0.0.0/16,10.1.0.0/16"], "--cluster-cidr", id="two-ipv4"),
    pytest.param(["--cluster-cidr=10.0.0.0/16,fd00::/48,10.2.0.0/16"], "--cluster-cidr", id="three-cidrs"),
    pytest.param(["--cluster-cidr=10.0.0/16"], "--cluster-cidr", id="malformed"),
    pytest.param(
        ["--cluster-cidr=10.0.0.0/16,fd00::/48", "--node-cidr-mask-size=24"], "--node-cidr-mask-size", id="dual-single-mask"
    ),
    pytest.param(
        ["--cluster-cidr=fd00::/48", "--node-cidr-mask-size-ipv4=24"], "--node-cidr-mask-size-ipv4", id="ipv4-flag-on-ipv6"
    ),
    pytest.param(
        ["--cluster-cidr=10.0.0.0/16", "--node-cidr-mask-size-ipv6=64"], "--node-cidr-mask-size-ipv6", id="ipv6-flag-on-ipv4"
    ),
    pytest.param(["--cluster-cidr=10.0.0.0/16", "--node-cidr-mask-size=8"], "--node-cidr-mask-size", id="mask-shorter-ipv4"),
    pytest.param(
        ["--cluster-cidr=fd00::/48", "--node-cidr-mask-size-ipv6=32"], "--node-cidr-mask-size-ipv6", id="mask-shorter-ipv6"
    ),
    pytest.param(["--cluster-cidr=10.0.0.0/16", "--cidr-allocator-type=CloudAllocator"], "--cidr-allocator-type", id="cloud"),
    pytest.param(["--cluster-cidr=10.0.0.0/16", "--resync-period=soon"], "--resync-period", id="bad-duration"),
]


@pytest.mark.parametrize(("flags", "named"), BAD_FLAGS)
def test_bad_flags_fail_fast_naming_the_flag(flags: list[str], named: str) -> None:
    # The kubeconfig points at nothing: a failure must come before any connection.
    result = run_cli("run", *flags, kubeconfig="/nonexistent/kubeconfig")
    assert result.returncode == 2, result.stderr
    assert named in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_realistic_bodies_are_about_ten_kilobytes() -> None:
    import json

    assert 9_000 < len(json.dumps(realistic_node("ip-10-0-0-1.eu-west-1.compute.internal", 1))) < 12_000
