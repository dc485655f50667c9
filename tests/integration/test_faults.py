"""The controller against the real API server through the fault proxy: lost answers, errors, cut watches, stalls.

Each controller talks to the API server only through its own FaultProxy
(`--master http://127.0.0.1:PORT`); the tests arrange Nodes directly.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import json
import re
import ssl
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import pytest
from kubernetes import client

from controller import config
from controller.inspect import compute_status, find_problems
from controller.kube import node_of
from controller.lifecycle import SHUTDOWN_GRACE_SECONDS
from controller.model import NodeInfo
from localcluster.cluster import ADMIN_TOKEN, LocalControlPlane
from localcluster.nodebodies import realistic_node
from tests.conftest import wait_for
from tests.faultproxy import Action, FaultProxy, Forwarded, Rule, is_list_continue, is_resumed_watch, is_watch, not_watch
from tests.integration.conftest import (
    LEASE_SECONDS,
    Cluster,
    ControllerProcess,
    Proxied,
    fetch,
    leader_flags,
    no_duplicates,
)

pytestmark = pytest.mark.integration

Start = Callable[..., ControllerProcess]
NODE_PATCH = r"^/api/v1/nodes/[^/]+$"
NODE_WATCH = r"^/api/v1/nodes$"
ALLOCATED_METRIC = re.compile(r'^node_ipam_controller_cidrset_allocated_cidrs\{clusterCIDR="([^"]+)"\} (\S+)$', re.MULTILINE)
KOPF_RESTARTS_METRIC = re.compile(r'^node_ipam_controller_background_failures_total\{loop="kopf"\} (\S+)$', re.MULTILINE)
#: A small range in each family, for the tests that cut, refuse or hold what the controller sends.
SMALL_RANGES = pytest.mark.parametrize(
    ("cluster_cidr", "mask"),
    [pytest.param("10.0.0.0/28", 30, id="ipv4"), pytest.param("fd00:10::/62", 64, id="ipv6")],
)


# -- helpers shared with the chaos suite ---------------------------------------------------------------


def node_infos(core: client.CoreV1Api) -> list[NodeInfo]:
    """Every Node as the controller reads it (raw JSON, as kube.py sees it)."""
    response = core.list_node(_preload_content=False)
    return [node_of(item) for item in json.loads(response.data)["items"]]


def allocated_metric(controller: ControllerProcess) -> dict[str, int] | None:
    """node_ipam_controller_cidrset_allocated_cidrs per cluster CIDR, from the controller's /metrics (None: no answer)."""
    status, text = fetch(f"https://127.0.0.1:{controller.metrics_port}/metrics", ADMIN_TOKEN)
    if status != 200:
        return None
    return {cidr: int(float(value)) for cidr, value in ALLOCATED_METRIC.findall(text)}


def expected_allocated(
    core: client.CoreV1Api, ranges: Sequence[config.FamilyRange], service: str | None = None
) -> dict[str, int]:
    """What a controller rebuilt from the live Nodes would count: no leak, nothing missing."""
    status = compute_status(node_infos(core), ranges, config.build_service_cidrs(service))
    return {usage.cluster_cidr: usage.allocated for usage in status.ranges}


def wait_no_leak(
    core: client.CoreV1Api,
    controller: ControllerProcess,
    ranges: Sequence[config.FamilyRange],
    service: str | None = None,
    timeout: float = 60.0,
) -> dict[str, int]:
    """Wait until the controller's allocated count equals the live Nodes' ranges; returns it."""
    last: list[object] = []

    def settled() -> dict[str, int] | None:
        seen, expected = allocated_metric(controller), expected_allocated(core, ranges, service)
        last[:] = [seen, expected]
        return expected if seen == expected else None

    try:
        return wait_for(settled, timeout=timeout, what="the allocated count to match the live Nodes")
    except AssertionError:
        raise AssertionError(f"allocated count (controller, live Nodes): {last}") from None


def create_nodes_parallel(core: client.CoreV1Api, names: Sequence[str], workers: int = 8, first_index: int = 0) -> None:
    """Register Nodes as kubelets do: realistic bodies, many at once."""
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(lambda item: core.create_node(realistic_node(item[1], item[0])), enumerate(names, first_index)))


