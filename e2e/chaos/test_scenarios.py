"""Six chaos scenarios against a real kube-apiserver, each ending with the audit.

The audit: no duplicate, overlapping or out-of-range podCIDRs; every live Node
assigned; the controller's allocated count equal to the live Nodes' ranges.
Scenario 4 is also watched as it runs: every podCIDR write is checked against
the live holders of that moment (tests/overlapwatch.py). Every scenario runs
with an IPv4 and an IPv6 cluster CIDR. Sizes come from the profile
(NODEIPAM_CHAOS=quick|full, see conftest.py).
"""

from __future__ import annotations

import dataclasses
import itertools
import random
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import pytest
from kubernetes import client

from controller import config
from e2e.chaos.conftest import (
    PROFILE,
    AuditResult,
    assert_clean,
    audit,
    create_node,
    delete_node,
    seed_for,
    summarize,
)
from tests.conftest import wait_for
from tests.faultproxy import Action, FaultProxy, Rule, is_watch
from tests.integration.conftest import Cluster, ControllerProcess, Proxied, leader_flags
from tests.integration.test_faults import (
    NODE_PATCH,
    NODE_WATCH,
    OLD_LEADER_EXIT_CODES,
    assert_exits_by_itself,
    expected_allocated,
    flaky_rules,
    lease_acquired_at,
    lease_holder,
    node_infos,
)
from tests.overlapwatch import OverlapWatch

pytestmark = [pytest.mark.integration, pytest.mark.e2e, pytest.mark.timeout(PROFILE.timeout)]

Start = Callable[..., ControllerProcess]
WORKERS = 8


class Burst:
    """Nodes registering from a thread pool in the background, at most `rate` per second; bad data mixed in."""

    def __init__(
        self,
        core: client.CoreV1Api,
        names: Sequence[str],
        rate: float | None = None,
        preset: dict[str, tuple[str, ...]] | None = None,
    ) -> None:
        self.core = core
        self.names = list(names)
        self.rate = rate
        self.preset = preset or {}
        self.created = 0
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._errors: list[BaseException] = []

    def __enter__(self) -> Burst:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._thread.join()
        if self._errors and not any(exc):
            raise self._errors[0]

    def wait_created(self, count: int) -> None:
        wait_for(lambda: self.created >= count or self._errors, timeout=PROFILE.timeout, what=f"{count} nodes created")

    def _run(self) -> None:
        started = time.monotonic()

        def register(item: tuple[int, str]) -> None:
            index, name = item
            if self.rate:
                time.sleep(max(0.0, started + index / self.rate - time.monotonic()))
            try:
                create_node(self.core, name, index, self.preset.get(name, ()))
            except BaseException as error:
                self._errors.append(error)
                raise
            with self._lock:
                self.created += 1

        with ThreadPoolExecutor(WORKERS) as pool:
            list(pool.map(register, enumerate(self.names)))


def finish(
    scenario: str,
    core: client.CoreV1Api,
    controller: ControllerProcess,
    ranges: Sequence[config.FamilyRange],
    faults: int,
    started: float,
    seed: int,
    service: str | None = None,
    foreign: frozenset[str] = frozenset(),
    extra: str = "",
    watch: OverlapWatch | None = None,
) -> AuditResult:
    """The audit, the summary line, then the assertions (the overlap watch's first, if the scenario had one)."""
    result = audit(core, controller, ranges, service, foreign, timeout=max(120.0, PROFILE.burst_nodes / 10))
    if watch is not None:
        watch.settle()
        extra = f"{extra} {watch.summary()}".strip()
    summarize(scenario, result, faults, started, seed, extra)
    if watch is not None:
        watch.assert_no_overlap()
    assert_clean(result, controller)
    return result


#: Each scenario's IPv4 and IPv6 row: the family, its cluster CIDR and the node mask.
BURST_FAMILIES = [
    pytest.param("ipv4", "10.128.0.0/12", 24, id="ipv4"),
    pytest.param("ipv6", "fd00:128::/48", 64, id="ipv6"),
]
FAMILY_COLUMNS = ("family", "cluster_cidr", "mask")


