"""The thin I/O layer: the only module besides operator.py that talks to the API.

It speaks raw JSON over aiohttp (the HTTP library kopf itself uses): model
objects of the official client halve the throughput of a Python controller,
and the event loop, not the API server, is the limit. The official client is
used only to load credentials, exactly as kubectl would find them.
Retries of transient failures and the client-side rate limit live here.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import json
import logging
import os
import re
import ssl
import time
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import aiohttp
import msgspec
import netaddr

from controller.nodes import NodeInfo

logger = logging.getLogger("nodeipam.kube")

IN_CLUSTER_TOKEN_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/token"
EVENT_NAMESPACE = "default"  # where events about cluster-scoped Nodes go
COMPONENT = "nodeipam"
LIST_PAGE_SIZE = 500
TRANSIENT_STATUSES = frozenset({429, 500, 502, 503, 504})
TRANSIENT_ATTEMPTS = 4
TRANSIENT_BACKOFF = 0.2
WATCH_IDLE_TIMEOUT = 90.0  # seconds without a byte (bookmarks come every minute)


class _NodeMetadata(msgspec.Struct, frozen=True):
    name: str = ""
    uid: str = ""
    resourceVersion: str = ""  # camelCase: the API's field names


class _NodeSpec(msgspec.Struct, frozen=True):
    podCIDR: str = ""
    podCIDRs: tuple[str, ...] = ()


class _Node(msgspec.Struct, frozen=True):
    """The only fields of a Node this controller reads; msgspec skips the rest (~10 KB) unparsed."""

    metadata: _NodeMetadata = _NodeMetadata()
    spec: _NodeSpec = _NodeSpec()

    def info(self) -> NodeInfo:
        spec = self.spec
        return NodeInfo(
            name=self.metadata.name,
            uid=self.metadata.uid,
            pod_cidrs=spec.podCIDRs or ((spec.podCIDR,) if spec.podCIDR else ()),
            resource_version=self.metadata.resourceVersion,
            pod_cidr=spec.podCIDR,
        )


class _ListMetadata(msgspec.Struct, frozen=True):
    resourceVersion: str = ""
    continue_: str = msgspec.field(default="", name="continue")


class _NodeList(msgspec.Struct, frozen=True):
    metadata: _ListMetadata = _ListMetadata()
    items: tuple[_Node, ...] = ()


class _WatchEvent(msgspec.Struct, frozen=True):
    type: str = ""
    object: _Node = _Node()


_decode_node = msgspec.json.Decoder(_Node).decode
_decode_node_list = msgspec.json.Decoder(_NodeList).decode
_decode_watch_event = msgspec.json.Decoder(_WatchEvent).decode


class ApiError(Exception):
    """A request the API server answered with an error status (or could not answer)."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message


@dataclasses.dataclass(frozen=True)
class Credentials:
    """Where the API server is and how to authenticate, loaded once at start-up."""

    server: str
    token: str | None = None
    token_file: str | None = None
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    insecure: bool = False

    @classmethod
    def load(cls, kubeconfig: str | None = None, master: str | None = None) -> Credentials:
        """`--kubeconfig`, else in-cluster, else $KUBECONFIG / ~/.kube/config (like kube-controller-manager)."""
        from kubernetes import client, config  # the official client only loads credentials

        configuration = client.Configuration()
        token_file = None
        if kubeconfig:
            config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
        else:
            try:
                config.load_incluster_config(client_configuration=configuration)
                token_file = IN_CLUSTER_TOKEN_FILE
            except config.ConfigException:
                config.load_kube_config(client_configuration=configuration)
        api_key = configuration.api_key or {}
        authorization = str(api_key.get("BearerToken") or api_key.get("authorization") or "")
        token = authorization.split(" ", 1)[1] if authorization.lower().startswith("bearer ") else authorization or None
        server = master or configuration.host
        if "://" not in server:
            server = "https://" + server
        return cls(
            server=server.rstrip("/"),
            token=token,
            token_file=token_file,
            ca_file=configuration.ssl_ca_cert,
            cert_file=configuration.cert_file,
            key_file=configuration.key_file,
            insecure=not configuration.verify_ssl,
        )

    def current_token(self) -> str | None:
        """The bearer token; in-cluster tokens are rotated on disk, so re-read them."""
        if self.token_file:
            try:
                with open(self.token_file) as handle:
                    return handle.read().strip()
            except OSError:
                return self.token
        return self.token

    def ssl_context(self) -> ssl.SSLContext | bool:
        if not self.server.startswith("https"):
            return False
        if self.insecure:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        else:
            context = ssl.create_default_context(cafile=self.ca_file)
        if self.cert_file:
            context.load_cert_chain(self.cert_file, self.key_file)
        return context


