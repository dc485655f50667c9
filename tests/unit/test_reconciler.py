"""The patch / release-and-reread / retry logic, with a scripted stand-in for the API.

A unit of logic only: the behaviour against the real API server is covered by
tests/integration. The stand-in records calls and answers from a script.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import netaddr
import pytest

from controller import reconciler as reconciler_module
from controller.config import FamilyRange
from controller.kube import ApiError
from controller.nodes import NodeAllocations, NodeInfo
from controller.reconciler import Reconciler

V4 = FamilyRange(netaddr.IPNetwork("10.0.0.0/22"), 24)
V6 = FamilyRange(netaddr.IPNetwork("fd00::/62"), 64)


class ScriptedKube:
    """Answers patch_pod_cidrs from a list of outcomes (None = success, ApiError = failure)."""

    def __init__(self, patch_outcomes: Sequence[ApiError | None], reread: NodeInfo | None) -> None:
        self.patch_outcomes = list(patch_outcomes)
        self.reread = reread
        self.patched: list[tuple[str, list[str]]] = []
        self.events: list[tuple[str, str]] = []

    async def patch_pod_cidrs(self, node: NodeInfo, cidrs: Sequence[netaddr.IPNetwork]) -> None:
        self.patched.append((node.name, [str(c) for c in cidrs]))
        outcome = self.patch_outcomes.pop(0) if self.patch_outcomes else None
        if outcome is not None:
            raise outcome

    async def get_node(self, name: str) -> NodeInfo | None:
        return self.reread

    async def post_node_event(self, node: NodeInfo, event_type: str, reason: str, message: str) -> bool:
        self.events.append((reason, message))
        return True


def run(family: FamilyRange, kube: ScriptedKube, node: NodeInfo) -> Reconciler:
    async def go() -> Reconciler:
        reconciler = Reconciler(kube, NodeAllocations([family]))  # type: ignore[arg-type]
        reconciler.rebuilt.set()
        await reconciler.handle(node)
        return reconciler

    return asyncio.run(go())


@pytest.fixture(autouse=True)
def no_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reconciler_module, "PATCH_BACKOFF", 0.0)


@pytest.mark.parametrize(
    ("family", "theirs"), [pytest.param(V4, "10.0.3.0/24", id="ipv4"), pytest.param(V6, "fd00:0:0:3::/64", id="ipv6")]
)
def test_422_because_someone_else_set_it_releases_ours_and_occupies_theirs(family: FamilyRange, theirs: str) -> None:
    node = NodeInfo("a", "uid-a")
    kube = ScriptedKube([ApiError(422, "Invalid", "may not change podCIDR")], reread=NodeInfo("a", "uid-a", (theirs,)))
    reconciler = run(family, kube, node)
    assert len(kube.patched) == 1
    cidr_set = reconciler.allocations.sets[0]
    assert cidr_set.allocated == 1
    assert cidr_set.is_allocated(theirs)
    assert not cidr_set.is_allocated(kube.patched[0][1][0]), "our reservation is given back"
    assert kube.events == []


@pytest.mark.parametrize("family", [pytest.param(V4, id="ipv4"), pytest.param(V6, id="ipv6")])
def test_conflict_then_success_retries_with_a_fresh_reservation(family: FamilyRange) -> None:
    node = NodeInfo("a", "uid-a")
    kube = ScriptedKube([ApiError(409, "Conflict", "try again"), None], reread=node)
    reconciler = run(family, kube, node)
    assert len(kube.patched) == 2
    assert reconciler.allocations.holding("a") == (netaddr.IPNetwork(kube.patched[1][1][0]),)
    assert reconciler.allocations.sets[0].allocated == 1


@pytest.mark.parametrize("family", [pytest.param(V4, id="ipv4"), pytest.param(V6, id="ipv6")])
def test_persistent_failure_gives_cidr_assignment_failed_and_leaks_nothing(family: FamilyRange) -> None:
    node = NodeInfo("a", "uid-a")
    failures = [ApiError(500, "InternalError", "etcd is sad")] * reconciler_module.PATCH_ATTEMPTS
    kube = ScriptedKube(failures, reread=node)
    reconciler = run(family, kube, node)
    assert len(kube.patched) == reconciler_module.PATCH_ATTEMPTS
    assert [reason for reason, _ in kube.events] == ["CIDRAssignmentFailed"]
    assert "etcd is sad" in kube.events[0][1]
    assert reconciler.allocations.sets[0].allocated == 0
    assert not reconciler.allocations.is_in_flight("a")


@pytest.mark.parametrize("family", [pytest.param(V4, id="ipv4"), pytest.param(V6, id="ipv6")])
def test_node_gone_during_patch_frees_the_reservation(family: FamilyRange) -> None:
    kube = ScriptedKube([ApiError(404, "NotFound", "nodes a not found")], reread=None)
    reconciler = run(family, kube, NodeInfo("a", "uid-a"))
    assert reconciler.allocations.sets[0].allocated == 0
    assert kube.events == []


@pytest.mark.parametrize("family", [pytest.param(V4, id="ipv4"), pytest.param(V6, id="ipv6")])
def test_a_node_retried_while_the_range_is_still_exhausted_is_warned_once(family: FamilyRange) -> None:
    async def go() -> tuple[list[tuple[str, str]], list[str]]:
        kube = ScriptedKube([], reread=None)
        reconciler = Reconciler(kube, NodeAllocations([family]))  # type: ignore[arg-type]
        reconciler.rebuilt.set()
        for index in range(4):  # fill the four subnets
            await reconciler.handle(NodeInfo(f"n{index}", f"uid-{index}"))
        waiting = NodeInfo("late", "uid-late")
        await reconciler.handle(waiting)
        await reconciler.handle(waiting)  # e.g. a release elsewhere woke the waiters
        return kube.events, [node.name for node in reconciler.allocations.waiting()]

    events, waiting = asyncio.run(go())
    assert [reason for reason, _ in events] == ["CIDRNotAvailable"]
    assert waiting == ["late"]
