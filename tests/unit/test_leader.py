"""LeaderElector against an in-memory Lease API, on a fake clock where time matters.

The real kube-apiserver tests of record are in tests/integration/test_leader_and_cli.py;
these pin the timing rules down exactly: a leader is certain of its leadership
for less than `renew_deadline` after it *sent* its last successful renewal,
and a standby waits `lease_duration` after it last saw the lease change.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

import pytest

from controller.config import LeaderElection
from controller.kube import ApiError, KubeClient
from controller.leader import LeaderElector, LeaseKeeper
from tests.fakeapi import FakeApi, held, reply, status

NAMESPACE, NAME = "default", "nodeipam"
CONFIG = LeaderElection(
    lease_duration=4.0, renew_deadline=3.0, retry_period=1.0, resource_name=NAME, resource_namespace=NAMESPACE
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class FakeLeases:
    """One Lease with resourceVersion checks, as the API server keeps it; `stall()` makes every call hang."""

    def __init__(self) -> None:
        self.lease: dict[str, Any] | None = None
        self.version = 0
        self.calls = 0
        self.hanging = 0
        self.cancelled = 0
        self.refuse_writes: Exception | None = None  # raised by every replace while set
        self._open = asyncio.Event()
        self._open.set()

    def stall(self) -> None:
        self._open.clear()

    def resume(self) -> None:
        self._open.set()

    def holder(self) -> str:
        assert self.lease is not None
        return str(self.lease["spec"]["holderIdentity"])

    def renew_as(self, holder: str, renew_time: str) -> None:
        """Another process writes the lease."""
        assert self.lease is not None
        self.lease["spec"].update(holderIdentity=holder, renewTime=renew_time, leaseDurationSeconds=4)
        self._bump()

    async def get_lease(self, namespace: str, name: str) -> dict[str, Any] | None:
        await self._gate()
        return copy.deepcopy(self.lease)

    async def create_lease(self, namespace: str, lease: Mapping[str, Any]) -> dict[str, Any]:
        await self._gate()
        if self.lease is not None:
            raise ApiError(409, "AlreadyExists", "lease exists")
        self.lease = copy.deepcopy(dict(lease))
        self._bump()
        return copy.deepcopy(self.lease)

    async def replace_lease(self, namespace: str, name: str, lease: Mapping[str, Any]) -> dict[str, Any]:
        await self._gate()
        if self.refuse_writes is not None:
            raise self.refuse_writes
        assert self.lease is not None
        if lease["metadata"].get("resourceVersion") != self.lease["metadata"]["resourceVersion"]:
            raise ApiError(409, "Conflict", "the object has been modified")
        self.lease = copy.deepcopy(dict(lease))
        self._bump()
        return copy.deepcopy(self.lease)

    def _bump(self) -> None:
        assert self.lease is not None
        self.version += 1
        self.lease["metadata"]["resourceVersion"] = str(self.version)

    async def _gate(self) -> None:
        self.calls += 1
        self.hanging += 1
        try:
            await self._open.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.hanging -= 1


async def settle() -> None:
    """Let every ready task run until it blocks."""
    for _ in range(20):
        await asyncio.sleep(0)


def test_leadership_ends_at_the_renew_deadline_of_the_last_sent_renewal_even_while_a_renewal_hangs() -> None:
    async def go() -> None:
        clock, leases = FakeClock(), FakeLeases()
        elector = LeaderElector(leases, CONFIG, clock=clock)
        assert not elector.is_leading()
        # The acquiring request is sent at 0 and answered at 1: leadership counts from 0.
        leases.stall()
        acquiring = asyncio.ensure_future(elector.try_once())
        await settle()
        clock.now = 1.0
        leases.resume()
        assert await acquiring
        assert elector.is_leading()
        # The next renewal is sent at 2 and hangs.
        clock.now = 2.0
        leases.stall()
        renewal = asyncio.ensure_future(elector.try_once())
        await settle()
        assert leases.hanging == 1
        clock.now = 2.999
        assert elector.is_leading()
        clock.now = 3.0  # renew_deadline after the acquiring request was sent, not after it was answered
        assert not elector.is_leading()
        assert not renewal.done(), "is_leading answers without waiting for the hanging request"
        # The hanging renewal finally succeeds: leadership does not come back.
        leases.resume()
        assert await renewal
        assert not elector.is_leading()
        clock.now = 3.5
        assert not elector.is_leading()

    asyncio.run(go())


def test_hold_gives_up_at_the_deadline_and_cancels_the_hanging_renewal() -> None:
    config = LeaderElection(
        lease_duration=1.0, renew_deadline=0.5, retry_period=0.1, resource_name=NAME, resource_namespace=NAMESPACE
    )

    async def go() -> None:
        leases = FakeLeases()
        elector = LeaderElector(leases, config)
        assert await elector.try_once()
        leases.stall()
        await asyncio.wait_for(elector.hold(), timeout=30)  # returns by itself; the bound only guards the test
        assert not elector.is_leading()
        assert leases.cancelled >= 1 and leases.hanging == 0, "the renewal was cut off at the deadline"

    asyncio.run(go())


def test_hold_keeps_leadership_while_renewals_succeed() -> None:
    config = LeaderElection(
        lease_duration=4.0, renew_deadline=2.0, retry_period=0.02, resource_name=NAME, resource_namespace=NAMESPACE
    )

    async def go() -> None:
        leases = FakeLeases()
        elector = LeaderElector(leases, config)
        assert await elector.try_once()
        holding = asyncio.ensure_future(elector.hold())
        renew_times: set[str] = set()
        while len(renew_times) < 5:
            assert leases.lease is not None
            renew_times.add(leases.lease["spec"]["renewTime"] + leases.lease["metadata"]["resourceVersion"])
            assert elector.is_leading() and not holding.done()
            await asyncio.sleep(0.01)
        assert leases.holder() == elector.identity
        holding.cancel()

    asyncio.run(asyncio.wait_for(go(), timeout=60))


def test_a_standby_acquires_only_after_lease_duration_without_a_change() -> None:
    async def go() -> None:
        clock, leases = FakeClock(), FakeLeases()
        other = LeaderElector(leases, LeaderElection(identity="other", resource_name=NAME, resource_namespace=NAMESPACE))
        assert await other.try_once()
        standby = LeaderElector(leases, CONFIG, clock=clock)
        assert not await standby.try_once()  # sees the lease at 0
        clock.now = 2.0
        leases.renew_as("other", "renewed-at-2")
        clock.now = 3.0
        assert not await standby.try_once()  # sees the change at 3: the lease runs until 3 + 4
        clock.now = 6.99
        assert not await standby.try_once()
        assert leases.holder() == "other" and not standby.is_leading()
        clock.now = 7.01
        assert await standby.try_once()
        assert leases.holder() == standby.identity and standby.is_leading()
        assert leases.lease is not None and leases.lease["spec"]["leaseTransitions"] == 1

    asyncio.run(go())


def test_a_leader_that_sees_another_holder_stops_leading_at_once() -> None:
    async def go() -> None:
        clock, leases = FakeClock(), FakeLeases()
        elector = LeaderElector(leases, CONFIG, clock=clock)
        assert await elector.try_once()
        leases.renew_as("intruder", "taken")
        clock.now = 1.0
        assert not await elector.try_once()
        assert not elector.is_leading(), "well before the renew deadline: another holder is proof enough"

    asyncio.run(go())


@pytest.mark.parametrize("first_answer", ["conflict", "error", "malformed"])
def test_a_failed_renewal_keeps_leadership_until_the_deadline(first_answer: str) -> None:
    async def go() -> None:
        clock, leases = FakeClock(), FakeLeases()
        elector = LeaderElector(leases, CONFIG, clock=clock)
        assert await elector.try_once()
        leases.refuse_writes = {
            "conflict": ApiError(409, "Conflict", ""),
            "error": ApiError(500, "", "etcd"),
            "malformed": ValueError("Expecting value: line 1 column 1"),
        }[first_answer]
        clock.now = 1.0
        assert not await elector.try_once()
        assert elector.is_leading()
        leases.refuse_writes = None
        clock.now = 2.0
        assert await elector.try_once()
        clock.now = 4.9  # 2.9 after the renewal sent at 2
        assert elector.is_leading()
        clock.now = 5.0
        assert not elector.is_leading()

    asyncio.run(go())


def test_release_hands_back_only_our_own_lease() -> None:
    async def go() -> None:
        leases = FakeLeases()
        elector = LeaderElector(leases, CONFIG)
        assert await elector.try_once()
        await elector.release()
        assert leases.holder() == ""
        leases.renew_as("other", "later")
        await elector.release()
        assert leases.holder() == "other"

    asyncio.run(go())


def test_election_off_always_leads() -> None:
    elector = LeaderElector(FakeLeases(), LeaderElection(enabled=False))
    assert elector.is_leading()


def test_over_http_the_lease_is_created_and_a_hanging_renewal_is_cut_off() -> None:
    """The elector on its own KubeClient (one attempt per request) against an in-process API server."""
    config = LeaderElection(
        lease_duration=1.0, renew_deadline=0.5, retry_period=0.1, resource_name=NAME, resource_namespace=NAMESPACE, identity="me"
    )
    leases_path = f"/apis/coordination.k8s.io/v1/namespaces/{NAMESPACE}/leases"
    stored = {"metadata": {"name": NAME, "namespace": NAMESPACE, "resourceVersion": "1"}, "spec": {"holderIdentity": "me"}}

    async def go() -> None:
        never = asyncio.Event()
        async with FakeApi() as api, KubeClient(api.credentials, transient_attempts=1) as kube:
            api.script("GET", f"{leases_path}/{NAME}", status(404, "NotFound"), reply(200, stored))
            api.script("POST", leases_path, reply(201, stored))
            api.script("PUT", f"{leases_path}/{NAME}", held(never, reply(200, stored)))
            elector = LeaderElector(kube, config)
            assert await elector.try_once()
            (created,) = api.requests_to("POST", leases_path)
            assert json.loads(created.body)["spec"]["holderIdentity"] == "me"
            await asyncio.wait_for(elector.hold(), timeout=30)
            assert not elector.is_leading()
            puts = api.requests_to("PUT", f"{leases_path}/{NAME}")
            assert puts, "renewals were sent"
            assert all(json.loads(put.body)["metadata"]["resourceVersion"] == "1" for put in puts)

    asyncio.run(go())


# -- LeaseKeeper: the elector on its own thread and loop ------------------------------------------------------------

FAST = LeaderElection(lease_duration=2.0, renew_deadline=1.0, retry_period=0.1, resource_name=NAME, resource_namespace=NAMESPACE)


@contextlib.asynccontextmanager
async def in_memory(leases: FakeLeases) -> AsyncIterator[FakeLeases]:
    yield leases


def test_the_keeper_renews_while_the_main_loop_is_blocked() -> None:
    """A main loop busy for three renew deadlines does not end the leadership: renewals run on their own loop."""
    leases = FakeLeases()

    async def go() -> None:
        async with LeaseKeeper(lambda: in_memory(leases), FAST) as keeper:
            assert await keeper.acquire()
            holding = asyncio.ensure_future(keeper.hold())
            renewed = leases.version
            time.sleep(3 * FAST.renew_deadline)  # blocks the main loop, as a burst of Node work can
            assert keeper.is_leading()
            assert leases.version >= renewed + 10, "renewed every retry period meanwhile"
            assert not holding.done()
            holding.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await holding
            await keeper.release()
        assert leases.holder() == ""

    asyncio.run(go())


def test_the_keeper_reports_a_lost_lease_to_the_main_loop() -> None:
    leases = FakeLeases()

    async def go() -> None:
        async with LeaseKeeper(lambda: in_memory(leases), FAST) as keeper:
            assert await keeper.acquire()
            holding = asyncio.ensure_future(keeper.hold())
            leases.renew_as("intruder", "2030-01-01T00:00:00.000000Z")
            await asyncio.wait_for(holding, timeout=10)
            assert not keeper.is_leading()

    asyncio.run(go())


def test_cancelling_acquire_on_the_main_loop_stops_it_on_the_keepers_loop() -> None:
    leases = FakeLeases()
    leases.lease = {"metadata": {"resourceVersion": "1"}, "spec": {"holderIdentity": "other", "renewTime": "x"}}

    async def go() -> None:
        async with LeaseKeeper(lambda: in_memory(leases), FAST) as keeper:
            acquiring = asyncio.ensure_future(keeper.acquire())
            await asyncio.sleep(0.3)
            acquiring.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await acquiring
            calls = leases.calls
            await asyncio.sleep(0.3)
            assert leases.calls == calls, "no attempts after the cancel"
            assert not keeper.is_leading()

    asyncio.run(go())


KEY = "nodeipam.io/test-record"


def test_an_annotation_written_while_leading_reaches_the_next_holder_and_the_old_one_can_write_no_more() -> None:
    async def go() -> None:
        clock, leases = FakeClock(), FakeLeases()
        old = LeaderElector(leases, CONFIG, clock=clock)
        assert await old.try_once()
        assert await old.write_annotation(KEY, "first")
        clock.now = 1.0
        assert await old.try_once()  # a renewal carries the annotation on
        assert leases.lease is not None and leases.lease["metadata"]["annotations"][KEY] == "first"
        standby = LeaderElector(leases, CONFIG, clock=clock)
        assert not await standby.try_once()
        clock.now = 5.5  # the lease ran out in the standby's eyes; the old leader's deadline passed at 4
        assert await standby.try_once()
        assert standby.taken_over_annotations[KEY] == "first"
        # The old leader's clock is late (a paused process): it still thinks it leads, but its write is refused.
        old_clock_now = clock.now
        clock.now = 1.5
        assert old.is_leading()
        assert not await old.write_annotation(KEY, "late")
        clock.now = old_clock_now
        assert leases.lease["metadata"]["annotations"][KEY] == "first"
        assert not old.is_leading(), "a refused write to a Lease held by another ends leadership"
        assert await standby.write_annotation(KEY, "second")
        assert leases.lease["metadata"]["annotations"][KEY] == "second"

    asyncio.run(go())


def test_an_annotation_write_conflicting_with_a_lost_write_of_our_own_is_sent_again() -> None:
    async def go() -> None:
        leases = FakeLeases()
        elector = LeaderElector(leases, CONFIG)
        assert await elector.try_once()
        leases.renew_as(elector.identity, "our renewal whose answer was lost")
        assert await elector.write_annotation(KEY, "value")
        assert leases.lease is not None and leases.lease["metadata"]["annotations"][KEY] == "value"

    asyncio.run(go())


def test_no_annotation_is_written_by_a_process_that_does_not_lead() -> None:
    async def go() -> None:
        leases = FakeLeases()
        other = LeaderElector(leases, LeaderElection(identity="other", resource_name=NAME, resource_namespace=NAMESPACE))
        assert await other.try_once()
        standby = LeaderElector(leases, CONFIG)
        assert not await standby.try_once()
        calls = leases.calls
        assert not await standby.write_annotation(KEY, "value")
        assert leases.calls == calls, "nothing sent"
        await other.release()
        assert not await other.write_annotation(KEY, "after release")
        assert "annotations" not in (leases.lease or {}).get("metadata", {})

    asyncio.run(go())
