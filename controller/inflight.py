"""The podCIDR patches a leader may have in flight, recorded in its Lease before they are sent.

A patch can spend seconds on its way to the API server, long enough for its
sender to lose the lease and for the next leader to list the Nodes before it
lands. Had the next leader not known of it, it could hand the same range to
another Node: a duplicate. So a leader records every reservation it may have
sent in an annotation of the Lease it holds, and sends a patch only once that
record has been applied. A write to the Lease names the resourceVersion of the
holder's own last write (`LeaderElector.write_annotation`): once another
process took the Lease, no record of the old holder can land, and so no new
patch of its leaves. The next leader reads the record as it takes the Lease
and keeps those ranges for those Nodes (`NodeAllocations.adopt`): it patches
the same ranges itself, so whichever patch lands first, the other changes
nothing.

A record lists every open reservation when it is written: ranges of
reservations settled since then drop out with the next one. A stale entry
only makes the next leader patch that Node with that range, or find it held,
gone or taken by another Node, and drop it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from collections.abc import Awaitable, Callable, Iterable

logger = logging.getLogger("nodeipam.inflight")

#: The Lease annotation holding the record.
ANNOTATION = "nodeipam.io/pod-cidr-patches-in-flight"
#: Kubernetes refuses an object whose annotations exceed 256 KiB in all. Past this size no new patch is sent
#: until reservations settle (each entry is ~100 bytes: about 2,000 patches in flight, far more than the workers).
MAX_RECORD_BYTES = 200 * 1024


@dataclasses.dataclass(frozen=True)
class InFlight:
    """One Node incarnation and the podCIDRs a patch may set on it."""

    name: str
    uid: str
    cidrs: tuple[str, ...]


def encode(entries: Iterable[InFlight]) -> str:
    """The record as the annotation holds it: a JSON list of [name, uid, [cidr, ...]], sorted by name."""
    rows = [[entry.name, entry.uid, list(entry.cidrs)] for entry in sorted(entries, key=lambda entry: entry.name)]
    return json.dumps(rows, separators=(",", ":"))


def decode(text: str) -> tuple[list[InFlight], str]:
    """The entries of a record, and what was wrong with it ("" if nothing). Never raises: it comes from the cluster."""
    if not text:
        return [], ""
    try:
        rows = json.loads(text)
    except ValueError as error:
        return [], f"not JSON ({error})"
    if not isinstance(rows, list):
        return [], f"not a list but {type(rows).__name__}"
    entries, skipped = [], 0
    for row in rows:
        valid = (
            isinstance(row, list)
            and len(row) == 3
            and all(isinstance(value, str) for value in row[:2])
            and isinstance(row[2], list)
            and all(isinstance(cidr, str) for cidr in row[2])
        )
        if valid:
            entries.append(InFlight(row[0], row[1], tuple(row[2])))
        else:
            skipped += 1
    return entries, f"{skipped} malformed entries skipped" if skipped else ""


class InFlightLog:
    """Writes the record to the Lease before patches are sent; the announcements of many patches share one write.

    `snapshot` lists the open reservations when a write starts; `write`
    stores a record under ANNOTATION (True once applied, only while leading);
    `leading` says whether this process leads now.
    """

    def __init__(
        self,
        write: Callable[[str, str], Awaitable[bool]],
        snapshot: Callable[[], Iterable[InFlight]],
        leading: Callable[[], bool],
    ) -> None:
        self._write = write
        self._snapshot = snapshot
        self._leading = leading
        self._waiting: list[asyncio.Future[bool]] = []
        self._writer: asyncio.Task[None] | None = None
        self.writes = 0  # records written, for tests and logs

    def may_write(self) -> bool:
        return self._leading()

    async def announce(self) -> bool:
        """Whether the reservations open now are recorded in the Lease: only then may their patches be sent.

        Waits for a write that starts after this call (one in progress may
        have missed the caller's reservation); False when that write failed.
        """
        answer: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._waiting.append(answer)
        if self._writer is None or self._writer.done():
            self._writer = asyncio.ensure_future(self._write_while_asked())
        return await answer

    async def close(self) -> None:
        """Stop the write in progress, if any (at shutdown)."""
        if self._writer is not None and not self._writer.done():
            self._writer.cancel()
            await asyncio.gather(self._writer, return_exceptions=True)

    async def _write_while_asked(self) -> None:
        while self._waiting:
            asked, self._waiting = self._waiting, []
            record = encode(self._snapshot())
            recorded = False
            if len(record.encode()) > MAX_RECORD_BYTES:
                logger.warning("%d bytes of podCIDR patches in flight: no new patch until some settle", len(record))
            else:
                try:
                    recorded = await self._write(ANNOTATION, record)
                except Exception:  # contained: the patches it would allow are simply not sent
                    logger.exception("recording the podCIDR patches in flight failed")
            self.writes += recorded
            for answer in asked:
                if not answer.done():
                    answer.set_result(recorded)
