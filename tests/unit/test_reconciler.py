"""The reconciler's decisions carried out against an in-process fake of the API (a unit of logic only).

The behaviour against the real API server is covered by tests/integration.
The fake keeps Nodes, applies merge patches as the API server does (UID
precondition, podCIDRs immutable once set) and fails on a script.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

import netaddr
import pytest

from controller import assign as assign_module
from controller import poolsync as poolsync_module
from controller import reconciler as reconciler_module
from controller import supervisor as supervisor_module
from controller.backoff import Backoff
from controller.config import FamilyRange
from controller.inflight import InFlight
from controller.kube import ApiError
from controller.metrics import Metrics
from controller.model import NodeInfo
from controller.nodes import NodeAllocations
from controller.reconciler import NodeApi, Reconciler
from controller.reservations import ReservationState
from tests.cidrsets import is_taken

V4 = FamilyRange(netaddr.IPNetwork("10.0.0.0/22"), 24)
V6 = FamilyRange(netaddr.IPNetwork("fd00::/62"), 64)
FAMILIES = [pytest.param(V4, id="ipv4"), pytest.param(V6, id="ipv6")]

T = TypeVar("T")

APPLY = "apply"  # a patch outcome: applied and answered
LOST = "lost"  # applied, then the answer is lost (status 0)


@dataclasses.dataclass
class FakeApi:
    """Nodes by name; patch outcomes and read failures from scripts (an ApiError raised before applying = refusal)."""

    nodes: dict[str, NodeInfo] = dataclasses.field(default_factory=dict)
    patch_script: list[str | ApiError] = dataclasses.field(default_factory=list)
    get_script: list[ApiError | None] = dataclasses.field(default_factory=list)
    list_script: list[BaseException | None] = dataclasses.field(default_factory=list)
    watch_events: list[tuple[str, NodeInfo]] = dataclasses.field(default_factory=list)
    lists: list[bool] = dataclasses.field(default_factory=list)  # one entry per LIST of Nodes: whether from the cache
    patched: list[tuple[str, list[str]]] = dataclasses.field(default_factory=list)
    events: list[tuple[str, str, str]] = dataclasses.field(default_factory=list)
    read_gate: asyncio.Event | None = None  # get_node waits for it when set
    reads_held: int = 0  # reads that waited at the gate
    pools: dict[str, dict[str, Any]] | None = None  # None: the NodeCIDRPool CRD is not installed
    pool_events: list[tuple[str, str, str]] = dataclasses.field(default_factory=list)
    statuses: dict[str, list[dict[str, Any]]] = dataclasses.field(default_factory=dict)  # every status written, per pool
    status_refusal: ApiError | None = None  # raised by every status write while set
    status_writes: int = 0  # status writes sent, refused ones too

    def add(self, name: str, *cidrs: str, uid: str | None = None) -> NodeInfo:
        node = NodeInfo(name, uid or f"uid-{name}", tuple(cidrs))
        self.nodes[name] = node
        return node

    async def list_nodes(self, *, from_cache: bool = False) -> tuple[list[NodeInfo], str]:
        self.lists.append(from_cache)
        failure = self.list_script.pop(0) if self.list_script else None
        if failure is not None:
            raise failure
        return list(self.nodes.values()), "100"

    async def watch_nodes(self, resource_version: str) -> AsyncIterator[tuple[str, NodeInfo]]:
        for event in self.watch_events:
            yield event
            await asyncio.sleep(0)

    async def get_node(self, name: str) -> NodeInfo | None:
        if self.read_gate is not None and not self.read_gate.is_set():
            self.reads_held += 1
            await self.read_gate.wait()
        failure = self.get_script.pop(0) if self.get_script else None
        if failure is not None:
            raise failure
        return self.nodes.get(name)

    async def patch_pod_cidrs(self, node: NodeInfo, cidrs: Sequence[netaddr.IPNetwork]) -> NodeInfo:
        values = tuple(str(cidr) for cidr in cidrs)
        self.patched.append((node.name, list(values)))
        outcome = self.patch_script.pop(0) if self.patch_script else APPLY
        if isinstance(outcome, ApiError):
            raise outcome
        current = self.nodes.get(node.name)
        if current is None:
            raise ApiError(404, "NotFound", f"nodes {node.name} not found")
        if current.uid != node.uid:
            raise ApiError(409, "Conflict", "Precondition failed: UID in precondition does not match")
        if current.pod_cidrs and current.pod_cidrs != values:
            raise ApiError(
                422, "Invalid", 'spec.podCIDRs: Forbidden: node updates may not change podCIDR except from "" to valid'
            )
        self.nodes[node.name] = dataclasses.replace(current, pod_cidrs=values, pod_cidr=values[0])
        if outcome == LOST:
            raise ApiError(0, "ConnectionError", "PATCH: connection reset")
        return self.nodes[node.name]

    async def post_node_event(self, node: NodeInfo, event_type: str, reason: str, message: str) -> bool:
        self.events.append((node.name, reason, message))
        return True

    async def list_pools(self) -> list[dict[str, Any]] | None:
        return None if self.pools is None else list(self.pools.values())

    async def post_pool_event(self, name: str, uid: str, event_type: str, reason: str, message: str) -> bool:
        self.pool_events.append((name, reason, message))
        return True

    async def patch_pool_status(self, name: str, status: Mapping[str, Any]) -> None:
        self.status_writes += 1
        if self.status_refusal is not None:
            raise self.status_refusal
        if self.pools is None or name not in self.pools:
            raise ApiError(404, "NotFound", f"nodecidrpools {name} not found")
        self.pools[name]["status"] = dict(status)
        self.statuses.setdefault(name, []).append(dict(status))

    async def set_pool_finalizers(self, name: str, finalizers: Sequence[str], resource_version: str) -> dict[str, Any]:
        if self.pools is None or name not in self.pools:
            raise ApiError(404, "NotFound", f"nodecidrpools {name} not found")
        metadata = self.pools[name]["metadata"]
        if resource_version != metadata.get("resourceVersion", ""):
            raise ApiError(409, "Conflict", "the object has been modified")
        metadata["finalizers"] = list(finalizers)
        metadata["resourceVersion"] = str(int(metadata.get("resourceVersion") or 0) + 1)
        if not finalizers and metadata.get("deletionTimestamp"):
            del self.pools[name]
        return self.pools.get(name) or {"metadata": metadata}

    def reasons(self) -> list[str]:
        return [reason for _, reason, _ in self.events]


class StaticFence:
    """A fence that asks `leading` and records every announcement at once (no Lease)."""

    def __init__(self, leading: Callable[[], bool], recorded: bool = True) -> None:
        self.leading = leading
        self.recorded = recorded
        self.announced = 0

    def may_write(self) -> bool:
        return self.leading()

    async def announce(self) -> bool:
        self.announced += 1
        return self.recorded


def reconciler_for(family: FamilyRange, api: NodeApi, may_allocate: Callable[[], bool] | None = None) -> Reconciler:
    reconciler = Reconciler(
        api, NodeAllocations([family]), Metrics(), fence=None if may_allocate is None else StaticFence(may_allocate)
    )
    reconciler.rebuilt.set()
    return reconciler


def run(coroutine_factory: Callable[[], Awaitable[T]]) -> T:
    async def go() -> T:
        return await coroutine_factory()

    return asyncio.run(go())


def handled(family: FamilyRange, api: FakeApi, *nodes: NodeInfo) -> Reconciler:
    async def go() -> Reconciler:
        reconciler = reconciler_for(family, api)
        for node in nodes:
            await reconciler.handle(node)
        return reconciler

    return run(go)


@pytest.fixture(autouse=True)
def no_waiting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(assign_module, "PATCH_BACKOFF", Backoff(0.0))
    monkeypatch.setattr(reconciler_module, "REBUILD_BACKOFF", Backoff(0.0))
    monkeypatch.setattr(supervisor_module, "LOOP_BACKOFF", Backoff(0.0))


def holders(api: FakeApi) -> dict[str, tuple[str, ...]]:
    return {name: node.pod_cidrs for name, node in api.nodes.items() if node.pod_cidrs}


def assert_disjoint(api: FakeApi) -> None:
    seen: dict[netaddr.IPNetwork, str] = {}
    for name, cidrs in holders(api).items():
        for cidr in cidrs:
            assert netaddr.IPNetwork(cidr) not in seen, f"{cidr} held by {name} and {seen.get(netaddr.IPNetwork(cidr))}"
            seen[netaddr.IPNetwork(cidr)] = name


# -- refused: nothing applied, the reservation goes back ------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_422_because_someone_else_set_it_releases_ours_and_occupies_theirs(family: FamilyRange) -> None:
    api = FakeApi()
    node = api.add("a")
    theirs = str(list(family.cluster_cidr.subnet(family.node_mask_size))[3])
    api.patch_script = [ApiError(422, "Invalid", "may not change podCIDR")]
    api.nodes["a"] = dataclasses.replace(node, pod_cidrs=(theirs,))  # set by someone else meanwhile
    reconciler = handled(family, api, node)
    cidr_set = reconciler.allocations.sets[0]
    assert len(api.patched) == 1
    assert cidr_set.allocated == 1 and is_taken(cidr_set, theirs)
    assert not is_taken(cidr_set, api.patched[0][1][0]), "our reservation is given back"
    assert api.events == []


@pytest.mark.parametrize("family", FAMILIES)
def test_conflict_then_success_retries_with_a_fresh_reservation(family: FamilyRange) -> None:
    api = FakeApi(patch_script=[ApiError(409, "Conflict", "try again")])
    reconciler = handled(family, api, api.add("a"))
    assert len(api.patched) == 2
    assert reconciler.allocations.held.ranges("a") == (netaddr.IPNetwork(api.patched[1][1][0]),)
    assert reconciler.allocations.sets[0].allocated == 1


@pytest.mark.parametrize("family", FAMILIES)
def test_persistent_refusal_gives_cidr_assignment_failed_and_leaks_nothing(family: FamilyRange) -> None:
    api = FakeApi(patch_script=[ApiError(403, "Forbidden", "no podCIDR for you")] * assign_module.PATCH_ATTEMPTS)
    reconciler = handled(family, api, api.add("a"))
    assert len(api.patched) == assign_module.PATCH_ATTEMPTS
    assert api.reasons() == ["CIDRAssignmentFailed"]
    assert "no podCIDR for you" in api.events[0][2]
    assert reconciler.allocations.sets[0].allocated == 0
    assert reconciler.allocations.reservations.get("a") is None


@pytest.mark.parametrize("family", FAMILIES)
def test_node_gone_during_patch_frees_the_reservation(family: FamilyRange) -> None:
    api = FakeApi()
    node = api.add("a")
    del api.nodes["a"]
    reconciler = handled(family, api, node)
    assert reconciler.allocations.sets[0].allocated == 0
    assert api.events == []


@pytest.mark.parametrize("family", FAMILIES)
def test_name_reused_while_the_patch_was_in_flight_serves_the_new_incarnation(family: FamilyRange) -> None:
    api = FakeApi()
    old = api.add("a", uid="old")
    api.add("a", uid="new")  # deleted and re-created: the UID precondition refuses the patch (409)
    reconciler = handled(family, api, old)
    assert reconciler.allocations.uid_holding_ranges("a") == "new"
    assert api.nodes["a"].pod_cidrs and reconciler.allocations.sets[0].allocated == 1


# -- unknown: the answer was lost, the ranges stay reserved until a read settles it ---------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_patch_applied_but_answer_lost_never_gives_the_range_to_another_node(family: FamilyRange) -> None:
    """The one free range goes to `a`, whose patch applies but whose answer is lost; `b` registers meanwhile.

    With one range free, handing out `a`'s range again is the only way `b` could be served: a free range
    elsewhere would hide the mistake (next-fit would give `b` that one).
    """
    slots = [str(cidr) for cidr in family.cluster_cidr.subnet(family.node_mask_size)]

    async def go() -> tuple[Reconciler, FakeApi]:
        api = FakeApi()
        reconciler = reconciler_for(family, api)
        for index in range(len(slots) - 1):
            await reconciler.handle(api.add(f"n{index}"))
        gate = asyncio.Event()
        api.patch_script, api.read_gate = [LOST], gate
        first = asyncio.ensure_future(reconciler.handle(api.add("a")))
        # The answer is lost and the re-read that would settle it is held: a newcomer registers now.
        await wait_until(lambda: api.reads_held == 1)
        await reconciler.handle(api.add("b"))
        gate.set()
        await first
        return reconciler, api

    reconciler, api = run(go)
    assert_disjoint(api)
    assert api.nodes["a"].pod_cidrs == (slots[-1],), "the patch applied with the one free range"
    assert reconciler.allocations.held.ranges("a") == (netaddr.IPNetwork(slots[-1]),)
    assert api.nodes["b"].pod_cidrs == () and api.reasons() == ["CIDRNotAvailable"], "b waits: nothing is free"
    assert [name for name, _ in api.patched][-1] == "a", "a read showed the patch had applied: no second patch, none for b"
    assert reconciler.allocations.sets[0].allocated == len(slots)


@pytest.mark.parametrize("family", FAMILIES)
def test_answer_lost_and_read_failed_patches_again_with_the_same_ranges(family: FamilyRange) -> None:
    lost_before_applying = ApiError(503, "ServiceUnavailable", "etcd leader changed")
    api = FakeApi(patch_script=[lost_before_applying, LOST], get_script=[ApiError(0, "ConnectionError", "reset")])
    reconciler = handled(family, api, api.add("a"))
    assert len(api.patched) == 2 and api.patched[0] == api.patched[1], "never a fresh reservation while one exists"
    assert reconciler.allocations.held.ranges("a") == (netaddr.IPNetwork(api.patched[0][1][0]),)
    assert reconciler.allocations.sets[0].allocated == 1


@pytest.mark.parametrize("family", FAMILIES)
def test_persistent_unknown_keeps_the_ranges_reserved_for_the_resync(family: FamilyRange) -> None:
    failures: list[str | ApiError] = [ApiError(500, "InternalError", "etcd is sad")] * assign_module.PATCH_ATTEMPTS
    api = FakeApi(patch_script=failures)
    reconciler = handled(family, api, api.add("a"))
    assert len(api.patched) == assign_module.PATCH_ATTEMPTS
    assert len({tuple(cidrs) for _, cidrs in api.patched}) == 1, "every attempt with the same ranges"
    assert api.reasons() == ["CIDRAssignmentFailed"] and "etcd is sad" in api.events[0][2]
    (unsettled,) = reconciler.allocations.reservations.unsettled()
    assert unsettled.state is ReservationState.UNKNOWN and reconciler.allocations.sets[0].allocated == 1


def left_unknown(family: FamilyRange, api: FakeApi) -> Reconciler:
    """A reconciler whose patch for Node a was left UNKNOWN (the answer lost, every read failed)."""
    api.patch_script = [ApiError(0, "ConnectionError", "reset")] * assign_module.PATCH_ATTEMPTS
    api.get_script = [ApiError(0, "ConnectionError", "reset")] * assign_module.PATCH_ATTEMPTS
    reconciler = handled(family, api, api.add("a"))
    assert len(reconciler.allocations.reservations.unsettled()) == 1
    return reconciler


@pytest.mark.parametrize("family", FAMILIES)
def test_sweep_commits_an_unknown_patch_that_had_applied(family: FamilyRange) -> None:
    api = FakeApi()
    reconciler = left_unknown(family, api)
    (reserved,) = reconciler.allocations.reservations.unsettled()
    api.nodes["a"] = dataclasses.replace(api.nodes["a"], pod_cidrs=tuple(str(c) for c in reserved.cidrs))
    run(reconciler.resync.sweep)
    assert reconciler.allocations.reservations.unsettled() == [] and reconciler.allocations.held.ranges("a") == reserved.cidrs
    assert len(api.patched) == assign_module.PATCH_ATTEMPTS, "no further patch"


@pytest.mark.parametrize("family", FAMILIES)
def test_sweep_patches_again_with_the_same_ranges_when_the_node_shows_none(family: FamilyRange) -> None:
    api = FakeApi()
    reconciler = left_unknown(family, api)
    (reserved,) = reconciler.allocations.reservations.unsettled()
    run(reconciler.resync.sweep)
    assert api.patched[-1] == ("a", [str(c) for c in reserved.cidrs])
    assert api.nodes["a"].pod_cidrs == tuple(str(c) for c in reserved.cidrs)
    assert reconciler.allocations.held.ranges("a") == reserved.cidrs and reconciler.allocations.sets[0].allocated == 1


@pytest.mark.parametrize("family", FAMILIES)
def test_sweep_releases_an_unknown_reservation_when_the_node_holds_others_or_is_gone(family: FamilyRange) -> None:
    api = FakeApi()
    reconciler = left_unknown(family, api)
    theirs = str(list(family.cluster_cidr.subnet(family.node_mask_size))[3])
    api.nodes["a"] = dataclasses.replace(api.nodes["a"], pod_cidrs=(theirs,))
    run(reconciler.resync.sweep)
    assert reconciler.allocations.held.ranges("a") == (netaddr.IPNetwork(theirs),)
    assert reconciler.allocations.sets[0].allocated == 1 and reconciler.allocations.reservations.unsettled() == []

    api = FakeApi()
    reconciler = left_unknown(family, api)
    del api.nodes["a"]
    run(reconciler.resync.sweep)
    assert reconciler.allocations.sets[0].allocated == 0 and reconciler.allocations.reservations.unsettled() == []


@pytest.mark.parametrize("family", FAMILIES)
def test_unexpected_exception_leaves_no_node_in_flight_forever(family: FamilyRange) -> None:
    class BrokenOnce(FakeApi):
        broken = True

        async def patch_pod_cidrs(self, node: NodeInfo, cidrs: Sequence[netaddr.IPNetwork]) -> NodeInfo:
            if self.broken:
                self.broken = False
                raise RuntimeError("a bug")
            return await super().patch_pod_cidrs(node, cidrs)

    api = BrokenOnce()
    reconciler = reconciler_for(family, api)
    node = api.add("a")
    with pytest.raises(RuntimeError):
        run(lambda: reconciler.handle(node))
    (unsettled,) = reconciler.allocations.reservations.unsettled()  # sent, so it may have applied: kept, but no task holds it
    assert not unsettled.owned and unsettled.state is ReservationState.UNKNOWN
    run(reconciler.resync.sweep)  # the Node shows none: patched again with the same ranges
    assert reconciler.allocations.reservations.unsettled() == []
    assert reconciler.allocations.held.ranges("a") == unsettled.cidrs
    assert api.nodes["a"].pod_cidrs == tuple(str(c) for c in unsettled.cidrs)


# -- the leadership fence --------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_no_reservation_and_no_patch_once_leadership_is_in_doubt(family: FamilyRange) -> None:
    api = FakeApi()
    reconciler = reconciler_for(family, api, may_allocate=lambda: False)
    run(lambda: reconciler.handle(api.add("a")))
    assert api.patched == [] and reconciler.allocations.sets[0].allocated == 0

    answers = iter([True, False])  # leading at the reservation, in doubt before the patch
    reconciler = reconciler_for(family, api, may_allocate=lambda: next(answers, False))
    run(lambda: reconciler.handle(api.nodes["a"]))
    assert api.patched == [] and reconciler.allocations.sets[0].allocated == 0
    assert reconciler.allocations.reservations.get("a") is None


@pytest.mark.parametrize("family", FAMILIES)
def test_a_patch_is_sent_only_once_its_reservation_is_recorded(family: FamilyRange) -> None:
    api = FakeApi()
    fence = StaticFence(lambda: True, recorded=False)
    reconciler = Reconciler(api, NodeAllocations([family]), Metrics(), fence=fence)
    run(reconciler.rebuild)
    run(lambda: reconciler.handle(api.add("a")))
    assert fence.announced == assign_module.PATCH_ATTEMPTS and api.patched == [], "nothing is sent unrecorded"
    assert reconciler.allocations.sets[0].allocated == 0 and reconciler.allocations.reservations.get("a") is None
    assert "CIDRAssignmentFailed" in api.reasons()
    fence.recorded = True
    run(lambda: reconciler.handle(api.nodes["a"]))
    assert len(api.patched) == 1 and api.nodes["a"].pod_cidrs


@pytest.mark.parametrize("family", FAMILIES)
def test_the_last_leaders_patch_in_flight_keeps_its_range_for_its_node(family: FamilyRange) -> None:
    api = FakeApi()
    victim = api.add("victim")
    competitors = [api.add(f"n-{i}") for i in range(3)]
    first = str(family.cluster_cidr.subnet(family.node_mask_size).__next__())
    reconciler = reconciler_for(family, api)
    waiting = run(lambda: reconciler.rebuild([InFlight("victim", victim.uid, (first,))]))
    run(lambda: reconciler.assign_all([*competitors, victim]))
    assert api.nodes["victim"].pod_cidrs == (first,), "patched again with the range it may get anyway"
    assert first not in [cidr for other in competitors for cidr in api.nodes[other.name].pod_cidrs]
    assert {node.name for node in waiting} == {"victim", "n-0", "n-1", "n-2"}


@pytest.mark.parametrize("family", FAMILIES)
def test_a_duplicate_someone_made_is_a_warning_on_both_nodes(family: FamilyRange) -> None:
    api = FakeApi()
    reconciler = handled(family, api, api.add("a"))
    (held,) = reconciler.allocations.held.ranges("a")
    run(lambda: reconciler.handle(api.add("copy", str(held))))
    warned = sorted(name for name, reason, _ in api.events if reason == "DuplicatePodCIDR")
    assert warned == ["a", "copy"]
    assert reconciler.metrics.registry.get_sample_value("node_ipam_controller_duplicate_pod_cidr_nodes") == 2


# -- a Node seen under another UID -----------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_late_event_about_an_old_uid_is_reread_and_releases_nothing(family: FamilyRange) -> None:
    api = FakeApi()
    reconciler = handled(family, api, api.add("a", uid="new"))
    held = reconciler.allocations.held.ranges("a")
    run(lambda: reconciler.handle(NodeInfo("a", "old")))
    assert reconciler.allocations.held.ranges("a") == held and reconciler.allocations.sets[0].allocated == 1
    assert len(api.patched) == 1


# -- exhaustion --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_a_node_retried_while_the_range_is_still_exhausted_is_warned_once(family: FamilyRange) -> None:
    api = FakeApi()
    nodes = [api.add(f"n{index}") for index in range(4)]  # fill the four subnets
    late = api.add("late")
    reconciler = handled(family, api, *nodes, late, late)  # e.g. a release elsewhere woke the waiters
    assert api.reasons() == ["CIDRNotAvailable"]
    exhausted = f"there are no remaining CIDRs left to allocate in the range {family.cluster_cidr}"
    assert api.events[0][2] == f"no node CIDR available: {exhausted}", "kube-controller-manager's words, no pool named"
    assert [node.name for node in reconciler.allocations.incarnations.waiting()] == ["late"]


@pytest.mark.parametrize("family", FAMILIES)
def test_serve_waiting_assigns_a_waiting_node_once_a_range_is_released(family: FamilyRange) -> None:
    async def go() -> FakeApi:
        api = FakeApi()
        reconciler = reconciler_for(family, api)
        for index in range(4):
            await reconciler.handle(api.add(f"n{index}"))
        await reconciler.handle(api.add("late"))
        server = asyncio.ensure_future(reconciler.serve_waiting())
        gone = api.nodes.pop("n0")
        await reconciler.deleted(gone)
        await wait_until(lambda: bool(api.nodes["late"].pod_cidrs))
        server.cancel()
        return api

    api = run(go)
    assert api.nodes["late"].pod_cidrs
    assert_disjoint(api)


async def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.001)


# -- start-up, the bridge, and the background loops -------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_rebuild_retries_a_failed_list_until_it_succeeds(family: FamilyRange) -> None:
    api = FakeApi()
    api.add("held", str(next(family.cluster_cidr.subnet(family.node_mask_size))))
    api.add("fresh")
    api.list_script = [
        ApiError(410, "Expired", "continue token too old"),
        ApiError(503, "", ""),
        ApiError(0, "ConnectionError", "refused"),
    ]

    async def go() -> tuple[list[str], Reconciler]:
        reconciler = Reconciler(api, NodeAllocations([family]), Metrics())
        waiting = await reconciler.rebuild()
        return [node.name for node in waiting], reconciler

    waiting, reconciler = run(go)
    assert waiting == ["fresh"]
    assert api.list_script == [] and reconciler.rebuilt.is_set()
    assert reconciler.allocations.sets[0].allocated == 1


@pytest.mark.parametrize("family", FAMILIES)
def test_rebuild_can_be_cancelled_while_the_api_keeps_failing(family: FamilyRange) -> None:
    api = FakeApi(list_script=[ApiError(500, "", "")] * 10_000)

    async def go() -> Reconciler:
        reconciler = Reconciler(api, NodeAllocations([family]), Metrics())
        task = asyncio.ensure_future(reconciler.rebuild())
        await wait_until(lambda: len(api.list_script) < 9_990)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return reconciler

    assert not run(go).rebuilt.is_set()


@pytest.mark.parametrize("family", FAMILIES)
def test_bridge_serves_new_nodes_occupies_preset_ones_and_frees_deleted_ones(family: FamilyRange) -> None:
    subnets = [str(s) for s in list(family.cluster_cidr.subnet(family.node_mask_size))[:2]]
    api = FakeApi()
    gone = api.add("gone", subnets[0])
    preset = NodeInfo("preset", "uid-preset", (subnets[1],))
    fresh = api.add("fresh")

    async def go() -> Reconciler:
        reconciler = Reconciler(api, NodeAllocations([family]), Metrics())
        await reconciler.rebuild()
        api.nodes.pop("gone")
        api.nodes["preset"] = preset
        api.watch_events = [("DELETED", gone), ("ADDED", preset), ("ADDED", fresh)]
        workers = asyncio.ensure_future(reconciler.work())
        await reconciler.bridge(asyncio.Event())
        await wait_until(lambda: bool(api.nodes["fresh"].pod_cidrs))
        workers.cancel()
        return reconciler

    reconciler = run(go)
    assert reconciler.allocations.held.ranges("preset") == (netaddr.IPNetwork(subnets[1]),)
    assert reconciler.allocations.held.ranges("gone") == ()
    assert api.nodes["fresh"].pod_cidrs[0] not in subnets[1:]
    assert_disjoint(api)


@pytest.mark.parametrize("family", FAMILIES)
def test_relist_frees_vanished_nodes_and_serves_missed_ones_from_the_cache(family: FamilyRange) -> None:
    api = FakeApi()
    reconciler = handled(family, api, api.add("vanishes"))
    api.nodes.pop("vanishes")  # its DELETED event was missed
    api.add("missed")  # its ADDED event was missed
    run(reconciler.resync.relist)
    assert reconciler.allocations.held.ranges("vanishes") == ()
    assert api.nodes["missed"].pod_cidrs and reconciler.allocations.sets[0].allocated == 1
    assert api.lists[-1] is True, "the LIST after a gap is answered from the API server's cache"


class Flaky:
    """Raises an unexpected exception the first `failures` times it is called; then succeeds once `healed` is set."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0
        self.healed = asyncio.Event()

    async def __call__(self) -> None:
        self.calls += 1
        if self.calls <= self.failures:
            raise RuntimeError(f"a bug, call {self.calls}")
        await self.healed.wait()


