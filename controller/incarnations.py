"""Which Node incarnations are deleted, and which Nodes wait for a range: the ledger's book of who is where.

Its own class (held by `nodes.NodeAllocations`, which decides when an
incarnation retires or starts waiting) so that the rest of the controller
asks it directly, and the ledger keeps only its decisions.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable

from controller.model import NodeInfo

#: UIDs of deleted Nodes remembered, so that late events about them are ignored.
RETIRED_UIDS_KEPT = 100_000


class Incarnations:
    """The deleted UIDs (the latest RETIRED_UIDS_KEPT) and the Nodes that found every pool exhausted."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._waiting: dict[str, NodeInfo] = {}
        self._waiting_since: dict[str, float] = {}  # when each began to wait: the first entry is the oldest
        self._retired: collections.OrderedDict[str, None] = collections.OrderedDict()

    def waiting(self) -> list[NodeInfo]:
        """Nodes that found the range exhausted, oldest first."""
        return list(self._waiting.values())

    def is_waiting(self, name: str) -> bool:
        """Whether the Node waits for a range to be released (it is retried then)."""
        return name in self._waiting

    def waits_as(self, name: str, uid: str) -> bool:
        """Whether the incarnation of that UID is the one waiting under `name`."""
        waiting = self._waiting.get(name)
        return waiting is not None and waiting.uid == uid

    def is_retired(self, uid: str) -> bool:
        """Whether this incarnation is known to be deleted."""
        return uid in self._retired

    def waiting_count(self) -> int:
        return len(self._waiting)

    def longest_wait(self) -> float:
        """Seconds the Node waiting longest has waited (0: none waits): what an alert on a Node left without a range
        reads. O(1), and safe to read from the metrics feed's thread (a dict changed meanwhile gives 0 once)."""
        try:
            return max(0.0, self._clock() - next(iter(self._waiting_since.values())))
        except (StopIteration, RuntimeError):
            return 0.0

    def wait(self, node: NodeInfo) -> None:
        """The Node found no room: it is retried when a range comes free (or a new one is served)."""
        self._waiting[node.name] = node
        self._waiting_since.setdefault(node.name, self._clock())

    def stop_waiting(self, name: str) -> None:
        self._waiting.pop(name, None)
        self._waiting_since.pop(name, None)

    def retire(self, name: str, uid: str) -> None:
        """Remember a deleted incarnation, so that late events about it change nothing."""
        if self.waits_as(name, uid):
            self.stop_waiting(name)
        self._retired[uid] = None
        self._retired.move_to_end(uid)
        while len(self._retired) > RETIRED_UIDS_KEPT:
            self._retired.popitem(last=False)
