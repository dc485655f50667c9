"""Warning events on Nodes and NodeCIDRPools, each distinct warning at most once per interval.

A Node that stays without a range is handled again and again (every
release, every resync); without de-duplication each pass would post the
same Event. The log line is the caller's: it is written on every pass.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Protocol

from controller.metrics import Metrics
from controller.model import NodeInfo, Problem

logger = logging.getLogger("nodeipam")

WARNING = "Warning"
EVENT_REPEAT_INTERVAL = 600.0  # the same warning about the same object at most this often


class EventApi(Protocol):
    """The calls that post Events; `kube.KubeClient` is the real one."""

    async def post_node_event(self, node: NodeInfo, event_type: str, reason: str, message: str) -> bool: ...

    async def post_pool_event(self, name: str, uid: str, event_type: str, reason: str, message: str) -> bool: ...


class Warner:
    """Posts Warning events, de-duplicated by object, reason and text, and counts the ones posted."""

    def __init__(self, kube: EventApi, metrics: Metrics) -> None:
        self._kube = kube
        self._metrics = metrics
        self._sent: dict[tuple[str, str, str], float] = {}  # (object, reason, message) -> when last posted

    async def node(self, node: NodeInfo, reason: str, message: str) -> None:
        """A Warning event on the Node, at most once per interval for the same text."""
        if self._sent_lately((node.name, reason, message)):
            return
        if await self._kube.post_node_event(node, WARNING, reason, message):
            self._metrics.events.labels(WARNING, reason).inc()

    async def problems(self, node: NodeInfo, problems: Iterable[Problem]) -> None:
        """Log each problem with the Node and warn on it."""
        for problem in problems:
            logger.warning("node %s: %s", node.name, problem.message)
            await self.node(node, problem.reason, problem.message)

    async def pool(self, name: str, uid: str, reason: str, message: str) -> None:
        """A Warning event on the NodeCIDRPool, at most once per interval for the same text."""
        if self._sent_lately((f"NodeCIDRPool/{name}", reason, message)):
            return
        if await self._kube.post_pool_event(name, uid, WARNING, reason, message):
            self._metrics.events.labels(WARNING, reason).inc()

    def forget_node(self, name: str) -> None:
        """The Node is gone: a Node of that name later is warned afresh."""
        for key in [key for key in self._sent if key[0] == name]:
            del self._sent[key]

    def _sent_lately(self, key: tuple[str, str, str]) -> bool:
        """Whether this warning went out less than EVENT_REPEAT_INTERVAL ago; if not, it counts as sent now."""
        now = time.monotonic()
        if now - self._sent.get(key, -EVENT_REPEAT_INTERVAL) < EVENT_REPEAT_INTERVAL:
            return True
        self._sent[key] = now
        return False