def failures_metric(reconciler: Reconciler, loop: str) -> float:
    value = reconciler.metrics.registry.get_sample_value("node_ipam_controller_background_failures_total", {"loop": loop})
    return value or 0.0


@pytest.mark.parametrize("family", FAMILIES)
def test_resync_loop_survives_unexpected_exceptions_counts_them_and_reports_a_problem(family: FamilyRange) -> None:
    async def go() -> tuple[list[str | None], float, int]:
        reconciler = reconciler_for(family, FakeApi())
        flaky = Flaky(failures=supervisor_module.LOOP_FAILURES_UNHEALTHY)
        reconciler.resync.sweep = flaky  # type: ignore[method-assign]
        problems: list[str | None] = []
        loop = asyncio.ensure_future(reconciler.resync_forever(period=0.001, relist_delay=0.0))
        await wait_until(lambda: flaky.calls > supervisor_module.LOOP_FAILURES_UNHEALTHY)
        problems.append(reconciler.problem())
        flaky.healed.set()
        await wait_until(lambda: flaky.calls > supervisor_module.LOOP_FAILURES_UNHEALTHY + 1)
        problems.append(reconciler.problem())
        loop.cancel()
        return problems, failures_metric(reconciler, "resync"), flaky.calls

    problems, counted, calls = run(go)
    assert problems[0] is not None and "resync" in problems[0] and "a bug" in problems[0]
    assert problems[1] is None, "healthy again after a round that succeeded"
    assert counted == supervisor_module.LOOP_FAILURES_UNHEALTHY
    assert calls > supervisor_module.LOOP_FAILURES_UNHEALTHY


