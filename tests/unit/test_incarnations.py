"""The Nodes waiting for a range: how long the one waiting longest has waited, for the alert on it."""

from __future__ import annotations

from controller.incarnations import Incarnations
from controller.model import NodeInfo


def node(name: str, uid: str = "") -> NodeInfo:
    return NodeInfo(name=name, uid=uid or f"uid-{name}", pod_cidrs=())


def test_the_longest_wait_is_the_oldest_waiting_nodes_and_ends_with_it() -> None:
    now = [100.0]
    book = Incarnations(clock=lambda: now[0])
    assert book.longest_wait() == 0.0
    book.wait(node("a"))
    now[0] = 110.0
    book.wait(node("b"))
    book.wait(node("a"))  # tried again, still waiting: its wait goes on from when it began
    now[0] = 125.0
    assert book.longest_wait() == 25.0
    book.stop_waiting("a")
    assert book.longest_wait() == 15.0
    book.retire("b", "uid-b")
    assert book.longest_wait() == 0.0 and book.waiting_count() == 0
    book.wait(node("a"))  # waits again: from now
    now[0] = 130.0
    assert book.longest_wait() == 5.0