# -- 1. SIGKILL the controller at random moments during a burst ---------------------------------------


@pytest.mark.parametrize(FAMILY_COLUMNS, BURST_FAMILIES)
def test_1_sigkill_the_controller_during_a_burst(
    cluster: Cluster, chaos_core: client.CoreV1Api, start_controller: Start, family: str, cluster_cidr: str, mask: int
) -> None:
    seed, started = seed_for("1"), time.monotonic()
    rng = random.Random(seed)
    sizes = PROFILE.for_family(family)
    count, kills = sizes.burst_nodes, sizes.kills
    ranges = config.build_ranges(cluster_cidr, mask)
    flags = (f"--cluster-cidr={cluster_cidr}", f"--node-cidr-mask-size={mask}", "--resync-period=30s")
    controller = start_controller(*flags)
    thresholds = sorted(rng.sample(range(count // 10, count), kills))
    with Burst(chaos_core, [f"s1-{i}" for i in range(count)], rate=count / (kills * 4.0)) as burst:
        for threshold in thresholds:
            burst.wait_created(threshold)
            time.sleep(rng.uniform(0.5, 3.0))  # a random moment in the controller's life, start-up included
            controller.kill()
            controller = start_controller(*flags)
    finish(f"1-sigkill-burst/{family}", chaos_core, controller, ranges, kills, started, seed, extra=f"kills={kills}")


# -- 2. restart kube-apiserver, or etcd, mid-burst --------------------------------------------------------


@pytest.mark.parametrize(FAMILY_COLUMNS, BURST_FAMILIES)
@pytest.mark.parametrize(
    ("component", "kill"), [pytest.param("kube-apiserver", False, id="apiserver"), pytest.param("etcd", True, id="etcd")]
)
def test_2_restart_the_control_plane_mid_burst(
    cluster: Cluster,
    chaos_core: client.CoreV1Api,
    start_controller: Start,
    component: str,
    kill: bool,
    family: str,
    cluster_cidr: str,
    mask: int,
) -> None:
    seed, started = seed_for("2"), time.monotonic()
    count = PROFILE.for_family(family).burst_nodes
    ranges = config.build_ranges(cluster_cidr, mask)
    controller = start_controller(f"--cluster-cidr={cluster_cidr}", f"--node-cidr-mask-size={mask}", "--resync-period=30s")
    wait_for(lambda: controller.get("/readyz") == 200, what="the controller to be ready")
    restart = cluster.plane.restart_apiserver if component == "kube-apiserver" else cluster.plane.restart_etcd
    with Burst(chaos_core, [f"s2-{i}" for i in range(count)], rate=count / 10.0) as burst:
        burst.wait_created(count // 3)
        restart(kill=kill)
    how = "SIGKILL" if kill else "SIGTERM"
    finish(f"2-restart-{component}/{family}", chaos_core, controller, ranges, 1, started, seed, extra=how)


# -- 3. leader election: kill the leader, stall its renewals ------------------------------------------------


# Longer than the fault tests' 4 s: during a 2,000-Node burst on two shared cores, the harness itself (the
# burst's client threads and the proxies share one Python process) can hold a renewal for more than 3 s, and
# a leader that cannot renew in time steps down and exits, as it must.
LEASE_SECONDS = 8


def replica_flags(identity: str, lease: str, cluster_cidr: str, mask: int) -> list[str]:
    flags = (f"--cluster-cidr={cluster_cidr}", f"--node-cidr-mask-size={mask}", "--resync-period=30s")
    return leader_flags(identity, lease, *flags, lease_seconds=LEASE_SECONDS)


@pytest.mark.parametrize(FAMILY_COLUMNS, BURST_FAMILIES)
def test_3a_kill_the_leader_mid_burst(
    cluster: Cluster, chaos_core: client.CoreV1Api, start_controller: Start, family: str, cluster_cidr: str, mask: int
) -> None:
    seed, started = seed_for("3a"), time.monotonic()
    rng = random.Random(seed)
    sizes = PROFILE.for_family(family)
    count, kills = sizes.burst_nodes, sizes.leader_kills
    ranges = config.build_ranges(cluster_cidr, mask)
    lease = f"chaos-kill-{family}-{int(time.time())}"
    serial = itertools.count(2)
    replicas = {identity: start_controller(*replica_flags(identity, lease, cluster_cidr, mask)) for identity in ("r0", "r1")}
    wait_for(lambda: lease_holder(cluster.plane, lease) in replicas, what="a leader")
    thresholds = sorted(rng.sample(range(count // 10, count), kills))
    with Burst(chaos_core, [f"s3a-{i}" for i in range(count)], rate=count / (kills * 8.0 + 4)) as burst:
        for threshold in thresholds:
            burst.wait_created(threshold)
            leader = lease_holder(cluster.plane, lease)
            replicas.pop(leader).kill()
            identity = f"r{next(serial)}"  # unique: two replicas of one identity would both count as the holder
            replicas[identity] = start_controller(*replica_flags(identity, lease, cluster_cidr, mask))
            wait_for(
                lambda leader=leader: lease_holder(cluster.plane, lease) not in ("", leader),  # type: ignore[misc]
                timeout=LEASE_SECONDS * 5,
                what="a standby to take over",
            )
    current = replicas[lease_holder(cluster.plane, lease)]
    finish(f"3a-kill-leader/{family}", chaos_core, current, ranges, kills, started, seed, extra=f"leader-kills={kills}")


@pytest.mark.parametrize(FAMILY_COLUMNS, BURST_FAMILIES)
def test_3b_stall_the_leaders_renewals_mid_burst(
    cluster: Cluster, chaos_core: client.CoreV1Api, proxied: Proxied, family: str, cluster_cidr: str, mask: int
) -> None:
    seed, started = seed_for("3b"), time.monotonic()
    count = PROFILE.for_family(family).burst_nodes
    ranges = config.build_ranges(cluster_cidr, mask)
    lease = f"chaos-stall-{family}-{int(time.time())}"
    lease_path = f"^/apis/coordination.k8s.io/v1/namespaces/default/leases/{lease}$"
    first_proxy, first = proxied(*replica_flags("first", lease, cluster_cidr, mask))
    first.expected_codes = OLD_LEADER_EXIT_CODES
    wait_for(lambda: lease_holder(cluster.plane, lease) == "first", what="first to lead")
    _, second = proxied(*replica_flags("second", lease, cluster_cidr, mask))
    with Burst(chaos_core, [f"s3b-{i}" for i in range(count)], rate=count / 20.0) as burst:
        burst.wait_created(count // 4)
        first_proxy.add(Rule(Action.STALL, path=lease_path, methods=frozenset({"GET", "PUT"}), name="stall-lease"))
        wait_for(lambda: lease_holder(cluster.plane, lease) == "second", timeout=60, what="second to take over")
    _, acquired = lease_acquired_at(cluster.plane, lease)
    late = [
        entry.at for entry in first_proxy.forwarded("PATCH", NODE_PATCH) if entry.at >= acquired and 200 <= entry.status < 300
    ]
    first_proxy.clear()
    result = audit(chaos_core, second, ranges)
    summarize(
        f"3b-stall-renewals/{family}",
        result,
        first_proxy.total_injected(),
        started,
        seed,
        extra=f"old-leader-patches-after-takeover={len(late)}",
    )
    assert not late, f"the old leader patched {len(late)} nodes after the new leader acquired the lease"
    assert_clean(result, second)
    assert_exits_by_itself(first)


# -- 4. create/delete cycles, deletes racing creates of the same names -------------------------------------


@pytest.mark.parametrize(
    FAMILY_COLUMNS,
    # 64 ranges for 40 names: reuse comes quickly
    [pytest.param("ipv4", "10.64.0.0/18", 24, id="ipv4"), pytest.param("ipv6", "fd00:64::/58", 64, id="ipv6")],
)
def test_4_create_delete_cycles_with_reused_names(
    cluster: Cluster, chaos_core: client.CoreV1Api, start_controller: Start, family: str, cluster_cidr: str, mask: int
) -> None:
    seed, started = seed_for("4"), time.monotonic()
    rng = random.Random(seed)
    pool = [f"c{i}" for i in range(40)]
    ranges = config.build_ranges(cluster_cidr, mask)
    controller = start_controller(f"--cluster-cidr={cluster_cidr}", f"--node-cidr-mask-size={mask}", "--resync-period=10s")
    plan = [rng.choice(pool) for _ in range(PROFILE.cycles)]
    recreated = 0
    lock = threading.Lock()

    def cycle(item: tuple[int, str]) -> None:
        nonlocal recreated
        index, name = item
        if create_node(chaos_core, name, index):
            with lock:
                recreated += 1
        if rng.random() < 0.5:
            time.sleep(rng.uniform(0, 0.3))  # sometimes long enough for the controller to patch
        delete_node(chaos_core, name)

    # Every podCIDR write is checked as it happens: a duplicate handed out and deleted again is gone by the end.
    with OverlapWatch(chaos_core) as watch:
        with ThreadPoolExecutor(PROFILE.in_flight) as workers:
            list(workers.map(cycle, enumerate(plan)))
        for index, name in enumerate(pool):
            create_node(chaos_core, name, index)
        finish(
            f"4-create-delete-cycles/{family}",
            chaos_core,
            controller,
            ranges,
            PROFILE.cycles,
            started,
            seed,
            extra=f"cycles={PROFILE.cycles} in-flight={PROFILE.in_flight} new-uids={recreated}",
            watch=watch,
        )
    assert watch.writes >= len(pool), "the watch saw at least the patches of the Nodes left"


# -- 5. bad data mixed into a burst ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class BadData:
    """One family's cluster CIDR (256 node subnets), service range, and what someone else sets before and during."""

    cluster_cidr: str
    mask: int
    service: str  # inside the cluster CIDR: the first node subnet is never a Node's
    before: dict[str, tuple[str, ...]]  # set by someone else before the controller starts
    during: dict[str, tuple[str, ...]]  # registered mid-burst, high in the range: next-fit has not handed these out yet


BAD_DATA = {
    "ipv4": BadData(
        "10.200.0.0/16",
        24,
        "10.200.0.0/25",
        before={
            "bad-outside": ("192.168.5.0/24",),
            "bad-long-0": ("10.200.4.0/26",),
            "bad-long-1": ("10.200.4.64/26",),
            "bad-long-2": ("10.200.4.128/26",),
            "bad-long-3": ("10.200.4.192/26",),
            "bad-service": ("10.200.0.0/25",),
        },
        during={
            "bad-wrong-mask": ("10.200.250.0/23",),
            "bad-other-family": ("fd00:99::/64",),
            "bad-dup-a": ("10.200.253.0/24",),
            "bad-dup-b": ("10.200.253.0/24",),
        },
    ),
    "ipv6": BadData(
        "fd00:200::/56",
        64,
        "fd00:200::/112",
        before={
            "bad-outside": ("fd00:99::/64",),
            "bad-long-0": ("fd00:200:0:4::/66",),
            "bad-long-1": ("fd00:200:0:4:4000::/66",),
            "bad-long-2": ("fd00:200:0:4:8000::/66",),
            "bad-long-3": ("fd00:200:0:4:c000::/66",),
            "bad-service": ("fd00:200::/112",),
        },
        during={
            "bad-wrong-mask": ("fd00:200:0:fa::/63",),
            "bad-other-family": ("192.168.99.0/24",),
            "bad-dup-a": ("fd00:200:0:fd::/64",),
            "bad-dup-b": ("fd00:200:0:fd::/64",),
        },
    ),
}
DELETED_MID_BURST = ("bad-long-0", "bad-service")  # their ranges stay covered by others' claims


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_5_bad_data_mixed_into_a_burst(
    cluster: Cluster, chaos_core: client.CoreV1Api, start_controller: Start, family: str
) -> None:
    seed, started = seed_for("5"), time.monotonic()
    rng = random.Random(seed)
    bad = BAD_DATA[family]
    # At most 200 Nodes: a few node subnets of the 256 stay free, and the controller reaches the bad data high in
    # the range only after it appeared (someone else's overlap with an earlier allocation is not the controller's).
    count = min(PROFILE.for_family(family).burst_nodes, 200)
    ranges = config.build_ranges(bad.cluster_cidr, bad.mask)
    for index, (name, cidrs) in enumerate(bad.before.items()):
        create_node(chaos_core, name, 10_000 + index, cidrs)
    controller = start_controller(
        f"--cluster-cidr={bad.cluster_cidr}",
        f"--node-cidr-mask-size={bad.mask}",
        f"--service-cluster-ip-range={bad.service}",
        "--resync-period=30s",
    )
    names = [f"s5-{i}" for i in range(count)]
    for name in bad.during:
        names.insert(rng.randrange(len(names) * 3 // 4), name)
    with Burst(chaos_core, names, rate=count / 10.0, preset=bad.during) as burst:
        burst.wait_created(len(names) // 2)
        for name in DELETED_MID_BURST:
            delete_node(chaos_core, name)
    # Then fill every range still free, so that next-fit comes back to the ones the deleted Nodes left covered.
    wait_for(lambda: all(node.pod_cidrs for node in node_infos(chaos_core)), timeout=120, what="the burst assigned")
    size = ranges[0].cluster_cidr.prefixlen
    free = 2 ** (bad.mask - size) - expected_allocated(chaos_core, ranges, bad.service)[bad.cluster_cidr]
    with Burst(chaos_core, [f"s5-fill-{i}" for i in range(free)]):
        pass
    # Free two and register two more: next-fit wraps, and must find the two freed, not what bad data covers.
    wait_for(lambda: all(node.pod_cidrs for node in node_infos(chaos_core)), timeout=120, what="the fill assigned")
    for name in ("s5-fill-0", "s5-fill-1"):
        delete_node(chaos_core, name)
    with Burst(chaos_core, ["s5-late-0", "s5-late-1"]):
        pass
    foreign = frozenset(bad.before) | frozenset(bad.during)
    faults = len(foreign) + len(DELETED_MID_BURST)
    finish(
        f"5-bad-data/{family}",
        chaos_core,
        controller,
        ranges,
        faults,
        started,
        seed,
        service=bad.service,
        foreign=foreign,
        extra=f"filled={free}",
    )


# -- 6. a stateful random walk against the real API server ------------------------------------------------------

FAULTS: dict[str, Callable[[], list[Rule]]] = {
    "flaky": lambda: flaky_rules(cut=0.3, errors=0.1),
    "cut-watches": lambda: [Rule(Action.CLOSE_WATCH, path=NODE_WATCH, query=is_watch, after_seconds=2.0, name="close-watch")],
    "slow": lambda: [Rule(Action.LATENCY, delay=0.3, name="latency")],
}


class Walk:
    """Random steps (create, delete, preset, restart, fault on/off) with the audit after each one."""

    def __init__(self, core: client.CoreV1Api, proxied: Proxied, rng: random.Random, cluster_cidr: str, mask: int) -> None:
        self.core = core
        self.proxied = proxied
        self.rng = rng
        self.cluster_cidr, self.mask = cluster_cidr, mask
        self.ranges = config.build_ranges(cluster_cidr, mask)
        self.flags = (f"--cluster-cidr={cluster_cidr}", f"--node-cidr-mask-size={mask}", "--resync-period=5s")
        self.proxy: FaultProxy = FaultProxy(proxied.plane.server, seed=rng.randrange(2**32)).start()
        self.controller = self.start()
        self.faults: dict[str, list[Rule]] = {}
        self.history: list[str] = []
        self.restarts = 0
        self.serial = 0

    def start(self) -> ControllerProcess:
        """A controller behind the walk's proxy, once it serves (a SIGTERM before that would find no handler)."""
        controller = self.proxied(*self.flags, proxy=self.proxy)[1]
        wait_for(lambda: controller.get("/healthz") == 200, timeout=60, what="the controller to serve")
        return controller

    def live(self) -> dict[str, list[str]]:
        return {node.metadata.name: list(node.spec.pod_cidrs or []) for node in self.core.list_node().items}

    def step(self) -> str:
        live = self.live()
        pool = [f"w{i}" for i in range(10)]
        free_names = [name for name in pool if name not in live]
        choices = ["restart", "fault"]
        if len(live) < 6:
            choices += ["create", "create", "preset"]
        if live:
            choices += ["delete", "delete"]
        action = self.rng.choice(choices)
        self.serial += 1
        if action == "create":
            name = self.rng.choice(free_names)
            create_node(self.core, name, self.serial)
            return f"create {name}"
        if action == "delete":
            name = self.rng.choice(sorted(live))
            delete_node(self.core, name)
            wait_for(lambda: name not in self.live(), timeout=30, what=f"{name} gone")
            return f"delete {name}"
        if action == "preset":
            taken = {cidr for cidrs in live.values() for cidr in cidrs}
            slots = [str(s) for s in self.ranges[0].cluster_cidr.subnet(self.mask) if str(s) not in taken]
            name, cidr = self.rng.choice(free_names), self.rng.choice(slots)
            create_node(self.core, name, self.serial, (cidr,))
            return f"preset {name} {cidr}"
        if action == "restart":
            how = self.rng.choice(["SIGKILL", "SIGTERM"])
            if how == "SIGKILL":
                self.controller.kill()
            else:
                assert self.controller.stop() == 0, self.controller.log()
            self.controller = self.start()
            self.restarts += 1
            return f"restart ({how})"
        name = self.rng.choice(sorted(FAULTS))
        if name in self.faults:
            for rule in self.faults.pop(name):
                self.proxy.remove(rule)
            return f"fault {name} off"
        self.faults[name] = [self.proxy.add(rule) for rule in FAULTS[name]()]
        return f"fault {name} on"


@pytest.mark.parametrize(
    FAMILY_COLUMNS,
    # 8 node subnets, at most 6 Nodes: ranges are reused all the time
    [pytest.param("ipv4", "10.50.0.0/25", 28, id="ipv4"), pytest.param("ipv6", "fd00:50::/61", 64, id="ipv6")],
)
def test_6_stateful_random_walk(
    cluster: Cluster, chaos_core: client.CoreV1Api, proxied: Proxied, family: str, cluster_cidr: str, mask: int
) -> None:
    seed, started = seed_for("6"), time.monotonic()
    steps = PROFILE.for_family(family).steps
    walk = Walk(chaos_core, proxied, random.Random(seed), cluster_cidr, mask)
    result: AuditResult | None = None
    for number in range(1, steps + 1):
        walk.history.append(walk.step())
        result = audit(chaos_core, walk.controller, walk.ranges, timeout=90)
        if not result.clean:
            summarize(
                f"6-stateful-walk/{family}",
                result,
                walk.proxy.total_injected() + walk.restarts,
                started,
                seed,
                extra=f"failed at step {number}",
            )
            steps = "\n".join(f"  {i}. {line}" for i, line in enumerate(walk.history, 1))
            raise AssertionError(f"audit failed after step {number} (seed {seed}):\n{steps}\n{result.findings}") from None
    summarize(
        f"6-stateful-walk/{family}",
        result,
        walk.proxy.total_injected() + walk.restarts,
        started,
        seed,
        extra=f"steps={steps} restarts={walk.restarts}",
    )
    assert result is not None
    assert_clean(result, walk.controller)
