"""Regression tests of record: ways one range could end up on two Nodes, each tried against a real API server.

Every test runs `nodeipam run` as a process and only looks at what the API
server and the controller's /metrics show: no Node may ever hold a range that
overlaps another live Node's range (or the service range), every live Node ends
up assigned, and the controller counts exactly the ranges live Nodes hold.
"""

from __future__ import annotations

import ipaddress
import json
import random
import re
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from localcluster.cluster import ADMIN_TOKEN, LocalControlPlane
from localcluster.nodebodies import realistic_node
from tests import etcdraw
from tests.conftest import wait_for
from tests.integration.conftest import Cluster, ControllerProcess, fetch
from tests.overlapwatch import OverlapWatch

pytestmark = pytest.mark.integration

Start = Callable[..., ControllerProcess]
CidrMap = dict[str, list[str]]

ALLOCATED_METRIC = re.compile(r'^node_ipam_controller_cidrset_allocated_cidrs\{clusterCIDR="[^"]+"\} (\S+)$', re.MULTILINE)


# -- helpers ----------------------------------------------------------------------------------------------


def parts(cidr: str, new_prefix: int) -> list[str]:
    """The subnets of `cidr` with prefix `new_prefix`, as the API shows them."""
    return [str(subnet) for subnet in ipaddress.ip_network(cidr).subnets(new_prefix=new_prefix)]


def overlapping_pairs(cidrs: CidrMap, extra: dict[str, str] | None = None) -> list[str]:
    """Every pair of ranges held by two different holders that share an address (not only equal ones)."""
    held = [(name, ipaddress.ip_network(cidr)) for name, values in cidrs.items() for cidr in values]
    held += [(name, ipaddress.ip_network(cidr)) for name, cidr in (extra or {}).items()]
    found = []
    for index, (name, network) in enumerate(held):
        for other_name, other in held[index + 1 :]:
            if name != other_name and network.version == other.version and network.overlaps(other):
                found.append(f"{name} has {network}, {other_name} has {other}")
    return found


def assert_disjoint(cidrs: CidrMap, extra: dict[str, str] | None = None) -> None:
    """No two Nodes (nor a Node and an `extra` range such as the service range) hold overlapping ranges."""
    pairs = overlapping_pairs(cidrs, extra)
    assert not pairs, "overlapping podCIDRs:\n  " + "\n  ".join(pairs) + f"\n{json.dumps(cidrs, indent=1, sort_keys=True)}"


def ready(controller: ControllerProcess) -> bool:
    return controller.get("/readyz") == 200


def allocated_count(controller: ControllerProcess) -> int | None:
    """node_ipam_controller_cidrset_allocated_cidrs summed over the cluster CIDRs (None: no answer)."""
    status, text = fetch(f"https://127.0.0.1:{controller.metrics_port}/metrics", ADMIN_TOKEN)
    if status != 200:
        return None
    return sum(int(float(value)) for value in ALLOCATED_METRIC.findall(text))


def wait_settled(cluster: Cluster, names: list[str], capacity: int, timeout: float = 45.0) -> CidrMap:
    """Wait until `capacity` of `names` hold a range and the rest were told none is left (CIDRNotAvailable).

    Also returns as soon as more than `capacity` hold one, so that the overlap a
    broken controller hands out is reported as such rather than as a timeout.
    """

    def settled() -> CidrMap | None:
        cidrs = cluster.pod_cidrs()
        assigned = [name for name in names if cidrs.get(name)]
        if len(assigned) > capacity:
            return cidrs
        if len(assigned) < capacity:
            return None
        left_out = [name for name in names if not cidrs.get(name)]
        told = all(any(e.reason == "CIDRNotAvailable" for e in cluster.events_for(name)) for name in left_out)
        return cidrs if told else None

    result = wait_for(settled, timeout=timeout, what=f"{capacity} of {len(names)} nodes assigned, the rest told none is left")
    assert result is not None
    return result


# -- hole: Nodes that hold ranges with a longer mask than the flag ----------------------------------------


@pytest.mark.parametrize(
    ("cluster_cidr", "mask", "held_subnet", "part_mask"),
    [
        pytest.param("10.0.0.0/22", 24, "10.0.0.0/24", 26, id="ipv4"),
        pytest.param("fd00:10::/62", 64, "fd00:10::/64", 66, id="ipv6"),
    ],
)
def test_subnet_split_among_longer_masks_stays_taken_until_its_last_holder_goes(
    cluster: Cluster, start_controller: Start, cluster_cidr: str, mask: int, held_subnet: str, part_mask: int
) -> None:
    # After a migration from an allocator that gave /26s (/66s): four Nodes share one of our node subnets.
    held = parts(held_subnet, part_mask)
    for index, cidr in enumerate(held):
        cluster.create_nodes([f"part-{index}"], pod_cidrs=(cidr,))
    controller = start_controller(f"--cluster-cidr={cluster_cidr}", f"--node-cidr-mask-size={mask}", "--resync-period=10m")
    wait_for(lambda: ready(controller), what="the controller to be ready")
    cluster.delete_node("part-0")  # three parts of the subnet are still held
    newcomers = [f"new-{index}" for index in range(4)]
    cluster.create_nodes(newcomers)
    cidrs = wait_settled(cluster, newcomers, capacity=3)  # the other three node subnets; one Node must wait
    assert_disjoint(cidrs)
    assert sorted(cidrs[name][0] for name in newcomers if cidrs[name]) == sorted(parts(cluster_cidr, mask)[1:])


