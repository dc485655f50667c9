"""NodeCIDRPools in step with the API: what each pool says goes to the allocations; its status and finalizer back.

Pools come from their own watch (`event`), from the start-up LIST (`load`)
and from the resync's LIST (`resync`, for deletions the watch did not
report). A pool's status says how much of it Nodes use; its finalizer holds
its deletion while a Node still holds a range in it. Both are written by one
background loop, debounced, and only when they changed.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

import netaddr

from controller.kube import ApiError
from controller.model import REASON_INVALID_POD_CIDR, NodeInfo, api_timestamp
from controller.nodes import NodeAllocations
from controller.pools import DEFAULT_POOL, PoolSpec, PoolSpecError
from controller.poolstatus import BLOCKING_NODES_SHOWN, PoolUsage, StatusTurns, news, shown_conditions, status_body
from controller.supervisor import Supervisor
from controller.warner import Warner

logger = logging.getLogger("nodeipam")

#: The finalizer a NodeCIDRPool keeps while a Node holds a range in it.
POOL_FINALIZER = "nodeipam.io/ranges-in-use"
POOL_STATUS_DEBOUNCE = 1.0  # seconds: a burst of Nodes makes one status write per pool, not one per Node
#: Status writes of changed counts a round (rounds are POOL_STATUS_DEBOUNCE apart) when many pools change at once;
#: a status with news (a flipped condition, a spec change observed, or none shown yet) is written at once.
POOL_STATUS_WRITES_PER_ROUND = 2

#: Event reasons about NodeCIDRPools.
REASON_POOL_OVERLAPPING = "PoolOverlapping"
REASON_INVALID_POOL = "InvalidPool"

#: Label value of the background-failures metric.
LOOP_POOL_STATUS = "pool_status"


class PoolApi(Protocol):
    """The calls about NodeCIDRPools; `kube.KubeClient` is the real one."""

    async def list_pools(self) -> list[dict[str, Any]] | None: ...

    async def patch_pool_status(self, name: str, status: Mapping[str, Any]) -> None: ...

    async def set_pool_finalizers(self, name: str, finalizers: Sequence[str], resource_version: str) -> dict[str, Any]: ...


@dataclasses.dataclass(frozen=True)
class PoolObject:
    """A NodeCIDRPool as the API server last showed it, its metadata read once; `body` for `PoolSpec.from_body`."""

    name: str
    uid: str
    resource_version: str
    finalizers: tuple[str, ...]
    deleting: bool  # a deletionTimestamp is set
    status: object  # anything at all, where the CRD has no schema
    body: Mapping[str, Any]

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> PoolObject:
        metadata: Mapping[str, Any] = body.get("metadata") or {}
        return cls(
            name=str(metadata.get("name", "")),
            uid=str(metadata.get("uid", "")),
            resource_version=str(metadata.get("resourceVersion", "")),
            finalizers=tuple(metadata.get("finalizers") or ()),
            deleting=bool(metadata.get("deletionTimestamp")),
            status=body.get("status"),
            body=body,
        )


def _without_times(status: Mapping[str, Any]) -> dict[str, Any]:
    """A pool status without its timestamps: what decides whether it needs writing."""
    conditions = [
        {key: value for key, value in condition.items() if key != "lastTransitionTime"} for condition in shown_conditions(status)
    ]
    return {**status, "conditions": conditions}


class PoolSync:
    """The pools as last seen, handed to the allocations; their statuses and finalizers written back."""

    def __init__(
        self,
        kube: PoolApi,
        allocations: NodeAllocations,
        warner: Warner,
        supervisor: Supervisor,
        served_changed: Callable[[], None],
    ) -> None:
        """`served_changed`: called when what the pools serve changed (waiting Nodes may find a range now)."""
        self._kube = kube
        self._allocations = allocations
        self._warner = warner
        self._supervisor = supervisor
        self._served_changed = served_changed
        self.served = False  # the NodeCIDRPool CRD is installed: pools are watched, their status written
        self._objects: dict[str, PoolObject] = {}  # the last seen object of each pool
        self._specs: dict[str, PoolSpec] = {}  # what each pool says, parsed (the last valid spec)
        self._events = 0  # pool events handled so far
        self._seen: dict[str, int] = {}  # the count at the last event about each pool
        self._refused_reported: dict[str, str] = {}
        self._status_due = asyncio.Event()
        self._status_written: dict[str, dict[str, Any]] = {}
        self._finalizer_refused: dict[str, str] = {}  # the resourceVersion at which a pool's finalizer change was refused
        self._turns = StatusTurns(POOL_STATUS_WRITES_PER_ROUND)

    def count(self) -> int:
        """How many pools have a valid spec."""
        return len(self._specs)

    def load(self, bodies: list[dict[str, Any]] | None) -> None:
        """The start-up LIST of pools (None: the CRD is not installed)."""
        self.served = bodies is not None
        for body in bodies or ():
            self._remember(PoolObject.from_body(body))
        self._apply()

    async def event(self, kind: str | None, body: Mapping[str, Any]) -> None:
        """A NodeCIDRPool was listed, added, changed or deleted: serve what it says now.

        A pool created, or grown, serves waiting Nodes at once; one being
        deleted takes no new Node.
        """
        pool = PoolObject.from_body(body)
        name = pool.name
        self._events += 1
        self._seen[name] = self._events
        before = (self._specs.get(name), self._deleting(name))
        if kind == "DELETED":
            self._seen.pop(name, None)
            self._objects.pop(name, None)
            self._specs.pop(name, None)
            self._refused_reported.pop(name, None)
            self._status_written.pop(name, None)
            self._finalizer_refused.pop(name, None)
            self._turns.forget(name)
        else:
            self._remember(pool)
        if kind != "DELETED" and (self._deleting(name) or POOL_FINALIZER not in pool.finalizers):
            self._allocations.pool_usage.recheck(name)  # a finalizer to add, or to drop once no Node holds a range in it
            self.usage_changed()
        if (self._specs.get(name), self._deleting(name)) == before and kind != "DELETED":
            return  # its status or finalizers changed (our own writes, mostly): nothing to serve differently
        self._apply()
        self._served_changed()

    async def resync(self) -> None:
        """List the pools: one known here but absent, with no event about it since the LIST began, is deleted."""
        listed_after = self._events
        bodies = await self._kube.list_pools()
        listed = {PoolObject.from_body(body).name for body in bodies or ()}
        for name, pool in list(self._objects.items()):
            if name not in listed and self._seen.get(name, 0) <= listed_after:
                logger.info("NodeCIDRPool %s is gone (its deletion was not seen)", name)
                await self.event("DELETED", pool.body)

    def _remember(self, pool: PoolObject) -> None:
        name = pool.name
        self._objects[name] = pool
        try:
            self._specs[name] = PoolSpec.from_body(pool.body)
        except PoolSpecError as error:
            kept = "its last valid spec is kept" if name in self._specs else "it is not used"
            logger.warning("%s; %s", error, kept)
            self._supervisor.spawn(self._warn(name, REASON_INVALID_POOL, f"{error}; {kept}"))

    def _apply(self) -> None:
        """Hand the pools to the allocations (a pool being deleted as disabled); report newly refused ones."""
        served = [
            dataclasses.replace(spec, disabled=True) if self._deleting(name) else spec for name, spec in self._specs.items()
        ]
        refused = self._allocations.set_pools(served)
        for name, why in refused.items():
            if self._refused_reported.get(name) != why:
                logger.warning("NodeCIDRPool %s serves no Node: %s", name, why)
                self._supervisor.spawn(self._warn(name, REASON_POOL_OVERLAPPING, f"serves no Node: {why}"))
        self._refused_reported = dict(refused)
        self._status_due.set()

    def _deleting(self, name: str) -> bool:
        pool = self._objects.get(name)
        return pool is not None and pool.deleting

    async def _warn(self, name: str, reason: str, message: str) -> None:
        pool = self._objects.get(name)
        await self._warner.pool(name, pool.uid if pool else "", reason, message)

    # -- status and finalizers -------------------------------------------------------

    def usages(self) -> list[PoolUsage]:
        """Every pool's usage (the default pool's too), from what Nodes hold or have reserved now (kept up to date)."""
        return self._allocations.pool_usage.usages()

    def usage_changed(self) -> None:
        """What Nodes hold changed: the statuses are looked at again soon."""
        if self.served:
            self._status_due.set()

    async def write_statuses(self) -> None:
        """Keep every pool's status, and its finalizer, in step with what Nodes hold. Never returns.

        Writes are debounced (POOL_STATUS_DEBOUNCE) and made only when the
        status changed, so a burst of Nodes writes each pool's status once;
        when many pools change at once, their counts are written a few a
        round (POOL_STATUS_WRITES_PER_ROUND, see `StatusTurns`).
        """
        if not self.served:
            await asyncio.Event().wait()

        async def loop(restarted: bool) -> None:
            if restarted:
                self._status_due.set()
            while True:
                await self._status_due.wait()
                await asyncio.sleep(POOL_STATUS_DEBOUNCE)
                self._status_due.clear()
                await self.sync()
                self._supervisor.ran(LOOP_POOL_STATUS)

        await self._supervisor.run(LOOP_POOL_STATUS, loop)

    async def sync(self) -> None:
        """One round: write changed statuses; add the finalizer to new pools, drop it from deleted, empty ones.

        Only the pools whose usage changed since the last round (or that asked for a look), and those whose
        changed counts wait for their turn, are looked at.
        """
        book = self._allocations.pool_usage
        await self._report_outside(book.take_new_outside())
        pending = collections.deque(self._turns.round(book.take_dirty()))
        try:
            while pending:
                await self._sync_one(pending[0])
                pending.popleft()
        finally:
            for name in pending:  # cancelled or failed: the next round looks at them
                book.recheck(name)
        if self._turns.waiting:
            self._status_due.set()  # another round, for those whose turn it was not

    async def _sync_one(self, name: str) -> None:
        book = self._allocations.pool_usage
        pool = self._objects.get(name)
        usage = book.usage(name)
        if name == DEFAULT_POOL or pool is None or usage is None:
            self._turns.forget(name)
            return
        if pool.deleting:
            usage = dataclasses.replace(usage, blocking_nodes=tuple(book.holders(name, BLOCKING_NODES_SHOWN)))
        previous = shown_conditions(pool.status)
        spec = self._specs.get(name) or book.index.pools[name]
        status = status_body(spec, usage, api_timestamp(), previous, deleting=pool.deleting)
        # The finalizer first: it needs the resourceVersion seen, which a status write would change.
        if not await self._keep_finalizer(pool, needed=not pool.deleting or book.is_held(name)):
            return
        try:
            # What the pool shows: what this process wrote last, else what the API server showed (after a restart).
            shown = self._status_written.get(name) or (pool.status if isinstance(pool.status, Mapping) else None)
            if shown and _without_times(status) == _without_times(shown):
                self._turns.forget(name)  # nothing new to show
            elif self._turns.may_write(name, urgent=not shown or news(status, shown)):
                await self._kube.patch_pool_status(name, status)
                self._status_written[name] = status
        except ApiError as error:
            if error.status == 404:
                self._turns.forget(name)  # gone: its DELETED event follows
                return
            if _refused_as_it_is(error):
                # Sent again only once it changes, not every round.
                self._status_written[name] = status
                logger.warning("the status of NodeCIDRPool %s was refused: %s; sent again once it changes", name, error)
                await self._warn(name, REASON_INVALID_POOL, f"its status was refused: {error}")
                return
            logger.warning("updating NodeCIDRPool %s failed: %s; tried again soon", name, error)
            self._turns.retry(name)  # first in the next round: a throttled write does not go to the back
            self._status_due.set()

    async def _report_outside(self, outside: Iterable[tuple[str, netaddr.IPNetwork]]) -> None:
        """Ranges Nodes hold that no serving pool contains (its CIDR removed, or the pool refused): reported, never changed."""
        for name, cidr in outside:
            uid = self._allocations.uid_holding_ranges(name)
            if uid is None or self._allocations.pool_sets.overlaps_served(cidr):
                continue  # a reservation; or a range sticking out of a pool, reported when it was first seen
            message = f"podCIDR {cidr} lies in no serving pool; it stays the Node's and is handed to no other Node"
            await self._warner.node(NodeInfo(name, uid), REASON_INVALID_POD_CIDR, message)

    async def _keep_finalizer(self, pool: PoolObject, needed: bool) -> bool:
        """The finalizer stays while the pool is not deleted or a Node still holds a range in it.

        False when the pool's status is not to be written this round: the pool is gone, or the API server
        failed and the pool goes first in the next round. A refusal (RBAC, an admission webhook) is reported,
        tried again once the pool changes; the status is written all the same.
        """
        has = POOL_FINALIZER in pool.finalizers
        if has == needed or self._finalizer_refused.get(pool.name) == pool.resource_version:
            return True
        wanted = [*pool.finalizers, POOL_FINALIZER] if needed else [f for f in pool.finalizers if f != POOL_FINALIZER]
        try:
            patched = await self._kube.set_pool_finalizers(pool.name, wanted, pool.resource_version)
        except ApiError as error:
            if error.status == 404:
                self._turns.forget(pool.name)  # gone: its DELETED event follows
                return False
            if error.status == 409:  # changed meanwhile: its event brings the new version, and another round
                self._allocations.pool_usage.recheck(pool.name)
                self._status_due.set()
                return True
            change = "added" if needed else "removed"
            if _refused_as_it_is(error):
                self._finalizer_refused[pool.name] = pool.resource_version
                logger.warning(
                    "NodeCIDRPool %s: its finalizer could not be %s: %s; tried again once the pool changes",
                    pool.name,
                    change,
                    error,
                )
                await self._warn(pool.name, REASON_INVALID_POOL, f"its finalizer {POOL_FINALIZER} could not be {change}: {error}")
                return True
            logger.warning("NodeCIDRPool %s: its finalizer could not be %s: %s; tried again soon", pool.name, change, error)
            self._turns.retry(pool.name)
            self._status_due.set()
            return False
        if needed:
            self._objects[pool.name] = PoolObject.from_body(patched)
        else:
            logger.info("NodeCIDRPool %s: no Node holds a range in it any more; its deletion may proceed", pool.name)
        return True


def _refused_as_it_is(error: ApiError) -> bool:
    """A 4xx other than a conflict or throttling: sending the same again would be refused again."""
    return 400 <= error.status < 500 and error.status not in (409, 429)