class RateLimiter:
    """A token bucket: `qps` requests per second on average, `burst` at once. qps <= 0: unlimited."""

    def __init__(self, qps: float, burst: int) -> None:
        self.qps = qps
        self.burst = max(burst, 1)
        self._tokens = float(self.burst)
        self._updated = time.monotonic()
        self._lock = asyncio.Lock()

    async def acquire(self) -> None:
        if self.qps <= 0:
            return
        async with self._lock:
            while True:
                now = time.monotonic()
                self._tokens = min(self.burst, self._tokens + (now - self._updated) * self.qps)
                self._updated = now
                if self._tokens >= 1:
                    self._tokens -= 1
                    return
                await asyncio.sleep((1 - self._tokens) / self.qps)


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _now_micro() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class KubeClient:
    """Nodes, Events and Leases over one pooled aiohttp session."""

    def __init__(self, credentials: Credentials, qps: float = 0.0, burst: int = 0, max_in_flight: int = 64) -> None:
        self.credentials = credentials
        self._limiter = RateLimiter(qps, burst)
        self._in_flight = asyncio.Semaphore(max_in_flight)
        self._max_in_flight = max_in_flight
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> KubeClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=self._max_in_flight, ssl=self.credentials.ssl_context())
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=60, connect=10),
                json_serialize=json.dumps,
            )
        return self._session

    def _headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        token = self.credentials.current_token()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return headers

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
        """One API call, its response parsed as JSON (`decode=False`: not parsed, None)."""
        payload = await self.request_bytes(method, path, body=body, content_type=content_type, params=params)
        return json.loads(payload) if payload and decode else None

    async def request_bytes(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        content_type: str = "application/json",
        params: Mapping[str, str] | None = None,
    ) -> bytes:
        """One API call with retries of transient failures; raises ApiError otherwise."""
        headers = self._headers()
        data = None
        if body is not None:
            headers["Content-Type"] = content_type
            data = json.dumps(body)
        url = self.credentials.server + path
        for attempt in range(1, TRANSIENT_ATTEMPTS + 1):
            await self._limiter.acquire()
            try:
                session = self._get_session()
                async with self._in_flight, session.request(method, url, data=data, headers=headers, params=params) as response:
                    payload = await response.read()
                    status = response.status
            except (TimeoutError, aiohttp.ClientError, ConnectionError) as error:
                if attempt == TRANSIENT_ATTEMPTS:
                    raise ApiError(0, "ConnectionError", f"{method} {path}: {error!r}") from error
                await asyncio.sleep(TRANSIENT_BACKOFF * 2 ** (attempt - 1))
                continue
            if status < 400:
                return payload
            if status in TRANSIENT_STATUSES and attempt < TRANSIENT_ATTEMPTS:
                await asyncio.sleep(TRANSIENT_BACKOFF * 2 ** (attempt - 1))
                continue
            raise _api_error(status, payload)
        raise AssertionError("unreachable")

    # -- Nodes ---------------------------------------------------------------

    async def list_nodes(self, page_size: int = LIST_PAGE_SIZE) -> tuple[list[NodeInfo], str]:
        """All Nodes, in pages, keeping only what the allocator needs; and the list's resourceVersion.

        Pages are decoded by msgspec into the few fields read, skipping the
        rest of each ~10 KB Node: on 20,000 realistic Nodes the stdlib's
        json.loads took 1-5 s (object churn and GC), this takes ~0.1 s. The
        next page is requested before this one is decoded (its continue token
        sits in the first bytes), so serving and decoding overlap.
        """
        nodes: list[NodeInfo] = []
        fetch = self._fetch_page(None, page_size)
        while True:
            raw = await fetch
            peeked = _peek_continue(raw)
            if peeked:
                fetch = self._fetch_page(peeked, page_size)
            page = _decode_node_list(raw)
            nodes.extend(item.info() for item in page.items)
            token = page.metadata.continue_ or None
            if token != peeked:  # the peek misread the page: trust the parsed token
                if peeked:
                    fetch.cancel()
                if token:
                    fetch = self._fetch_page(token, page_size)
            if not token:
                return nodes, page.metadata.resourceVersion

    def _fetch_page(self, token: str | None, page_size: int) -> asyncio.Future[bytes]:
        params = {"limit": str(page_size)}
        if token:
            params["continue"] = token
        return asyncio.ensure_future(self.request_bytes("GET", "/api/v1/nodes", params=params))

    async def watch_nodes(self, resource_version: str) -> AsyncIterator[tuple[str, NodeInfo]]:
        """(event type, Node) from a watch starting at `resource_version`; ends when the server ends it."""
        params = {"watch": "1", "resourceVersion": resource_version, "allowWatchBookmarks": "true"}
        headers = self._headers()
        timeout = aiohttp.ClientTimeout(total=None, sock_read=WATCH_IDLE_TIMEOUT)
        url = self.credentials.server + "/api/v1/nodes"
        try:
            async with self._get_session().get(url, params=params, headers=headers, timeout=timeout) as response:
                if response.status >= 400:
                    raise _api_error(response.status, await response.read())
                pending = b""
                async for chunk in response.content.iter_any():  # lines can exceed aiohttp's line limit
                    pending += chunk
                    *lines, pending = pending.split(b"\n")
                    for line in lines:
                        if not line.strip():
                            continue
                        event = _decode_watch_event(line)
                        if event.type in ("ADDED", "MODIFIED", "DELETED"):
                            yield event.type, event.object.info()
                        elif event.type == "ERROR":
                            return  # e.g. 410 Gone: the resync covers what follows
        except (aiohttp.ClientError, ConnectionError) as error:
            raise ApiError(0, "ConnectionError", f"watch of nodes: {error!r}") from error

    async def get_node(self, name: str) -> NodeInfo | None:
        try:
            return _decode_node(await self.request_bytes("GET", f"/api/v1/nodes/{name}")).info()
        except ApiError as error:
            if error.status == 404:
                return None
            raise

    async def patch_pod_cidrs(self, node: NodeInfo, cidrs: Sequence[netaddr.IPNetwork]) -> NodeInfo:
        """Set spec.podCIDR(s) in one merge patch, only on the Node with this UID."""
        values = [str(cidr) for cidr in cidrs]
        patch = {"metadata": {"uid": node.uid}, "spec": {"podCIDR": values[0], "podCIDRs": values}}
        body = await self.request("PATCH", f"/api/v1/nodes/{node.name}", body=patch, content_type="application/merge-patch+json")
        return NodeInfo.from_body(body)

    # -- Events --------------------------------------------------------------

    async def post_node_event(self, node: NodeInfo, event_type: str, reason: str, message: str) -> bool:
        """A core/v1 Event about a Node, where `kubectl describe node` finds it. Never raises."""
        now = _now()
        event = {
            "metadata": {"name": f"{node.name}.{uuid.uuid4().hex[:16]}", "namespace": EVENT_NAMESPACE},
            "involvedObject": {"apiVersion": "v1", "kind": "Node", "name": node.name, "uid": node.uid or node.name},
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
            logger.warning("could not post %s event %s for node %s: %s", event_type, reason, node.name, error)
            return False
        return True

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


def lease_time() -> str:
    """MicroTime as Leases want it."""
    return _now_micro()


def _api_error(status: int, payload: bytes) -> ApiError:
    try:
        status_body = json.loads(payload)
        return ApiError(status, str(status_body.get("reason", "")), str(status_body.get("message", "")))
    except (ValueError, AttributeError):
        return ApiError(status, "", payload[:500].decode(errors="replace"))


_CONTINUE = re.compile(rb'"continue":"([^"]+)"')
_PEEK_BYTES = 4096  # a List's metadata comes before its items


def _peek_continue(raw: bytes) -> str | None:
    """The continue token of a List response, read without parsing its items."""
    head = raw[:_PEEK_BYTES]
    items_at = head.find(b'"items"')
    match = _CONTINUE.search(head, 0, items_at if items_at >= 0 else len(head))
    return match.group(1).decode() if match else None
