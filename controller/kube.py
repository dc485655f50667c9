"""The thin I/O layer: every request of the controller to the API goes through it (kopf's watch aside).

It speaks raw JSON over aiohttp (the HTTP library kopf itself uses): model
objects of the official client halve the throughput of a Python controller,
and the event loop, not the API server, is the limit. Where the API server
is and how to authenticate come in as `Credentials` (credentials.py).
Here are the typed verbs (Nodes, NodeCIDRPools, Events, Leases); how a
request is sent (retries, the rate limit, the fence) is kubehttp.py's
`ApiTransport`, and what the answers' bytes mean is kubewire.py.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import aclosing
from typing import Any

import netaddr

from controller.credentials import Credentials
from controller.kubehttp import RETRY_AFTER_CAP as RETRY_AFTER_CAP
from controller.kubehttp import TRANSIENT_ATTEMPTS, ApiTransport
from controller.kubewire import ApiError as ApiError
from controller.kubewire import FencedError as FencedError
from controller.kubewire import decode_node, decode_node_list, decode_watch_event, peek_continue
from controller.kubewire import node_of as node_of
from controller.model import NodeInfo, api_timestamp

logger = logging.getLogger("nodeipam.kube")

EVENT_NAMESPACE = "default"  # where events about cluster-scoped Nodes go
COMPONENT = "nodeipam"
LIST_PAGE_SIZE = 500
WATCH_LIST_SINCE = (1, 34)  # the first Kubernetes version whose API server streams a watch's initial listing by default

#: The NodeCIDRPool collection (cluster-scoped CRD in the chart's crds/).
POOLS_API_VERSION = "nodeipam.io/v1alpha1"
POOLS_PATH = f"/apis/{POOLS_API_VERSION}/nodecidrpools"


class KubeClient:
    """Nodes, NodeCIDRPools, Events and Leases, each request sent by one `ApiTransport`."""

    def __init__(
        self,
        credentials: Credentials,
        qps: float = 0.0,
        burst: int = 0,
        max_in_flight: int = 64,
        *,
        transient_attempts: int = TRANSIENT_ATTEMPTS,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        may_write: Callable[[], bool] | None = None,
    ) -> None:
        """`transient_attempts`: tries per request before a transient failure is raised (1: no retries).

        `sleep` waits between those tries; tests pass one that only records.
        `may_write`: the leadership fence, asked before every attempt of every
        write (retries included); once it says no, nothing more is sent.
        """
        self.credentials = credentials
        self._transport = ApiTransport(
            credentials, qps, burst, max_in_flight, transient_attempts=transient_attempts, sleep=sleep, may_write=may_write
        )

    async def __aenter__(self) -> KubeClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._transport.close()

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        content_type: str = "application/json",
        params: Mapping[str, str] | None = None,
        decode: bool = True,
    ) -> Any:
        """One API call, its response parsed as JSON (`decode=False`: not parsed, None); transient failures are tried
        again (see `ApiTransport.request_bytes`), others raise ApiError."""
        payload = await self._transport.request_bytes(method, path, body=body, content_type=content_type, params=params)
        return json.loads(payload) if payload and decode else None

    # -- Nodes ---------------------------------------------------------------

    async def list_nodes(self, page_size: int = LIST_PAGE_SIZE, from_cache: bool = False) -> tuple[list[NodeInfo], str]:
        """All Nodes, in pages, keeping only what the allocator needs; and the list's resourceVersion.

        `from_cache`: first a one-item read for the current resourceVersion,
        then the LIST with `resourceVersionMatch=NotOlderThan` it: the API
        server answers from its watch cache instead of etcd, and the answer
        still shows every change made before the call (a deletion missed in a
        watch gap included), as a quorum read would.

        Pages are decoded by msgspec into the few fields read, skipping the
        rest of each ~10 KB Node: on 20,000 realistic Nodes the stdlib's
        json.loads took 1-5 s (object churn and GC), this takes ~0.1 s. The
        next page is requested before this one is decoded (its continue token
        sits in the first bytes), so serving and decoding overlap.
        """
        nodes: list[NodeInfo] = []
        version = await self.nodes_version() if from_cache else ""
        fetch = self._fetch_page(None, page_size, version)
        while True:
            raw = await fetch
            peeked = peek_continue(raw)
            if peeked:
                fetch = self._fetch_page(peeked, page_size)
            page = decode_node_list(raw)
            nodes.extend(item.info() for item in page.items)
            token = page.metadata.continue_ or None
            if token != peeked:  # the peek misread the page: trust the parsed token
                if peeked:
                    fetch.cancel()
                if token:
                    fetch = self._fetch_page(token, page_size)
            if not token:
                return nodes, page.metadata.resourceVersion

    async def streams_initial_events(self) -> bool:
        """Whether the API server streams a watch's initial listing (`sendInitialEvents`; WatchList, on since 1.34).

        Asked of `/version`; an answer that cannot be read counts as no, which keeps the paged LIST.
        """
        try:
            version = await self.request("GET", "/version")
            major, minor = int(str(version.get("major", "0"))), int(re.sub(r"\D.*", "", str(version.get("minor", "0"))) or 0)
        except (ApiError, ValueError) as error:
            logger.info("the API server's version is unknown (%s): the watch starts with a paged LIST", error)
            return False
        return (major, minor) >= WATCH_LIST_SINCE

    async def nodes_version(self) -> str:
        """The Node collection's current resourceVersion, from a quorum read of one item."""
        listed = await self.request("GET", "/api/v1/nodes", params={"limit": "1"})
        return str((listed.get("metadata") or {}).get("resourceVersion", ""))

    def _fetch_page(self, token: str | None, page_size: int, not_older_than: str = "") -> asyncio.Future[bytes]:
        params = {"limit": str(page_size)}
        if token:
            params["continue"] = token
        elif not_older_than:
            params["resourceVersion"] = not_older_than
            params["resourceVersionMatch"] = "NotOlderThan"
        return asyncio.ensure_future(self._transport.request_bytes("GET", "/api/v1/nodes", params=params))

    async def watch_nodes(self, resource_version: str) -> AsyncIterator[tuple[str, NodeInfo]]:
        """(event type, Node) from a watch starting at `resource_version`; ends when the server ends it."""
        params = {"watch": "1", "resourceVersion": resource_version, "allowWatchBookmarks": "true"}
        async with aclosing(self._transport.watch_lines("/api/v1/nodes", params, "nodes")) as lines:
            async for line in lines:
                event = decode_watch_event(line)
                if event.type in ("ADDED", "MODIFIED", "DELETED"):
                    yield event.type, event.object.info()
                elif event.type == "ERROR":
                    return  # e.g. 410 Gone: the resync covers what follows

    async def get_node(self, name: str) -> NodeInfo | None:
        try:
            return decode_node(await self._transport.request_bytes("GET", f"/api/v1/nodes/{name}")).info()
        except ApiError as error:
            if error.status == 404:
                return None
            raise

    async def list_pools(self) -> list[dict[str, Any]] | None:
        """Every NodeCIDRPool as the API returns it; None when the CRD is not installed (404)."""
        try:
            listed = await self.request("GET", POOLS_PATH)
        except ApiError as error:
            if error.status == 404:
                return None
            raise
        return list(listed.get("items") or [])

    async def patch_pod_cidrs(self, node: NodeInfo, cidrs: Sequence[netaddr.IPNetwork]) -> None:
        """Set spec.podCIDR(s) in one merge patch, only on the Node with this UID.

        The answer is not decoded: the caller needs only to know the patch applied (its watch event follows).
        """
        values = [str(cidr) for cidr in cidrs]
        patch = {"metadata": {"uid": node.uid}, "spec": {"podCIDR": values[0], "podCIDRs": values}}
        await self._transport.request_bytes(
            "PATCH", f"/api/v1/nodes/{node.name}", body=patch, content_type="application/merge-patch+json"
        )

    # -- Events --------------------------------------------------------------

    async def post_node_event(self, node: NodeInfo, event_type: str, reason: str, message: str) -> bool:
        """A core/v1 Event about a Node, where `kubectl describe node` finds it. Never raises."""
        involved = {"apiVersion": "v1", "kind": "Node", "name": node.name, "uid": node.uid or node.name}
        return await self._post_event(involved, event_type, reason, message)

    async def post_pool_event(self, name: str, uid: str, event_type: str, reason: str, message: str) -> bool:
        """A core/v1 Event about a NodeCIDRPool, where `kubectl describe nodecidrpool` finds it. Never raises."""
        involved = {"apiVersion": POOLS_API_VERSION, "kind": "NodeCIDRPool", "name": name, "uid": uid or name}
        return await self._post_event(involved, event_type, reason, message)

    async def _post_event(self, involved: Mapping[str, str], event_type: str, reason: str, message: str) -> bool:
        now = api_timestamp()
        event = {
            "metadata": {"name": f"{involved['name']}.{uuid.uuid4().hex[:16]}", "namespace": EVENT_NAMESPACE},
            "involvedObject": dict(involved),
            "reason": reason,
            "message": message[:1024],
            "type": event_type,
            "source": {"component": COMPONENT},
            "reportingComponent": COMPONENT,
            "reportingInstance": os.environ.get("HOSTNAME", COMPONENT),
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            await self.request("POST", f"/api/v1/namespaces/{EVENT_NAMESPACE}/events", body=event)
        except ApiError as error:
            kind = involved["kind"].lower()
            logger.warning("could not post %s event %s for %s %s: %s", event_type, reason, kind, involved["name"], error)
            return False
        return True

    # -- NodeCIDRPools ----------------------------------------------------------

    async def patch_pool_status(self, name: str, status: Mapping[str, Any]) -> None:
        """Merge-patch a NodeCIDRPool's status subresource."""
        await self.request(
            "PATCH",
            f"{POOLS_PATH}/{name}/status",
            body={"status": status},
            content_type="application/merge-patch+json",
            decode=False,
        )

    async def set_pool_finalizers(self, name: str, finalizers: Sequence[str], resource_version: str) -> dict[str, Any]:
        """Set a NodeCIDRPool's finalizers, only if it is still at `resource_version` (else 409)."""
        patch = {"metadata": {"finalizers": list(finalizers), "resourceVersion": resource_version}}
        patched: dict[str, Any] = await self.request(
            "PATCH", f"{POOLS_PATH}/{name}", body=patch, content_type="application/merge-patch+json"
        )
        return patched

    # -- Leases --------------------------------------------------------------

    async def get_lease(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            lease: dict[str, Any] = await self.request(
                "GET", f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/{name}"
            )
            return lease
        except ApiError as error:
            if error.status == 404:
                return None
            raise

    async def create_lease(self, namespace: str, lease: Mapping[str, Any]) -> dict[str, Any]:
        created: dict[str, Any] = await self.request(
            "POST", f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases", body=lease
        )
        return created

    async def replace_lease(self, namespace: str, name: str, lease: Mapping[str, Any]) -> dict[str, Any]:
        replaced: dict[str, Any] = await self.request(
            "PUT", f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/{name}", body=lease
        )
        return replaced
