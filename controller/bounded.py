"""Waiting within bounds: a cache of bounded size whose entries expire, slots where one class of waiters
goes first, and single flights (callers for one key share one task, called off once none waits for it).

Pure: the standard library only. controller.serving_reviews composes them into the metrics port's reviews.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import functools
from collections.abc import AsyncIterator, Callable, Coroutine, Hashable
from typing import Any, Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")
T = TypeVar("T")


class TTLCache(Generic[K, V]):
    """At most `size` entries, each for `ttl` seconds; the least recently used goes first. O(1) a call."""

    def __init__(self, size: int, ttl: float) -> None:
        self.size = size
        self.ttl = ttl
        self._entries: collections.OrderedDict[K, tuple[float, V]] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: K, now: float) -> V | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        expiry, value = entry
        if expiry <= now:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return value

    def expiry(self, key: K) -> float | None:
        """When `key`'s entry expires (None: not cached); its place in the order is kept."""
        entry = self._entries.get(key)
        return None if entry is None else entry[0]

    def put(self, key: K, value: V, now: float, ttl: float | None = None) -> None:
        """Cache `value` for `ttl` seconds (the cache's own by default)."""
        self._entries[key] = (now + (self.ttl if ttl is None else ttl), value)
        self._entries.move_to_end(key)
        if len(self._entries) > self.size:
            self._entries.popitem(last=False)


class PrioritySlots:
    """At most `size` holders at once; when a slot is free, a waiter of the first class goes first."""

    def __init__(self, size: int) -> None:
        self._free = size
        # Waiters, the first class's first; there are waiters only while no slot is free.
        self._queues: tuple[collections.deque[asyncio.Future[None]], ...] = (collections.deque(), collections.deque())

    @contextlib.asynccontextmanager
    async def taken(self, first: bool) -> AsyncIterator[None]:
        await self._acquire(first)
        try:
            yield
        finally:
            self._release()

    async def _acquire(self, first: bool) -> None:
        if self._free > 0:
            self._free -= 1
            return
        queue = self._queues[0 if first else 1]
        waiter = asyncio.get_running_loop().create_future()
        queue.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._release()  # handed a slot as it was cancelled: pass it on
            else:
                with contextlib.suppress(ValueError):
                    queue.remove(waiter)
            raise

    def _release(self) -> None:
        for queue in self._queues:
            while queue:
                waiter = queue.popleft()
                if not waiter.done():
                    waiter.set_result(None)
                    return
        self._free += 1


@dataclasses.dataclass
class _Flight(Generic[T]):
    """One task under way, and how many callers wait for it."""

    task: asyncio.Task[T]
    waiters: int = 0


class SingleFlights(Generic[K, T]):
    """At most one task under way a key: callers for the same key share its answer (or its error)."""

    def __init__(self) -> None:
        self._flights: dict[K, _Flight[T]] = {}

    def __len__(self) -> int:
        return len(self._flights)

    async def join(self, key: K, work: Callable[[], Coroutine[Any, Any, T]]) -> T:
        """The answer of the task under way for `key`, or of a new one running `work`.

        A task that no caller waits for any more is cancelled: one still waiting for a slot never starts its work.
        """
        flight = self._flights.get(key) or self._start(key, work)
        flight.waiters += 1
        try:
            return await asyncio.shield(flight.task)
        finally:
            flight.waiters -= 1
            if flight.waiters == 0 and not flight.task.done():
                flight.task.cancel()
                if self._flights.get(key) is flight:
                    del self._flights[key]

    def start(self, key: K, work: Callable[[], Coroutine[Any, Any, T]]) -> None:
        """Run `work` in the background unless a task is under way for `key`; nobody waits for it, its error
        is dropped. A caller that joins it and leaves calls it off."""
        if key not in self._flights:
            self._start(key, work)

    def cancel_all(self) -> None:
        for flight in self._flights.values():
            flight.task.cancel()

    def _start(self, key: K, work: Callable[[], Coroutine[Any, Any, T]]) -> _Flight[T]:
        flight = _Flight(asyncio.ensure_future(work()))
        self._flights[key] = flight
        flight.task.add_done_callback(functools.partial(self._landed, key, flight))
        return flight

    def _landed(self, key: K, flight: _Flight[T], task: asyncio.Task[T]) -> None:
        """A task ended: forget it; its error, if any, went to the callers that waited for it."""
        if self._flights.get(key) is flight:
            del self._flights[key]
        if not task.cancelled():
            task.exception()  # retrieved: asyncio would log it otherwise when nobody was left to wait