@pytest.mark.parametrize(
    ("cluster_cidr", "mask", "wide", "neighbours", "free"),
    [
        pytest.param("10.0.0.0/21", 24, "10.0.0.0/22", ["10.0.1.0/24", "10.0.2.64/26", "10.0.4.0/24"], 5, id="ipv4"),
        pytest.param(
            "fd00:10::/61", 64, "fd00:10::/62", ["fd00:10:0:1::/64", "fd00:10:0:2:4000::/66", "fd00:10:0:4::/64"], 5, id="ipv6"
        ),
    ],
)
def test_deleting_a_node_with_a_shorter_mask_keeps_its_neighbours_ranges_taken(
    cluster: Cluster,
    start_controller: Start,
    cluster_cidr: str,
    mask: int,
    wide: str,
    neighbours: list[str],
    free: int,
) -> None:
    # One Node covers four node subnets; two Nodes hold ranges inside it (bad data), one holds the next subnet.
    cluster.create_nodes(["wide"], pod_cidrs=(wide,))
    for index, cidr in enumerate(neighbours):
        cluster.create_nodes([f"neighbour-{index}"], pod_cidrs=(cidr,))
    controller = start_controller(f"--cluster-cidr={cluster_cidr}", f"--node-cidr-mask-size={mask}", "--resync-period=10m")
    wait_for(lambda: ready(controller), what="the controller to be ready")
    cluster.delete_node("wide")
    newcomers = [f"new-{index}" for index in range(free + 1)]
    cluster.create_nodes(newcomers)
    cidrs = wait_settled(cluster, newcomers, capacity=free)
    assert_disjoint(cidrs)


# -- hole: a Node holding exactly the service range -------------------------------------------------------


@pytest.mark.parametrize(
    ("cluster_cidr", "mask", "service"),
    [
        pytest.param("10.0.0.0/24", 26, "10.0.0.0/25", id="ipv4"),
        pytest.param("fd00:10::/62", 64, "fd00:10::/63", id="ipv6"),
    ],
)
def test_service_range_stays_out_of_the_pool_after_a_node_holding_it_is_deleted(
    cluster: Cluster, start_controller: Start, cluster_cidr: str, mask: int, service: str
) -> None:
    cluster.create_nodes(["holds-service"], pod_cidrs=(service,))  # bad data
    newcomers = ["w-0", "w-1", "w-2"]
    cluster.create_nodes(newcomers)
    start_controller(
        f"--cluster-cidr={cluster_cidr}",
        f"--node-cidr-mask-size={mask}",
        f"--service-cluster-ip-range={service}",
        "--resync-period=10m",
    )
    # Two node subnets lie outside the service range: two Nodes get them, the third waits.
    cidrs = wait_settled(cluster, newcomers, capacity=2)
    assert_disjoint({name: cidrs[name] for name in newcomers}, extra={"the service range": service})
    (waiting,) = [name for name in newcomers if not cidrs[name]]
    freed_by = next(name for name in newcomers if cidrs[name])

    cluster.delete_node("holds-service")  # the service range is still the service range
    cluster.delete_node(freed_by)  # one honest range comes free: the waiting Node must get that one
    cidrs = cluster.wait_assigned([waiting])
    assert_disjoint(cidrs, extra={"the service range": service})


# -- hole: a Node name reused (new UID) -------------------------------------------------------------------


