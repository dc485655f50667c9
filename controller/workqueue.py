"""A work queue keyed by name: the latest item per name, each name handled by one worker at a time.

The shape of client-go's workqueue. A watch delivers events faster than
Nodes can be patched during a burst; queued here, each waiting Node costs
one small item (the latest seen), not the decoded body of every event
about it, and a Node that changes while it is being handled is handled
again afterwards, never twice at once.
"""

from __future__ import annotations

import asyncio
from typing import Generic, TypeVar

Item = TypeVar("Item")


class KeyedQueue(Generic[Item]):
    """Names waiting to be handled, in arrival order; `put` for a name already waiting only updates its item."""

    def __init__(self) -> None:
        self._latest: dict[str, Item] = {}  # the item to handle next, per name waiting
        self._ready: asyncio.Queue[str] = asyncio.Queue()  # each waiting name at most once; none being handled
        self._processing: set[str] = set()

    def put(self, name: str, item: Item) -> None:
        """Handle `item` for `name` soon: after the one in hand for that name, if any; replaces one still waiting."""
        queued = name in self._latest
        self._latest[name] = item
        if not queued and name not in self._processing:
            self._ready.put_nowait(name)

    async def get(self) -> tuple[str, Item]:
        """The next name and its latest item; the name counts as in hand until `done(name)`."""
        name = await self._ready.get()
        self._processing.add(name)
        return name, self._latest.pop(name)

    def done(self, name: str) -> None:
        """The worker finished `name`: if it changed meanwhile, it is ready again."""
        self._processing.discard(name)
        if name in self._latest:
            self._ready.put_nowait(name)

    def __len__(self) -> int:
        """Names waiting (not those in hand)."""
        return len(self._latest)

    @property
    def in_hand(self) -> int:
        return len(self._processing)