def lease_acquired_at(plane: LocalControlPlane, lease: str) -> tuple[str, float]:
    """(holder, acquireTime as a Unix time) of a Lease in `default`."""
    out = plane.kubectl("get", "lease", lease, "-n", "default", "-o", "json")
    spec = json.loads(out)["spec"]
    acquired = datetime.datetime.strptime(spec["acquireTime"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=datetime.UTC)
    return spec.get("holderIdentity", ""), acquired.timestamp()


def node_lists(proxy: FaultProxy) -> list[Forwarded]:
    """LISTs of all Nodes (not watches) that went through the proxy."""
    return [entry for entry in proxy.forwarded("GET", NODE_WATCH) if "watch=" not in entry.query]


def kopf_restarts(controller: ControllerProcess) -> int:
    """node_ipam_controller_background_failures_total{loop="kopf"} from the controller's /metrics (0: not there yet)."""
    found = KOPF_RESTARTS_METRIC.findall(controller.read("/metrics"))
    return int(float(found[0])) if found else 0


def kopf_listed(proxy: FaultProxy) -> bool:
    """kopf's watch began with its listing: a paged LIST (the second LIST of Nodes), or a streamed one."""
    streamed = any("sendInitialEvents=true" in entry.query for entry in proxy.forwarded("GET", NODE_WATCH))
    return streamed or len(node_lists(proxy)) >= 2


def serving_after_kopfs_listing(
    proxied: Proxied, cluster: Cluster, cluster_cidr: str, mask: int, names: list[str]
) -> tuple[FaultProxy, ControllerProcess, dict[str, list[str]]]:
    """A controller behind its own proxy (resync every 5 s), `names` registered and assigned, kopf's listing done."""
    proxy, controller = proxied(f"--cluster-cidr={cluster_cidr}", f"--node-cidr-mask-size={mask}", "--resync-period=5s")
    cluster.create_nodes(names)
    held = cluster.wait_assigned(names)
    wait_for(lambda: kopf_listed(proxy), timeout=30, what="kopf's listing")
    return proxy, controller, held


def poll_until(condition: Callable[[], object], timeout: float) -> bool:
    """Like wait_for, but says whether it happened instead of failing."""
    try:
        wait_for(condition, timeout=timeout)
    except AssertionError:
        return False
    return True


# -- hole 1: a podCIDR patch applied, its answer lost ------------------------------------------------


@SMALL_RANGES
def test_patch_applied_but_answer_lost_never_gives_the_range_to_another_node(
    proxied: Proxied, cluster: Cluster, cluster_cidr: str, mask: int
) -> None:
    ranges = config.build_ranges(cluster_cidr, mask)
    proxy, controller = proxied(f"--cluster-cidr={cluster_cidr}", f"--node-cidr-mask-size={mask}", "--resync-period=10m")
    slots = [str(subnet) for subnet in ipaddress.ip_network(cluster_cidr).subnets(new_prefix=mask)]
    cluster.create_nodes(["a0", "a1", "a2"])
    assert sorted(value[0] for value in cluster.wait_assigned(["a0", "a1", "a2"]).values()) == sorted(slots[:3])

    # Every answer to the victim's patch is lost, though the API server applies it; its re-read is slow.
    cut = proxy.add(Rule(Action.CUT_AFTER, path="^/api/v1/nodes/victim$", methods=frozenset({"PATCH"}), name="cut"))
    slow = proxy.add(Rule(Action.LATENCY, path="^/api/v1/nodes/victim$", methods=frozenset({"GET"}), delay=4.0, name="slow"))
    cluster.create_nodes(["victim"])
    wait_for(lambda: cut.fired, timeout=30, what="the victim's patch to be cut")
    assert cluster.pod_cidrs()["victim"] == [slots[3]], "the patch was applied"
    # The next registration lands while the victim's outcome is unknown (its re-read in flight, if it re-reads).
    poll_until(lambda: slow.fired, timeout=20)
    cluster.core.create_node(realistic_node("second", 9))

    def second_settled() -> bool:
        if cluster.pod_cidrs().get("second"):
            return True
        events = cluster.core.list_namespaced_event("default", field_selector="involvedObject.name=second").items
        return any(event.reason == "CIDRNotAvailable" for event in events)

    wait_for(second_settled, timeout=30, what="the second node to get a range or wait for one")
    cidrs = cluster.pod_cidrs()
    no_duplicates(cidrs)
    assert cidrs["victim"] == [slots[3]], "the victim keeps the range it got"
    assert cidrs["second"] == [], f"only {slots[3]} was free, and the victim holds it"
    proxy.clear()
    assert wait_no_leak(cluster.core, controller, ranges) == {str(ranges[0].cluster_cidr): 4}
    print(f"injected: {proxy.injected()}")


# -- a flaky API during a burst ------------------------------------------------------------------------


def flaky_rules(cut: float = 0.2, errors: float = 0.1) -> list[Rule]:
    """`cut` of podCIDR patch answers lost after the patch applied; `errors` of all requests 500/503/429."""
    third = errors / 3
    return [
        Rule(Action.STATUS, status=500, probability=third, name="500"),
        Rule(Action.STATUS, status=503, probability=third / (1 - third), name="503"),
        Rule(Action.STATUS, status=429, retry_after=1, probability=third / (1 - 2 * third), name="429"),
        Rule(Action.CUT_AFTER, path=NODE_PATCH, methods=frozenset({"PATCH"}), probability=cut, name="cut-patch"),
    ]


#: A range in each family with room for every Node of a test.
ROOMY_RANGES = pytest.mark.parametrize(
    ("cluster_cidr", "mask"),
    [pytest.param("10.240.0.0/16", 24, id="ipv4"), pytest.param("fd00:10:240::/56", 64, id="ipv6")],
)


@ROOMY_RANGES
def test_flaky_api_during_a_burst_assigns_every_node_once(
    proxied: Proxied, cluster: Cluster, cluster_cidr: str, mask: int
) -> None:
    names = [f"flaky-{i}" for i in range(100)]
    ranges = config.build_ranges(cluster_cidr, mask)
    proxy, controller = proxied(f"--cluster-cidr={cluster_cidr}", f"--node-cidr-mask-size={mask}", "--resync-period=10s", seed=11)
    wait_for(lambda: controller.get("/readyz") == 200, what="the controller to be ready")
    for rule in flaky_rules():
        proxy.add(rule)
    create_nodes_parallel(cluster.core, names)
    cluster.wait_assigned(names, timeout=180)
    cidrs = cluster.wait_single_ranges_inside(names, cluster_cidr, mask)
    injected = proxy.injected()
    proxy.clear()
    assert not find_problems(node_infos(cluster.core), ranges)
    assert wait_no_leak(cluster.core, controller, ranges) == {cluster_cidr: len(names)}
    assert controller.process.poll() is None
    assert injected["cut-patch"] > 0 and injected["500"] + injected["503"] + injected["429"] > 0, injected
    print(f"{len(cidrs)} nodes, injected: {injected}")


# -- a watch cut while Nodes are deleted -------------------------------------------------------------


@SMALL_RANGES
def test_watch_cut_while_nodes_are_deleted_a_relist_frees_their_ranges(
    proxied: Proxied, cluster: Cluster, cluster_cidr: str, mask: int
) -> None:
    ranges = config.build_ranges(cluster_cidr, mask)
    # The rebuild's LIST and kopf's listing; the resync lists nothing while the watch is whole.
    proxy, controller, held = serving_after_kopfs_listing(proxied, cluster, cluster_cidr, mask, [f"w{i}" for i in range(4)])
    # The open Node watch ends, and every resumed watch is told its version is gone: no DELETED event gets
    # through. kopf lists again (a streamed listing is let through).
    proxy.add(Rule(Action.CLOSE_WATCH, path=NODE_WATCH, query=is_watch, after_seconds=0, name="close"))
    gone = proxy.add(Rule(Action.GONE, path=NODE_WATCH, query=is_resumed_watch, name="gone"))
    # A refused resume shows the watch that was open has ended (one watch of Nodes at a time) and none can start.
    wait_for(lambda: gone.fired, timeout=30, what="the node watch to be cut and refused")
    for name in ("w1", "w2"):
        cluster.delete_node(name)
    later = ["x1", "x2"]
    cluster.create_nodes(later)
    cidrs = cluster.wait_assigned(later, timeout=60)
    no_duplicates(cidrs)
    assert sorted(cidrs[name][0] for name in later) == sorted(held[name][0] for name in ("w1", "w2"))
    relists = [entry for entry in node_lists(proxy) if "resourceVersionMatch=NotOlderThan" in entry.query]
    assert relists, "the ranges were freed by a LIST after the gap, answered from the API server's cache"
    proxy.clear()
    assert wait_no_leak(cluster.core, controller, ranges) == {str(ranges[0].cluster_cidr): 4}
    print(f"injected: {proxy.injected()}")


# -- a watch error from an API server whose watch cache is behind etcd -------------------------------------


@SMALL_RANGES
def test_a_watch_error_restarts_kopf_and_the_controller_goes_on_serving(
    proxied: Proxied, cluster: Cluster, cluster_cidr: str, mask: int
) -> None:
    ranges = config.build_ranges(cluster_cidr, mask)
    proxy, controller, held = serving_after_kopfs_listing(proxied, cluster, cluster_cidr, mask, [f"e{i}" for i in range(4)])
    # The open Node watch ends, and the next two watches are answered as by an API server whose watch cache
    # is behind etcd (504, "Too large resource version"): kopf takes that for fatal and ends its operator.
    close = proxy.add(Rule(Action.CLOSE_WATCH, path=NODE_WATCH, query=is_watch, after_seconds=0, name="close"))
    behind = proxy.add(Rule(Action.WATCH_ERROR, status=504, path=NODE_WATCH, query=is_watch, count=2, name="behind"))
    wait_for(lambda: behind.fired >= 2, timeout=30, what="two watches answered with a 504 ERROR event")
    proxy.remove(close)
    cluster.delete_node("e1")  # while kopf is down: no DELETED event reaches it
    wait_for(lambda: "kopf's watch failed" in controller.log(), timeout=30, what="the warning")
    later = ["f1"]
    cluster.create_nodes(later)
    cidrs = cluster.wait_assigned(later, timeout=60)
    assert cidrs["f1"] == held["e1"], "the range of the Node deleted while kopf was down was freed, by a LIST"
    no_duplicates(cluster.wait_assigned(["e0", "e2", "e3", "f1"]))
    assert controller.process.poll() is None, controller.log()
    assert wait_no_leak(cluster.core, controller, ranges) == {str(ranges[0].cluster_cidr): 4}
    # Each start of kopf after a watch error is counted, as the warning says.
    restarts = controller.log().count("kopf's watch failed")
    assert restarts >= 1 and kopf_restarts(controller) == restarts, (kopf_restarts(controller), restarts)


# -- SIGTERM while kopf reads the API's discovery documents ---------------------------------------------


@SMALL_RANGES
def test_sigterm_while_kopf_reads_discovery_stops_without_an_error(
    proxied: Proxied, control_plane: LocalControlPlane, cluster: Cluster, cluster_cidr: str, mask: int
) -> None:
    """A SIGTERM soon after the start, while kopf still reads which resources the API serves (one read held).

    kopf leaves those reads running when it is cancelled; a read still connecting failed on the session kopf
    had closed, an ERROR in the log (test_handlers reproduces that without timing). Here the reads are cancelled
    with kopf and the log stays clean.
    """
    proxy = FaultProxy(control_plane.server).start()
    held = proxy.add(
        Rule(Action.STALL, path=r"^/apis/admissionregistration\.k8s\.io/", methods=frozenset({"GET"}), name="discovery")
    )
    _, controller = proxied(f"--cluster-cidr={cluster_cidr}", f"--node-cidr-mask-size={mask}", proxy=proxy)
    cluster.create_nodes(["d1"])
    cluster.wait_assigned(["d1"])
    wait_for(lambda: proxy.injected().get(held.name, 0) >= 1, timeout=30, what="kopf's discovery read to be held")
    assert controller.stop() == 0
    log = controller.log()
    assert "stopped" in log
    assert "ERROR" not in log and "Traceback" not in log, log


# -- a whole watch: the resync lists nothing, and still serves a Node whose patches failed ----------------


@SMALL_RANGES
def test_resync_lists_nothing_while_the_watch_is_whole_and_serves_a_node_whose_patches_were_refused(
    proxied: Proxied, cluster: Cluster, cluster_cidr: str, mask: int
) -> None:
    ranges = config.build_ranges(cluster_cidr, mask)
    proxy, controller = proxied(f"--cluster-cidr={cluster_cidr}", f"--node-cidr-mask-size={mask}", "--resync-period=2s")
    cluster.create_nodes(["first"])
    cluster.wait_assigned(["first"])
    wait_for(lambda: kopf_listed(proxy), timeout=30, what="the rebuild's LIST and kopf's listing")
    lists_at_start = len(node_lists(proxy))
    # Every patch of this Node is refused for a while: its handling gives up, and only the resync tries again.
    refused = proxy.add(
        Rule(Action.STATUS, status=422, path="^/api/v1/nodes/refused$", methods=frozenset({"PATCH"}), count=5, name="refused")
    )
    cluster.create_nodes(["refused"])
    wait_for(lambda: refused.fired >= 5, timeout=30, what="five refused patches")
    cidrs = cluster.wait_assigned(["first", "refused"], timeout=30)
    no_duplicates(cidrs)
    time.sleep(5)  # more resync periods: still no LIST
    assert len(node_lists(proxy)) == lists_at_start, "a LIST of all Nodes while the watch had no gap"
    assert wait_no_leak(cluster.core, controller, ranges) == {str(ranges[0].cluster_cidr): 2}


# -- a start-up LIST that fails part-way -------------------------------------------------------------------

PAGED_NODES = 520  # more than one LIST page (500), so the rebuild needs a continue token


@pytest.mark.parametrize(
    ("cluster_cidr", "mask", "preset"),
    [
        pytest.param("10.0.0.0/8", 24, lambda i: f"10.{i // 256}.{i % 256}.0/24", id="ipv4"),
        pytest.param("fd00:10::/48", 64, lambda i: f"fd00:10:0:{i:x}::/64", id="ipv6"),
    ],
)
def test_startup_list_failing_part_way_is_retried_not_a_crash(
    proxied: Proxied, cluster: Cluster, cluster_cidr: str, mask: int, preset: Callable[[int], str]
) -> None:
    ranges = config.build_ranges(cluster_cidr, mask)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: cluster.core.create_node(realistic_node(f"held-{i}", i, (preset(i),))), range(PAGED_NODES)))
    cluster.create_nodes(["waiting-0", "waiting-1"])
    proxy = FaultProxy(cluster.plane.server).start()
    gone = proxy.add(Rule(Action.GONE, path=NODE_WATCH, query=is_list_continue, count=2, name="gone-on-continue"))
    refused = proxy.add(Rule(Action.STATUS, status=503, path=NODE_WATCH, query=not_watch, duration=6.0, name="list-503"))
    _, controller = proxied(f"--cluster-cidr={cluster_cidr}", f"--node-cidr-mask-size={mask}", "--resync-period=10m", proxy=proxy)
    wait_for(lambda: refused.fired > 0, timeout=30, what="the start-up LIST to be refused")
    assert controller.get("/readyz") != 200, "not ready before the rebuild"
    cidrs = cluster.wait_assigned(["waiting-0", "waiting-1"], timeout=120)
    assert gone.fired == 2, "the rebuild met 410 on its continue token, and retried"
    assert controller.process.poll() is None, f"the controller exited:\n{controller.log()}"
    no_duplicates(cidrs)
    held = {preset(i) for i in range(PAGED_NODES)}
    assert not held & {cidrs["waiting-0"][0], cidrs["waiting-1"][0]}, "a held range was handed out again"
    assert wait_no_leak(cluster.core, controller, ranges) == {cluster_cidr: PAGED_NODES + 2}
    print(f"injected: {proxy.injected()}")