@pytest.mark.parametrize("family", FAMILIES)
def test_serve_waiting_survives_an_unexpected_exception(family: FamilyRange) -> None:
    async def go() -> tuple[FakeApi, float]:
        api = FakeApi()
        reconciler = reconciler_for(family, api)
        for index in range(4):
            await reconciler.handle(api.add(f"n{index}"))
        await reconciler.handle(api.add("late"))
        original = reconciler.allocations.incarnations.waiting
        broken = iter([True])

        def waiting() -> list[NodeInfo]:
            if next(broken, False):
                raise RuntimeError("a bug")
            return original()

        reconciler.allocations.incarnations.waiting = waiting  # type: ignore[method-assign]
        server = asyncio.ensure_future(reconciler.serve_waiting())
        await reconciler.deleted(api.nodes.pop("n0"))
        await wait_until(lambda: bool(api.nodes["late"].pod_cidrs))
        server.cancel()
        return api, failures_metric(reconciler, "serve_waiting")

    api, counted = run(go)
    assert api.nodes["late"].pod_cidrs and counted == 1


@pytest.mark.parametrize("family", FAMILIES)
def test_a_refusal_after_a_lost_answer_does_not_release_what_may_have_applied(family: FamilyRange) -> None:
    api = FakeApi(
        patch_script=[LOST, ApiError(429, "TooManyRequests", "slow down")],
        get_script=[ApiError(0, "ConnectionError", "reset")],  # the first re-read fails: patch again
    )
    reconciler = handled(family, api, api.add("a"))
    assert len(api.patched) == 2
    assert reconciler.allocations.held.ranges("a") == (netaddr.IPNetwork(api.nodes["a"].pod_cidrs[0]),)
    assert reconciler.allocations.sets[0].allocated == 1 and reconciler.allocations.reservations.get("a") is None


