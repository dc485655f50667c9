"""Every podCIDR write checked against the Nodes that hold ranges at that moment, from a watch of Nodes.

An audit of the end state cannot see a duplicate that was handed out and went
away again before the end (one of the two Nodes deleted, as happens all the
time when Node names are reused). `OverlapWatch` follows a watch of Nodes in a
thread of its own: the watch delivers every change in the order the API server
applied it, so the Nodes it keeps after each event are the cluster's Nodes at
that resourceVersion. Each time a Node shows new podCIDRs, they are compared
with every other live Node's; an overlap is recorded with the version it was
seen at. Used by the regression tests and the chaos suite:

    with OverlapWatch(core) as watch:
        ...  # churn
        watch.settle()
    watch.assert_no_overlap()
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import threading
from collections.abc import Iterator
from typing import Any

from kubernetes import client

from tests.conftest import wait_for

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
WATCH_SECONDS = 5  # each watch is ended by the API server after this long, and resumed from the last version
RESUME_DELAY = 0.2  # after a watch failed (the API server restarting, a connection cut)


@dataclasses.dataclass(frozen=True)
class Holder:
    """A live Node incarnation and the podCIDRs it shows."""

    name: str
    uid: str
    cidrs: tuple[str, ...]

    def networks(self) -> list[Network]:
        networks = []
        for cidr in self.cidrs:
            try:
                networks.append(ipaddress.ip_network(cidr, strict=False))
            except ValueError:
                continue  # not a CIDR: nothing it could overlap
        return networks


def _holder(body: dict[str, Any]) -> Holder:
    metadata, spec = body.get("metadata") or {}, body.get("spec") or {}
    cidrs = spec.get("podCIDRs") or ([spec["podCIDR"]] if spec.get("podCIDR") else [])
    return Holder(str(metadata.get("name", "")), str(metadata.get("uid", "")), tuple(cidrs))


class OverlapWatch:
    """A watch of Nodes that records every moment two live Nodes held overlapping podCIDRs."""

    def __init__(self, core: client.CoreV1Api) -> None:
        self.core = core
        self.overlaps: list[str] = []  # what was seen, oldest first
        self.writes = 0  # podCIDR writes checked: a Node created with podCIDRs, or its podCIDRs changed
        self.relists = 0  # the watch fell too far behind (410 Gone) and the Nodes were listed again
        self.interruptions = 0  # watches that failed and were resumed
        self.last_error = ""
        self._nodes: dict[str, Holder] = {}
        self._version = ""
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="overlap-watch", daemon=True)

    def __enter__(self) -> OverlapWatch:
        self._list()  # before returning: every write after this point is seen
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(WATCH_SECONDS + 15)

    # -- for the test -----------------------------------------------------------------------------------

    def settle(self, timeout: float = 60.0) -> None:
        """Wait until the watch has caught up: it shows the Nodes (names, UIDs, podCIDRs) a LIST shows now."""

        def caught_up() -> bool:
            live = {holder.name: holder for holder in map(_holder, self._list_bodies()[0])}
            with self._lock:
                return live == self._nodes

        try:
            wait_for(caught_up, timeout=timeout, what="the overlap watch to catch up with the Nodes")
        except AssertionError as error:
            raise AssertionError(f"{error}; the last watch error: {self.last_error or 'none'}") from None

    def assert_no_overlap(self) -> None:
        with self._lock:
            overlaps = list(self.overlaps)
        shown = "\n  ".join(overlaps[:20])
        assert not overlaps, f"{len(overlaps)} time(s) two live Nodes held overlapping podCIDRs:\n  {shown}"

    def summary(self) -> str:
        return f"writes-audited={self.writes} overlaps-seen={len(self.overlaps)} watch-relists={self.relists}"

    # -- the thread ---------------------------------------------------------------------------------------

    def _list_bodies(self) -> tuple[list[dict[str, Any]], str]:
        response = self.core.list_node(_preload_content=False)
        listing = json.loads(response.data)
        return listing.get("items") or [], str(listing["metadata"]["resourceVersion"])

    def _list(self) -> None:
        """Start over from a LIST: the Nodes as they are now, checked against one another."""
        bodies, version = self._list_bodies()
        with self._lock:
            self._nodes = {}
            self._version = version
            for holder in map(_holder, bodies):
                self._nodes[holder.name] = holder
                if holder.cidrs:
                    self._check(holder, f"the listing at resourceVersion {version}")

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._watch_once()
            except Exception as error:  # the API server restarting, a connection cut: resume from the last version seen
                self.interruptions += 1
                self.last_error = repr(error)
                self._stop.wait(RESUME_DELAY)

    def _watch_once(self) -> None:
        response = self.core.list_node(
            watch=True,
            resource_version=self._version,
            allow_watch_bookmarks=True,
            timeout_seconds=WATCH_SECONDS,
            _preload_content=False,
            _request_timeout=WATCH_SECONDS + 10,
        )
        try:
            for line in _lines(response):
                event = json.loads(line)
                kind, body = event["type"], event["object"]
                if kind == "ERROR":
                    if body.get("code") == 410:  # too far behind: what happened meanwhile is lost, start over
                        self.relists += 1
                        self._list()
                        return
                    raise RuntimeError(f"watch error: {body}")
                with self._lock:
                    self._version = str(body["metadata"]["resourceVersion"])
                    if kind != "BOOKMARK":
                        self._apply(kind, _holder(body))
                if self._stop.is_set():
                    return
        finally:
            response.release_conn()

    def _apply(self, kind: str, holder: Holder) -> None:
        before = self._nodes.pop(holder.name, None)
        if kind == "DELETED":
            return
        self._nodes[holder.name] = holder
        if holder.cidrs and (before is None or before.uid != holder.uid or before.cidrs != holder.cidrs):
            self.writes += 1
            self._check(holder, f"resourceVersion {self._version}")

    def _check(self, holder: Holder, when: str) -> None:
        """Record every live Node whose podCIDRs overlap the ones `holder` shows now."""
        for other in self._nodes.values():
            if other.name == holder.name:
                continue
            for mine in holder.networks():
                for theirs in other.networks():
                    if mine.version == theirs.version and mine.overlaps(theirs):  # type: ignore[arg-type]
                        self.overlaps.append(
                            f"{when}: node {holder.name} (UID {holder.uid}) shows {mine}, "
                            f"while node {other.name} (UID {other.uid}) holds {theirs}"
                        )


def _lines(response: Any) -> Iterator[bytes]:
    """The lines of a streamed answer (watch events), as they arrive."""
    pending = b""
    for chunk in response.stream(amt=None, decode_content=False):
        pending += chunk
        *complete, pending = pending.split(b"\n")
        yield from (line for line in complete if line.strip())