# -- an API server refusing everything for 30 s ----------------------------------------------------------


@ROOMY_RANGES
def test_api_refusing_everything_for_30s_controller_waits_and_recovers(
    proxied: Proxied, cluster: Cluster, cluster_cidr: str, mask: int
) -> None:
    ranges = config.build_ranges(cluster_cidr, mask)
    proxy, controller = proxied(f"--cluster-cidr={cluster_cidr}", f"--node-cidr-mask-size={mask}", "--resync-period=10s")
    cluster.create_nodes(["before-0", "before-1"])
    cluster.wait_assigned(["before-0", "before-1"])
    outage = proxy.add(Rule(Action.STATUS, status=503, duration=30.0, name="outage"))
    during = [f"during-{i}" for i in range(3)]
    cluster.create_nodes(during)
    wait_for(lambda: not outage.active, timeout=45, what="the outage to end")
    assert controller.process.poll() is None, f"the controller exited during the outage:\n{controller.log()}"
    assert "503" in controller.log(), "the outage is logged"
    cluster.wait_assigned(during, timeout=90)
    after = ["after-0", "after-1"]
    cluster.create_nodes(after)
    no_duplicates(cluster.wait_assigned(after, timeout=30))
    cluster.wait_single_ranges_inside(["before-0", "before-1", *during, *after], cluster_cidr, mask)
    assert wait_no_leak(cluster.core, controller, ranges) == {cluster_cidr: 7}
    assert controller.process.poll() is None
    print(f"injected: {proxy.injected()}")