# -- pools ------------------------------------------------------------------------------------------------------

# Per family: the flags' range is V4/V6 (four node ranges); a pool of two, and one of two more.
POOL_CIDRS = {4: ("10.1.0.0/23", "10.2.0.0/23"), 6: ("fd01::/63", "fd02::/63")}


def pool_body(name: str, family: FamilyRange, *cidrs: str, uid: str = "", **spec: Any) -> dict[str, Any]:
    entries = {"nodeMaskSize": family.node_mask_size, "cidrs": [{"cidr": cidr} for cidr in cidrs]}
    return {
        "metadata": {"name": name, "uid": uid or f"uid-{name}", "resourceVersion": "1", "generation": 1},
        "spec": {f"ipv{family.version}": entries, **spec},
    }


def rebuilt(family: FamilyRange, api: FakeApi) -> Reconciler:
    """A reconciler after its start-up rebuild, with the sweep of waiting Nodes done."""

    async def go() -> Reconciler:
        reconciler = Reconciler(api, NodeAllocations([family]), Metrics())
        await reconciler.assign_all(await reconciler.rebuild())
        return reconciler

    return run(go)


@pytest.mark.parametrize("family", FAMILIES)
def test_rebuild_reads_the_pools_before_the_nodes(family: FamilyRange) -> None:
    first, _ = POOL_CIDRS[family.version]
    held = str(next(netaddr.IPNetwork(first).subnet(family.node_mask_size)))
    api = FakeApi(pools={"p": pool_body("p", family, first, priority=1)})
    api.add("old", held)
    api.add("new")
    reconciler = rebuilt(family, api)
    assert reconciler.allocations.pool_sets.pool_of(netaddr.IPNetwork(held)) == "p"
    assert api.nodes["new"].pod_cidrs != (held,), "the range the pool's Node holds is not handed out again"
    assert reconciler.allocations.pool_sets.pool_of(netaddr.IPNetwork(api.nodes["new"].pod_cidrs[0])) == "p"
    assert api.events == [], "a range inside a pool is not reported"