class Churn:
    """Deletes and re-creates the same Node names from several threads at once, each cycle a new UID.

    The pause before a delete varies, so deletes land before, during and after
    the controller's patch for the previous incarnation.
    """

    PAUSES = (0.0, 0.0, 0.01, 0.03, 0.1, 0.3)

    def __init__(self, core: client.CoreV1Api, names: list[str], cycles: int, seed: int = 7, time_limit: float = 25.0) -> None:
        self.core = core
        self.names = names
        self.cycles = cycles
        self.seed = seed
        self.time_limit = time_limit
        self.recreated = 0
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(len(names))
        self._futures: list[Any] = []

    def start(self) -> Churn:
        deadline = time.monotonic() + self.time_limit
        self._futures = [self._pool.submit(self._cycle, index, name, deadline) for index, name in enumerate(self.names)]
        return self

    def stop(self) -> None:
        """End every thread after its current cycle."""
        self._stop.set()

    def join(self) -> int:
        """Wait for every thread; returns how many times a name was re-created."""
        for future in self._futures:
            future.result()
        self._pool.shutdown()
        assert not self.errors, self.errors
        return self.recreated

    def _cycle(self, index: int, name: str, deadline: float) -> None:
        rng = random.Random(self.seed * 1000 + index)
        self._create(name, index)
        for _ in range(self.cycles):
            if self._stop.is_set() or time.monotonic() > deadline:
                break
            time.sleep(rng.choice(self.PAUSES))
            try:
                self.core.delete_node(name)
            except ApiException as error:
                if error.status != 404:
                    self._record(f"delete {name}: {error.status} {error.reason}")
            self._create(name, index)
            with self._lock:
                self.recreated += 1

    def _create(self, name: str, index: int) -> None:
        """Create, retrying while the previous Node of that name is still being removed."""
        give_up = time.monotonic() + 10
        while True:
            try:
                body: Any = realistic_node(name, index)
                self.core.create_node(body)
                return
            except ApiException as error:
                if error.status != 409 or time.monotonic() > give_up:
                    self._record(f"create {name}: {error.status} {error.reason}")
                    return
            time.sleep(0.01)

    def _record(self, error: str) -> None:
        with self._lock:
            self.errors.append(error)


def wait_every_node_assigned_once(cluster: Cluster, controller: ControllerProcess, names: list[str]) -> CidrMap:
    """The end state after churn: every Node assigned, no overlap, and the controller counts exactly their ranges."""
    try:
        cidrs = cluster.wait_assigned(names, timeout=30)
    except AssertionError:
        cidrs = cluster.pod_cidrs()
        unassigned = sorted(name for name in names if not cidrs.get(name))
        raise AssertionError(
            f"nodes {unassigned} never got a range; the controller counts {allocated_count(controller)} allocated ranges,"
            f" live Nodes hold {sum(len(values) for values in cidrs.values())}: {json.dumps(cidrs, sort_keys=True)}"
        ) from None
    assert_disjoint(cidrs)
    last: dict[str, int | None] = {}

    def counted() -> bool:
        last["live"] = sum(len(values) for values in cluster.pod_cidrs().values())
        last["seen"] = allocated_count(controller)
        return last["seen"] == last["live"]

    try:
        wait_for(counted, timeout=20, what="the allocated count to equal the live Nodes' ranges")
    except AssertionError:
        seen, live = last["seen"], last["live"]
        kind = "a leak" if seen is not None and live is not None and seen > live else "a range freed under a live Node"
        raise AssertionError(f"the controller counts {seen} allocated ranges, live Nodes hold {live}: {kind}") from None
    assert_disjoint(cluster.pod_cidrs())
    return cidrs


# As many node subnets as names: a range freed under a live Node goes at once to a Node waiting for one.
REUSE_FAMILIES = [
    pytest.param("10.0.0.0/21", 24, id="ipv4"),
    pytest.param("fd00:10::/61", 64, id="ipv6"),
]
REUSED_NAMES = [f"reused-{index}" for index in range(8)]
RESTARTS = 3


@pytest.mark.parametrize(("cluster_cidr", "mask"), REUSE_FAMILIES)
def test_node_names_reused_quickly_end_assigned_once_with_nothing_leaked(
    cluster: Cluster, start_controller: Start, cluster_cidr: str, mask: int
) -> None:
    controller = start_controller(f"--cluster-cidr={cluster_cidr}", f"--node-cidr-mask-size={mask}", "--resync-period=2s")
    wait_for(lambda: ready(controller), what="the controller to be ready")
    with OverlapWatch(cluster.core) as watch:
        recreated = Churn(cluster.core, REUSED_NAMES, cycles=30).start().join()
        print(f"{recreated} re-creations of {len(REUSED_NAMES)} names")
        wait_every_node_assigned_once(cluster, controller, REUSED_NAMES)
        watch.settle()
    print(watch.summary())
    watch.assert_no_overlap()
    assert watch.writes >= len(REUSED_NAMES), "the watch saw at least the patches of the Nodes left"