# -- hole 6: a leader whose Lease renewals stall ----------------------------------------------------------

CLUSTER_FLAGS = ("--cluster-cidr=10.244.0.0/16", "--node-cidr-mask-size=24", "--resync-period=10m")
# The old leader may exit on losing the lease (1), as kube-controller-manager does; the teardown's SIGTERM can
# also land while it is exiting, after its signal handlers are gone (-15).
OLD_LEADER_EXIT_CODES = (0, 1, -9, -15)


def lease_holder(plane: LocalControlPlane, lease: str) -> str:
    out = plane.kubectl("get", "lease", lease, "-n", "default", "-o", "jsonpath={.spec.holderIdentity}", check=False)
    return out.strip()


class Registrations:
    """Nodes registering one after another in a thread, until stopped; `sent` says when each create was sent."""

    def __init__(self, core: client.CoreV1Api, prefix: str, interval: float = 0.1, limit: int = 250) -> None:
        self.names: list[str] = []
        self.sent: dict[str, float] = {}  # name -> Unix time its create was sent
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(core, prefix, interval, limit), daemon=True)

    def __enter__(self) -> Registrations:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self, core: client.CoreV1Api, prefix: str, interval: float, limit: int) -> None:
        for index in range(limit):
            if self._stop.wait(interval):
                return
            name = f"{prefix}-{index}"
            self.sent[name] = time.time()
            core.create_node(realistic_node(name, index))
            self.names.append(name)