@pytest.mark.parametrize("family", FAMILIES)
def test_a_pool_created_at_runtime_serves_a_waiting_node(family: FamilyRange) -> None:
    first, _ = POOL_CIDRS[family.version]

    async def go() -> FakeApi:
        api = FakeApi(pools={})
        for index in range(4):
            api.add(f"n{index}")
        api.add("waiting")
        reconciler = Reconciler(api, NodeAllocations([family]), Metrics())
        await reconciler.assign_all(await reconciler.rebuild())
        assert api.nodes["waiting"].pod_cidrs == () and "CIDRNotAvailable" in api.reasons()
        server = asyncio.ensure_future(reconciler.serve_waiting())
        await reconciler.pool_event("ADDED", pool_body("p", family, first))
        await wait_until(lambda: bool(api.nodes["waiting"].pod_cidrs))
        server.cancel()
        return api

    api = run(go)
    assert netaddr.IPNetwork(api.nodes["waiting"].pod_cidrs[0]) in netaddr.IPNetwork(first)
    assert_disjoint(api)


@pytest.mark.parametrize("family", FAMILIES)
def test_an_overlapping_pool_is_reported_on_the_pool_and_hands_out_nothing(family: FamilyRange) -> None:
    first, second = POOL_CIDRS[family.version]
    earlier = pool_body("earlier", family, first)
    later = pool_body("later", family, first, second, priority=10)  # a CIDR of its own beside the clashing one
    earlier["metadata"]["creationTimestamp"] = "2026-01-01T00:00:00Z"
    later["metadata"]["creationTimestamp"] = "2026-01-02T00:00:00Z"
    api = FakeApi(pools={"earlier": earlier, "later": later})
    api.add("a")
    for index in range(6):  # the earlier pool's two ranges and the flags' four, and one more
        api.add(f"more-{index}")

    async def go() -> Reconciler:
        reconciler = Reconciler(api, NodeAllocations([family]), Metrics())
        await reconciler.assign_all(await reconciler.rebuild())
        await wait_until(lambda: bool(api.pool_events))  # posted by a task of its own
        return reconciler

    reconciler = run(go)
    assert reconciler.allocations.pool_sets.pool_of(netaddr.IPNetwork(api.nodes["a"].pod_cidrs[0])) == "earlier"
    held = [netaddr.IPNetwork(cidr) for node in api.nodes.values() for cidr in node.pod_cidrs]
    assert len(held) == 6 and not any(cidr in netaddr.IPNetwork(second) for cidr in held), "nothing from the refused pool"
    assert [(name, reason) for name, reason, _ in api.pool_events] == [("later", "PoolOverlapping")]
    assert "earlier" in api.pool_events[0][2]