@pytest.mark.parametrize(("cluster_cidr", "mask"), REUSE_FAMILIES)
def test_restarts_while_names_are_reused_end_assigned_once_with_nothing_leaked(
    cluster: Cluster, start_controller: Start, cluster_cidr: str, mask: int
) -> None:
    flags = (f"--cluster-cidr={cluster_cidr}", f"--node-cidr-mask-size={mask}", "--resync-period=2s")
    controller = start_controller(*flags)
    wait_for(lambda: ready(controller), what="the first controller to be ready")
    with OverlapWatch(cluster.core) as watch:
        churn = Churn(cluster.core, REUSED_NAMES, cycles=1000, seed=11, time_limit=50).start()
        for _ in range(RESTARTS):
            enough = churn.recreated + 30
            wait_for(lambda: churn.recreated >= enough, what="names to be re-created a few times")  # noqa: B023 - used at once
            # Each successor lists Nodes while old incarnations are being deleted: late events about old UIDs follow.
            assert controller.stop() == 0
            successor = controller = start_controller(*flags)
            wait_for(lambda: ready(successor), what="the successor to be ready")  # noqa: B023 - used at once
        enough = churn.recreated + 150  # the last successor lives through churn too
        wait_for(lambda: churn.recreated >= enough, what="names to be re-created under the last successor")
        churn.stop()
        recreated = churn.join()
        print(f"{recreated} re-creations of {len(REUSED_NAMES)} names across {RESTARTS} restarts")
        wait_every_node_assigned_once(cluster, controller, REUSED_NAMES)
        watch.settle()
    print(watch.summary())
    watch.assert_no_overlap()
    assert watch.writes >= len(REUSED_NAMES), "the watch saw at least the patches of the Nodes left"


# -- hole: stored podCIDRs that today's API server would refuse (leading zeros) ---------------------------


@pytest.fixture(scope="module")
def json_plane() -> Iterator[LocalControlPlane]:
    """A control plane of its own whose etcd holds JSON, so tests can write what the API would refuse."""
    with LocalControlPlane(extra_apiserver_flags=("--storage-media-type=application/json",)) as plane:
        yield plane


@pytest.fixture
def json_cluster(json_plane: LocalControlPlane) -> Iterator[Cluster]:
    api = config.new_client_from_config(config_file=json_plane.kubeconfig)
    the_cluster = Cluster(json_plane, client.CoreV1Api(api))
    the_cluster.delete_all_nodes()
    yield the_cluster
    the_cluster.delete_all_nodes()


@pytest.fixture
def start_json_controller(json_plane: LocalControlPlane) -> Iterator[Start]:
    started: list[ControllerProcess] = []
    log_dir = Path(tempfile.mkdtemp(prefix="nodeipam-test-logs-"))

    def start(*flags: str) -> ControllerProcess:
        process = ControllerProcess.run(json_plane, list(flags), log_dir)
        started.append(process)
        return process

    yield start
    for process in started:
        code = process.stop()
        assert code in process.expected_codes, f"controller exited with {code}:\n{process.log()}"


def store_pod_cidr(plane: LocalControlPlane, name: str, value: str) -> None:
    """Write spec.podCIDR(s) of a Node straight into etcd, past the API server's validation."""

    def change(node: dict[str, Any]) -> None:
        node["spec"]["podCIDR"] = value
        node["spec"]["podCIDRs"] = [value]

    etcdraw.rewrite_json(plane.etcd_url, etcdraw.node_key(name), change)


def served_pod_cidrs(cluster: Cluster, name: str) -> list[str]:
    """spec.podCIDRs of a Node as the API server serves it."""
    node: Any = cluster.core.read_node(name)
    return list(node.spec.pod_cidrs or [])


@pytest.mark.parametrize(
    ("cluster_cidr", "mask", "stored", "means"),
    [
        pytest.param("10.244.0.0/16", 24, "10.244.01.0/24", "10.244.1.0/24", id="ipv4-leading-zeros"),
        pytest.param("fd00:10:244::/48", 64, "fd00:10:244:0001::/64", "fd00:10:244:1::/64", id="ipv6-leading-zeros"),
    ],
)
def test_stored_pod_cidr_written_sloppily_keeps_its_range_taken(
    json_cluster: Cluster, start_json_controller: Start, cluster_cidr: str, mask: int, stored: str, means: str
) -> None:
    json_cluster.create_nodes(["sloppy"], pod_cidrs=(means,))
    store_pod_cidr(json_cluster.plane, "sloppy", stored)
    wait_for(
        lambda: served_pod_cidrs(json_cluster, "sloppy") == [stored],
        what=f"the API server to serve the stored {stored}",
    )
    waiting = [f"w-{index}" for index in range(3)]
    json_cluster.create_nodes(waiting)
    start_json_controller(f"--cluster-cidr={cluster_cidr}", f"--node-cidr-mask-size={mask}")
    cidrs = json_cluster.wait_assigned(waiting)
    cidrs["sloppy"] = [means]  # what kube-controller-manager reads it as
    assert_disjoint(cidrs)
    if ipaddress.ip_network(means).version == 4:  # only IPv4 leading zeros are refused today; warn about those
        event = json_cluster.wait_event("sloppy", "InvalidPodCIDR")
        assert event.type == "Warning" and stored in event.message, event.message