def patched_by(proxy: FaultProxy) -> list[float]:
    """When each successful podCIDR patch went through this proxy (Unix times)."""
    return [entry.at for entry in proxy.forwarded("PATCH", NODE_PATCH) if 200 <= entry.status < 300]


@ROOMY_RANGES
def test_stalled_lease_renewals_old_leader_stops_before_the_standby_starts(
    proxied: Proxied, cluster: Cluster, cluster_cidr: str, mask: int
) -> None:
    lease = f"nodeipam-stall-{mask}-{int(time.time())}"
    lease_path = f"^/apis/coordination.k8s.io/v1/namespaces/default/leases/{lease}$"
    flags = (f"--cluster-cidr={cluster_cidr}", f"--node-cidr-mask-size={mask}", "--resync-period=10m")
    first_proxy, first = proxied(*leader_flags("first", lease, *flags))
    first.expected_codes = OLD_LEADER_EXIT_CODES
    wait_for(lambda: lease_holder(cluster.plane, lease) == "first", what="first to hold the lease")
    second_proxy, second = proxied(*leader_flags("second", lease, *flags))
    wait_for(lambda: "waiting for the lease" in second.log(), what="second to stand by")
    with Registrations(cluster.core, "reg") as registrations:
        wait_for(lambda: len(patched_by(first_proxy)) >= 5, what="the leader to allocate")
        stall = first_proxy.add(Rule(Action.STALL, path=lease_path, methods=frozenset({"GET", "PUT"}), name="stall-lease"))
        wait_for(lambda: lease_holder(cluster.plane, lease) == "second", timeout=30, what="second to take the lease")
        took_over = time.time()
        # Keep registering while the old leader may still believe it leads.
        wait_for(
            lambda: len(patched_by(second_proxy)) >= 20 and time.time() - took_over > 3 * LEASE_SECONDS,
            timeout=60,
            what="the new leader to allocate for a while",
        )
    holder, acquired = lease_acquired_at(cluster.plane, lease)
    assert holder == "second"
    first_proxy.remove(stall)
    cluster.wait_single_ranges_inside(registrations.names, cluster_cidr, mask)
    late = [at for at in patched_by(first_proxy) if at >= acquired]
    assert not late, (
        f"the old leader patched {len(late)} nodes after the new leader acquired the lease, "
        f"the last {max(late) - acquired:.1f}s after"
    )
    assert patched_by(second_proxy), "the new leader allocates"
    assert_exits_by_itself(first)