@pytest.mark.parametrize("family", FAMILIES)
def test_pool_status_finalizer_and_deletion_wait_for_the_last_node(family: FamilyRange) -> None:
    first, _ = POOL_CIDRS[family.version]

    async def go() -> tuple[FakeApi, list[dict[str, Any]]]:
        api = FakeApi(pools={"p": pool_body("p", family, first, priority=1)})
        api.add("a")
        api.add("b")
        reconciler = Reconciler(api, NodeAllocations([family]), Metrics())
        await reconciler.assign_all(await reconciler.rebuild())
        await reconciler.pools.sync()
        assert poolsync_module.POOL_FINALIZER in api.pools["p"]["metadata"]["finalizers"]
        await reconciler.pools.sync()
        assert len(api.statuses["p"]) == 1, "an unchanged status is not written again"
        pool = api.pools["p"]
        pool["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
        await reconciler.pool_event("MODIFIED", pool)
        await reconciler.pools.sync()
        assert "p" in api.pools, "kept while its Nodes hold ranges"
        await reconciler.deleted(api.nodes.pop("a"))
        await reconciler.pools.sync()
        assert "p" in api.pools
        await reconciler.deleted(api.nodes.pop("b"))
        await reconciler.pools.sync()
        return api, api.statuses["p"]

    api, statuses = run(go)
    assert "p" not in api.pools
    assert statuses[0]["summary"] == "2/2 (100%)" and statuses[0]["nodes"] == 2
    deleting = statuses[1]
    assert sorted(deleting["blockingNodes"]) == ["a", "b"]
    draining = next(c for c in deleting["conditions"] if c["type"] == "Draining")
    assert draining["status"] == "True"
    # Once b is gone the finalizer goes first, and with it the pool: no status is written after that.
    assert [status["blockingNodes"] for status in statuses[2:]] == [["b"]]


@pytest.mark.parametrize("family", FAMILIES)
def test_metrics_per_pool(family: FamilyRange) -> None:
    first, _ = POOL_CIDRS[family.version]
    api = FakeApi(pools={"p": pool_body("p", family, first, priority=1)})
    for name in ("a", "b", "c"):
        api.add(name)
    reconciler = rebuilt(family, api)
    metrics = reconciler.metrics
    version = f"ipv{family.version}"
    reconciler.metrics.refresh_views()  # on the main loop, before a scrape collects on the port's thread

    def sample(name: str, **labels: str) -> float | None:
        return metrics.sample_value(f"node_ipam_controller_{name}", labels)

    assert sample("pool_allocated_cidrs", pool="p", family=version) == 2
    assert sample("pool_free_cidrs", pool="p", family=version) == 0
    assert sample("pool_max_cidrs", pool="p", family=version) == 2
    assert sample("pool_allocated_cidrs", pool="(default)", family=version) == 1
    assert sample("pool_nodes", pool="p") == 2
    assert sample("pool_cidrs_allocations_total", pool="p") == 2
    assert sample("pool_cidrs_allocations_total", pool="(default)") == 1
    assert sample("cidrset_cidrs_allocations_total", clusterCIDR=first) is None, "a pool's ranges count per pool only"
    assert sample("cidrset_cidrs_allocations_total", clusterCIDR=str(family.cluster_cidr)) == 1


@pytest.mark.parametrize("family", FAMILIES)
def test_a_burst_of_nodes_writes_the_pool_status_once(family: FamilyRange, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(poolsync_module, "POOL_STATUS_DEBOUNCE", 0.5)
    _, wide = POOL_CIDRS[family.version]
    big = str(netaddr.IPNetwork(wide).supernet(netaddr.IPNetwork(wide).prefixlen - 3)[0])  # sixteen node ranges

    async def go() -> FakeApi:
        api = FakeApi(pools={"p": pool_body("p", family, big, priority=1)})
        reconciler = Reconciler(api, NodeAllocations([family]), Metrics())
        await reconciler.assign_all(await reconciler.rebuild())
        writer = asyncio.ensure_future(reconciler.write_pool_statuses())
        await wait_until(lambda: "p" in api.statuses)
        for index in range(10):  # a burst spread over 0.1 s, shorter than the debounce
            await reconciler.handle(api.add(f"n{index}"))
            await asyncio.sleep(0.01)
        await wait_until(lambda: api.statuses["p"][-1]["nodes"] == 10)
        writer.cancel()
        return api

    api = run(go)
    assert [status["nodes"] for status in api.statuses["p"]] == [0, 10]


@pytest.mark.parametrize("family", FAMILIES)
def test_an_invalid_pool_change_keeps_the_last_valid_spec(family: FamilyRange) -> None:
    first, second = POOL_CIDRS[family.version]

    async def go() -> tuple[FakeApi, Reconciler]:
        api = FakeApi(pools={"p": pool_body("p", family, first, priority=1)})
        reconciler = Reconciler(api, NodeAllocations([family]), Metrics())
        await reconciler.assign_all(await reconciler.rebuild())
        broken = pool_body("p", family, first, second, priority=1)
        broken["spec"][f"ipv{family.version}"]["cidrs"][1]["cidr"] = "not-a-cidr"
        await reconciler.pool_event("MODIFIED", broken)
        await wait_until(lambda: bool(api.pool_events))
        await reconciler.handle(api.add("a"))
        return api, reconciler

    api, reconciler = run(go)
    assert [(name, reason) for name, reason, _ in api.pool_events] == [("p", "InvalidPool")]
    assert "last valid spec is kept" in api.pool_events[0][2]
    assert reconciler.allocations.pool_sets.pool_of(netaddr.IPNetwork(api.nodes["a"].pod_cidrs[0])) == "p"


@pytest.mark.parametrize("family", FAMILIES)
def test_a_range_left_in_no_pool_is_reported_and_kept(family: FamilyRange) -> None:
    first, _ = POOL_CIDRS[family.version]

    async def go() -> tuple[FakeApi, Reconciler]:
        api = FakeApi(pools={"p": pool_body("p", family, first, priority=1)})
        api.add("a")
        reconciler = Reconciler(api, NodeAllocations([family]), Metrics())
        await reconciler.assign_all(await reconciler.rebuild())
        await reconciler.pools.sync()
        assert api.events == []
        removed = api.pools.pop("p")  # its finalizer removed by hand, then deleted
        await reconciler.pool_event("DELETED", removed)
        await reconciler.pools.sync()
        return api, reconciler

    api, reconciler = run(go)
    held = api.nodes["a"].pod_cidrs
    assert [(name, reason) for name, reason, _ in api.events] == [("a", "InvalidPodCIDR")]
    assert f"podCIDR {held[0]} lies in no serving pool" in api.events[0][2]
    assert reconciler.allocations.held.ranges("a") == tuple(map(netaddr.IPNetwork, held))


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize(
    ("refusal", "writes"),
    [
        pytest.param(ApiError(422, "Invalid", "status.ipv6.capacity: must be of type int64"), 1, id="refused-once"),
        pytest.param(ApiError(503, "ServiceUnavailable", "etcd"), 3, id="transient-retried"),
    ],
)
def test_a_refused_status_is_not_sent_again_until_it_changes(family: FamilyRange, refusal: ApiError, writes: int) -> None:
    first, _ = POOL_CIDRS[family.version]

    async def go() -> FakeApi:
        api = FakeApi(pools={"p": pool_body("p", family, first, priority=1)}, status_refusal=refusal)
        reconciler = Reconciler(api, NodeAllocations([family]), Metrics())
        await reconciler.assign_all(await reconciler.rebuild())
        for _ in range(3):
            await reconciler.pools.sync()
        return api

    api = run(go)
    assert api.status_writes == writes
    if refusal.status == 422:
        assert [(name, reason) for name, reason, _ in api.pool_events] == [("p", "InvalidPool")]
        assert "status.ipv6.capacity" in api.pool_events[0][2]


MALFORMED_SPECS = [
    pytest.param({"nodeSelector": "gpu=true"}, id="selector-a-string"),
    pytest.param({"nodeSelector": {"nodeSelectorTerms": "gpu"}}, id="terms-a-string"),
    pytest.param({"nodeSelector": {"nodeSelectorTerms": ["gpu"]}}, id="term-a-string"),
    pytest.param({"nodeSelector": {"nodeSelectorTerms": [{"matchExpressions": "gpu In true"}]}}, id="expressions-a-string"),
    pytest.param({"nodeSelector": {"nodeSelectorTerms": [{"matchExpressions": ["gpu"]}]}}, id="expression-a-string"),
    pytest.param({"nodeSelector": {"nodeSelectorTerms": [{"matchFields": "metadata.name"}]}}, id="fields-a-string"),
    pytest.param({"reserved": "10.1.0.0/24"}, id="reserved-a-string"),
    pytest.param({"priority": {"high": True}}, id="priority-a-map"),
]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("malformed", MALFORMED_SPECS)
def test_a_malformed_pool_is_an_event_not_a_crash_and_every_node_is_served(
    family: FamilyRange, malformed: dict[str, Any]
) -> None:
    """A CRD without the chart's schema (older, or none) lets any shape through: the start-up rebuild survives it."""
    first, second = POOL_CIDRS[family.version]
    bad = pool_body("bad", family, first, priority=1)
    bad["spec"].update(malformed)
    api = FakeApi(pools={"bad": bad, "good": pool_body("good", family, second)})
    api.add("a")
    reconciler = rebuilt(family, api)
    assert api.nodes["a"].pod_cidrs, "served"
    assert reconciler.allocations.pool_sets.pool_of(netaddr.IPNetwork(api.nodes["a"].pod_cidrs[0])) == "good"
    assert [(name, reason) for name, reason, _ in api.pool_events] == [("bad", "InvalidPool")]
    run(lambda: reconciler.pool_event("MODIFIED", bad))  # as the watch shows it: no crash either


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({"metadata": {"name": "p"}, "spec": "ipv4"}, id="spec-a-string"),
        pytest.param({"metadata": {"name": "p"}, "spec": {"ipv4": "10.1.0.0/23"}}, id="ipv4-a-string"),
        pytest.param(
            {"metadata": {"name": "p"}, "spec": {"ipv6": {"nodeMaskSize": 64, "cidrs": "fd01::/63"}}}, id="ipv6-cidrs-a-string"
        ),
        pytest.param(
            {"metadata": {"name": "p"}, "spec": {"ipv6": {"nodeMaskSize": 64, "cidrs": ["fd01::/63"]}}}, id="ipv6-cidr-a-string"
        ),
    ],
)
def test_a_malformed_family_is_an_event_not_a_crash(body: dict[str, Any]) -> None:
    api = FakeApi(pools={"p": body})
    api.add("a")
    reconciler = rebuilt(V4, api)
    assert api.nodes["a"].pod_cidrs and [(name, reason) for name, reason, _ in api.pool_events] == [("p", "InvalidPool")]
    assert reconciler.problem() is None
