"""Warning Events de-duplicated per object, reason and text (their effect through the reconciler: test_reconciler)."""

from __future__ import annotations

import asyncio
import dataclasses

from controller.metrics import Metrics
from controller.model import NodeInfo
from controller.warner import Warner


@dataclasses.dataclass
class Posted:
    """Records every Event posted; `accept` False: the API refuses them."""

    accept: bool = True
    events: list[tuple[str, str, str]] = dataclasses.field(default_factory=list)

    async def post_node_event(self, node: NodeInfo, event_type: str, reason: str, message: str) -> bool:
        self.events.append((node.name, reason, message))
        return self.accept

    async def post_pool_event(self, name: str, uid: str, event_type: str, reason: str, message: str) -> bool:
        self.events.append((f"pool {name} {uid}", reason, message))
        return self.accept


def sent(metrics: Metrics, reason: str) -> float:
    value = metrics.registry.get_sample_value("node_ipam_controller_events_total", {"type": "Warning", "reason": reason})
    return value or 0.0


def test_the_same_warning_goes_out_once_a_different_one_at_once() -> None:
    api, metrics = Posted(), Metrics()
    warner = Warner(api, metrics)

    async def go() -> None:
        node = NodeInfo("a", "u1")
        await warner.node(node, "R", "text")
        await warner.node(node, "R", "text")  # the same: not again
        await warner.node(node, "R", "other text")
        await warner.node(NodeInfo("b", "u2"), "R", "text")
        await warner.pool("a", "pu", "R", "text")  # a pool of the Node's name is another object

    asyncio.run(go())
    assert api.events == [("a", "R", "text"), ("a", "R", "other text"), ("b", "R", "text"), ("pool a pu", "R", "text")]
    assert sent(metrics, "R") == 4


def test_a_node_forgotten_is_warned_afresh_and_a_refused_event_is_not_counted() -> None:
    api, metrics = Posted(accept=False), Metrics()
    warner = Warner(api, metrics)

    async def go() -> None:
        await warner.node(NodeInfo("a", "u1"), "R", "text")
        warner.forget_node("a")
        await warner.node(NodeInfo("a", "u2"), "R", "text")

    asyncio.run(go())
    assert len(api.events) == 2
    assert sent(metrics, "R") == 0