def assert_exits_by_itself(deposed: ControllerProcess) -> None:
    """A deposed leader exits on its own (1, as kube-controller-manager does), its cleanup not cut short.

    kopf cancelled twice (once for the lost lease, once for the stop it causes) abandoned its watcher
    half-stopped, and the event loop's final cleanup then waited for it for good.
    """
    wait_for(lambda: deposed.process.poll() is not None, timeout=SHUTDOWN_GRACE_SECONDS + 10, what="the old leader to exit")
    assert deposed.process.returncode == 1, deposed.log()
    assert "stopping did not finish" not in deposed.log(), f"its cleanup hung until the deadline:\n{deposed.log()}"


# -- shutdown is bounded, whatever is still in flight -------------------------------------------------------

TOKEN_REVIEWS = r"^/apis/authentication\.k8s\.io/v1/tokenreviews$"


def patient_scrape(controller: ControllerProcess) -> None:
    """GET /metrics as a scraper with a long timeout would: it holds the connection open while it waits."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    request = urllib.request.Request(
        f"https://127.0.0.1:{controller.metrics_port}/metrics", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
    )
    with contextlib.suppress(OSError):
        urllib.request.urlopen(request, timeout=120, context=context).close()


def scrape_held_at_token_review(proxy: FaultProxy, controller: ControllerProcess) -> None:
    """Start a /metrics scrape whose TokenReview the proxy holds; return once it is held."""
    wait_for(lambda: controller.get("/readyz", token=None) in (200, 503), what="the controller to serve")
    stall = proxy.add(Rule(Action.STALL, path=TOKEN_REVIEWS, methods=frozenset({"POST"}), name="stall-reviews"))
    threading.Thread(target=patient_scrape, args=(controller,), daemon=True).start()
    wait_for(lambda: proxy.injected().get(stall.name, 0) >= 1, what="the scrape's TokenReview to be held")


@pytest.mark.parametrize("role", ["leader", "standby"])
def test_sigterm_with_a_scrape_hanging_on_its_token_review_still_stops_promptly(
    proxied: Proxied, cluster: Cluster, role: str
) -> None:
    """SIGTERM while a /metrics scrape waits on a TokenReview the API server never answers.

    A Prometheus scrape during a rolling update, with the API server slow: the health server waited up to a
    minute for the request in flight, past the Pod's grace period, on a standby (kopf never ran) as well as
    on a leader.
    """
    lease = f"nodeipam-scrape-{role}-{int(time.time())}"
    _, leader = proxied(*leader_flags("leader", lease, *CLUSTER_FLAGS))
    wait_for(lambda: lease_holder(cluster.plane, lease) == "leader", what="the leader to hold the lease")
    proxy, controller = proxied(*leader_flags("standby", lease, *CLUSTER_FLAGS)) if role == "standby" else (None, leader)
    if proxy is None:
        proxy = next(p for p, c in proxied.started if c is leader)
    else:
        wait_for(lambda: "waiting for the lease" in controller.log(), what="the standby to wait")
    scrape_held_at_token_review(proxy, controller)
    started = time.monotonic()
    assert controller.stop() == 0, controller.log()
    print(f"{role} stopped {time.monotonic() - started:.1f}s after SIGTERM with a scrape in flight")
    # The signal is ours even while kopf runs: one path stops everything, within the deadline.
    assert "SIGTERM: stopping" in controller.log()
