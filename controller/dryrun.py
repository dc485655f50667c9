"""`nodeipam run --dry-run`: every decision made and logged, nothing written, held against what another allocator writes.

The reconciler runs as it always does, over `DryRunApi` in place of the API
client: reads go to the API server; each write is logged ("dry run: would
...") and answered as if applied, and never sent. A podCIDR patch so
answered leaves the Node holding the ranges in the ledger, as a real one
would, so the next Node's decision follows from it, as it would for real.
Beside kube-controller-manager, that other allocator's patch then shows
what the Node really got: `DryRun.seen` compares it with what was
predicted (controller.predictions), counts the agreement or disagreement
(`plan_agreements_total`, `plan_disagreements_total`), and gives the ledger
the truth: a prediction the other allocator's ranges made void is taken out
of it, so that it is never mistaken for a duplicate.

The dry run takes no Lease (lifecycle.py) and its API client refuses every
write (`may_write`): this wrapper is the first guard, the client the second.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import netaddr

from controller.cidrs import join
from controller.metrics import DryRunCounters
from controller.model import NodeInfo
from controller.nodes import NodeAllocations
from controller.predictions import Comparison, Predictions
from controller.reconciler import NodeApi

logger = logging.getLogger("nodeipam")

WITHHELD_POD_CIDR = "podcidr"
WITHHELD_EVENT = "event"
WITHHELD_POOL_STATUS = "pool_status"
WITHHELD_POOL_FINALIZER = "pool_finalizer"


class DryRun:
    """The dry run's state: what it predicted, and how that compares with what the cluster shows."""

    def __init__(self, allocations: NodeAllocations, counters: DryRunCounters) -> None:
        self._allocations = allocations
        self._counters = counters
        self.predictions = Predictions()
        for kind in (WITHHELD_POD_CIDR, WITHHELD_EVENT, WITHHELD_POOL_STATUS, WITHHELD_POOL_FINALIZER):
            counters.withheld.labels(kind)  # each kind shows, at 0, from the start

    def api(self, kube: NodeApi) -> DryRunApi:
        """`kube` for the reconciler, with every write withheld."""
        return DryRunApi(kube, self)

    def predicted(self, node: NodeInfo, cidrs: Sequence[netaddr.IPNetwork]) -> None:
        self.predictions.predict(node, cidrs)
        self._counters.withheld.labels(WITHHELD_POD_CIDR).inc()
        logger.info("dry run: would patch node %s with podCIDRs %s", node.name, join(cidrs))

    def withheld(self, kind: str, what: str) -> None:
        self._counters.withheld.labels(kind).inc()
        logger.info("dry run: would %s", what)

    def seen(self, node: NodeInfo) -> None:
        """A Node as the watch, a LIST or a read shows it, before the ledger accounts for it.

        A Node the ledger holds exactly as it shows (every status update of a Node served) says nothing new.
        """
        if node.name not in self.predictions and self._allocations.knows(node):
            return
        comparison = self.predictions.compare(node)
        if comparison is not None:
            self._settle(comparison)

    def watched(self, kind: str | None, node: NodeInfo) -> None:
        """A watch event (kind None: an entry of the watch's listing), before the reconciler handles it."""
        if kind == "DELETED":
            self.predictions.forget(node.name, node.uid)
        else:
            self.seen(node)

    def _settle(self, comparison: Comparison) -> None:
        written = ",".join(comparison.written)
        if comparison.agreed:
            self._counters.agreements.inc()
            logger.info("dry run: node %s got %s from another allocator, as predicted", comparison.node, written)
        elif comparison.predicted:
            logger.warning(
                "dry run: node %s got %s from another allocator; this controller would have given it %s (a disagreement)",
                comparison.node,
                written,
                join(comparison.predicted),
            )
        for other, cidrs in comparison.voided:
            logger.warning(
                "dry run: node %s got %s from another allocator, which this controller would have given node %s"
                " (a disagreement); %s's prediction is dropped",
                comparison.node,
                written,
                other,
                other,
            )
            held = self._allocations.held.get(other)
            if held is not None and held.cidrs == cidrs:
                self._allocations.held.drop(other)  # the prediction alone: the Node has shown no podCIDRs yet
        if comparison.disagreements:
            self._counters.disagreements.inc(comparison.disagreements)


class DryRunApi:
    """The API client for the reconciler in a dry run: reads sent, writes logged and answered as if applied."""

    def __init__(self, kube: NodeApi, dry_run: DryRun) -> None:
        self._kube = kube
        self._dry_run = dry_run

    # -- reads: sent, and what they show compared ---------------------------------------

    async def get_node(self, name: str) -> NodeInfo | None:
        node = await self._kube.get_node(name)
        if node is not None:
            self._dry_run.seen(node)
        return node

    async def list_nodes(self, *, from_cache: bool = False) -> tuple[list[NodeInfo], str]:
        nodes, version = await self._kube.list_nodes(from_cache=from_cache)
        for node in nodes:
            self._dry_run.seen(node)
        return nodes, version

    async def watch_nodes(self, resource_version: str) -> AsyncIterator[tuple[str, NodeInfo]]:
        async for kind, node in self._kube.watch_nodes(resource_version):
            self._dry_run.watched(kind, node)
            yield kind, node

    async def list_pools(self) -> list[dict[str, Any]] | None:
        return await self._kube.list_pools()

    # -- writes: withheld ------------------------------------------------------------------

    async def patch_pod_cidrs(self, node: NodeInfo, cidrs: Sequence[netaddr.IPNetwork]) -> None:
        self._dry_run.predicted(node, cidrs)

    async def post_node_event(self, node: NodeInfo, event_type: str, reason: str, message: str) -> bool:
        self._dry_run.withheld(WITHHELD_EVENT, f"post a {event_type} Event {reason} on node {node.name}: {message}")
        return True

    async def post_pool_event(self, name: str, uid: str, event_type: str, reason: str, message: str) -> bool:
        self._dry_run.withheld(WITHHELD_EVENT, f"post a {event_type} Event {reason} on NodeCIDRPool {name}: {message}")
        return True

    async def patch_pool_status(self, name: str, status: Mapping[str, Any]) -> None:
        self._dry_run.withheld(WITHHELD_POOL_STATUS, f"update the status of NodeCIDRPool {name}")

    async def set_pool_finalizers(self, name: str, finalizers: Sequence[str], resource_version: str) -> dict[str, Any]:
        """Withheld; answered with the pool as the API holds it (a LIST: the dry run writes no pool status, so this is rare)."""
        self._dry_run.withheld(WITHHELD_POOL_FINALIZER, f"set the finalizers of NodeCIDRPool {name} to {list(finalizers)}")
        for body in await self._kube.list_pools() or []:
            if body.get("metadata", {}).get("name") == name:
                return body
        return {"metadata": {"name": name, "resourceVersion": resource_version}}
