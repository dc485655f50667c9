"""What the Node watch may have missed: gaps in it, the start-up bridge, the periodic sweep and the re-list.

The resync reads nothing in bulk while the watch is whole: every period it
reads only the Nodes the watch left open (a range not yet set, a patch of
unknown outcome). All Nodes are listed again only after a gap in the watch
(a re-list after 410 Gone, or a start-up bridge that could not catch up),
since only then can a deletion have gone unseen.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Protocol

from controller.kube import ApiError
from controller.metrics import Metrics
from controller.model import NodeInfo
from controller.nodes import NodeAllocations
from controller.nodework import NodeWork
from controller.poolsync import PoolSync
from controller.supervisor import LOOP_BACKOFF, Supervisor

logger = logging.getLogger("nodeipam")

BRIDGE_LIMIT = 300.0  # seconds the start-up bridge watch may run at most
RELIST_DELAY = 1.0  # seconds from a gap to the LIST: signals of one gap make one LIST, and kopf's own re-list moves on

#: Label value of the background-failures metric.
LOOP_RESYNC = "resync"


class ListWatchApi(Protocol):
    """The LIST and watch of Nodes; `kube.KubeClient` is the real one."""

    async def list_nodes(self, *, from_cache: bool = False) -> tuple[list[NodeInfo], str]: ...

    def watch_nodes(self, resource_version: str) -> AsyncIterator[tuple[str, NodeInfo]]: ...


class Resync:
    """Finds watch gaps and makes up for them; sweeps the Nodes the watch left open."""

    def __init__(
        self,
        kube: ListWatchApi,
        allocations: NodeAllocations,
        metrics: Metrics,
        supervisor: Supervisor,
        pools: PoolSync,
        node_work: NodeWork,
    ) -> None:
        self._kube = kube
        self._allocations = allocations
        self._metrics = metrics
        self._supervisor = supervisor
        self._pools = pools
        self._node_work = node_work
        self.watch_live = asyncio.Event()  # the watch delivered its first change after its initial listing
        self._listed_again: set[str] = set()  # names the listing in progress showed so far (none: the watch is live)
        self._relist_due = asyncio.Event()

    def watched(self, kind: str | None, name: str) -> None:
        """An event of the Node watch (`kind` None for an entry of its listing): was there a gap before it?

        A listing that starts after the watch was live is a re-list (kopf's,
        after 410 Gone): deletions in that gap are never reported, so every
        Node is listed again soon.
        """
        if kind is None:
            again = name in self._listed_again
            if again or (self.watch_live.is_set() and not self._listed_again):
                # The first entry of a listing after the watch was live; or a name shown twice (also before
                # it was live): one listing ended and another began.
                self._listed_again.clear()
                self.relist_soon("the node watch listed again (a gap: deletions meanwhile are not reported)")
            self._listed_again.add(name)
        else:
            self._listed_again.clear()
            self.watch_live.set()

    async def bridge(self, listed_version: str, caught_up: asyncio.Event, limit: float = BRIDGE_LIMIT) -> None:
        """Watch from the start-up LIST (at `listed_version`) until kopf's own watch is live.

        kopf lists every Node again before it streams changes; on 20,000
        Nodes a Node registering meanwhile waited 12 s behind that listing.
        This watch starts where the rebuild's LIST ended, so such a Node is
        served at once, and a Node created with podCIDRs is occupied at once.
        Events seen twice are harmless: NodeAllocations' guards are made for that.
        """
        if not listed_version:
            return
        try:
            async with asyncio.timeout(limit):
                async for kind, node in self._kube.watch_nodes(listed_version):
                    if caught_up.is_set():
                        return
                    if kind == "DELETED":
                        await self._node_work.deleted(node)
                    elif not self._allocations.knows(node):
                        self._node_work.enqueue(node)
        except (TimeoutError, ApiError) as error:
            logger.debug("start-up bridge watch ended: %r", error)
        except Exception:
            logger.exception("start-up bridge watch failed")
        if not caught_up.is_set():
            # Deletions between the start-up LIST and kopf's may have gone unseen.
            self.relist_soon("the start-up bridge watch ended before the node watch was live")

    def relist_soon(self, why: str) -> None:
        """Ask the resync loop for a LIST of all Nodes: the watch had a gap."""
        if not self._relist_due.is_set():
            logger.info("%s: all nodes will be listed again", why)
        self._relist_due.set()

    async def relist(self) -> None:
        """List every Node (from the API server's cache): free ranges of Nodes gone unseen, serve Nodes missed.

        kopf does not report deletions that happened while its watch re-listed:
        pools are listed first, and a pool known here but absent from the
        list, with no event about it since the LIST began, is deleted.
        """
        self._metrics.relists.inc()
        if self._pools.served:
            await self._pools.resync()
        mark = self._allocations.sequence
        nodes, _ = await self._kube.list_nodes(from_cache=True)
        live = {node.name: node.uid for node in nodes}
        for name, uid in self._allocations.orphans(live, listed_after=mark):
            self._node_work.vanished(name, uid, name_listed=name in live)
        await self._node_work.assign_all((node for node in nodes if not self._allocations.knows(node)), read_after=mark)

    async def sweep(self) -> None:
        """Read, one by one, the Nodes the watch left open: ones left without a range, patches of unknown outcome.

        No LIST: what the watch delivered is trusted, as an informer's resync
        trusts its cache. Pools are listed (there are few).
        """
        if self._pools.served:
            await self._pools.resync()
        await asyncio.gather(*(self._node_work.read_open(name) for name in sorted(self._node_work.open_names())))

    async def forever(self, period: float, relist_delay: float = RELIST_DELAY) -> None:
        """A sweep every `period`; a LIST of all Nodes as soon as the watch had a gap. Never returns."""

        async def loop(restarted: bool) -> None:
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._relist_due.wait(), timeout=period)
                relist = self._relist_due.is_set()
                if relist:
                    await asyncio.sleep(relist_delay)
                    self._relist_due.clear()
                try:
                    await (self.relist() if relist else self.sweep())
                except ApiError as error:
                    logger.warning("resync failed, will try again in %.0fs: %s", period, error)
                    if relist:
                        self._relist_due.set()
                        await asyncio.sleep(min(period, LOOP_BACKOFF.cap))
                    continue
                except BaseException:
                    if relist:
                        self._relist_due.set()  # still owed, after the restart
                    raise
                self._supervisor.ran(LOOP_RESYNC)

        await self._supervisor.run(LOOP_RESYNC, loop)
