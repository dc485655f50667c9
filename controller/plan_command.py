"""`nodeipam plan`: reads what a takeover report needs from the cluster, and renders `plan.make_plan`'s answer.

Read-only: Nodes and NodeCIDRPools (required), then the signs of another
allocator (controller manager Pods and Deployments, Events of
kube-controller-manager's cidrAllocator) and the data plane's settings
(flannel's and kube-proxy's ConfigMaps, Cilium's and Calico's DaemonSets).
What the user may not read of the latter is named in the report, not fatal.

A required read that fails is a cluster_reads.ClusterError, as in the other read commands: cli.py prints
it and exits 3 (0 safe to switch, 1 conflicts, 2 bad flags).
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import json
from collections.abc import Sequence
from typing import Any

import netaddr
import yaml

from controller.cluster_reads import ClusterError, explain_api_error
from controller.config import FamilyRange
from controller.credentials import Credentials
from controller.kube import POOLS_PATH, ApiError, KubeClient
from controller.model import NodeInfo, parse_api_time
from controller.plan import ClusterFacts, EventFact, Finding, Plan, Workload, Write, make_plan, writes_between

FLANNEL_CONFIGMAPS = (("kube-flannel", "kube-flannel-cfg"), ("kube-system", "kube-flannel-cfg"))
KUBE_PROXY_CONFIGMAP = ("kube-system", "kube-proxy")


async def compute(
    ranges: Sequence[FamilyRange],
    service_cidrs: Sequence[netaddr.IPNetwork],
    credentials: Credentials,
    watch: float = 0.0,
    watch_text: str = "",
) -> Plan:
    """Read the cluster once and make the plan; with `watch` seconds, list the Nodes again after that long, and
    name every podCIDR written meanwhile (the plan is of the first read)."""
    async with KubeClient(credentials) as kube:
        nodes, pools, facts = await read_cluster(kube, credentials)
        if watch > 0:
            await asyncio.sleep(watch)
            writes = await _writes_since(kube, credentials, nodes)
            facts = dataclasses.replace(facts, watched=watch_text, writes=tuple(writes))
    return make_plan(nodes, ranges, service_cidrs, pools, facts)


async def _writes_since(kube: KubeClient, credentials: Credentials, before: Sequence[NodeInfo]) -> list[Write]:
    """The podCIDRs set since `before` was listed, each with the field manager that set them."""
    try:
        after, _ = await kube.list_nodes()
    except ApiError as error:
        raise ClusterError(explain_api_error(error, credentials, "list on nodes (cluster-wide)")) from None
    writes = []
    for node in writes_between(before, after):
        try:
            body = await kube.request("GET", f"/api/v1/nodes/{node.name}")
        except ApiError as error:
            if error.status != 404:
                raise ClusterError(explain_api_error(error, credentials, "get on nodes")) from None
            body = {}
        writes.append(Write(node.name, node.pod_cidrs, pod_cidr_manager(body)))
    return writes


def pod_cidr_manager(node: Any) -> str:
    """The field manager that last wrote spec.podCIDR(s), from the Node's managedFields ("" if none is recorded)."""
    entries = ((node or {}).get("metadata") or {}).get("managedFields") or []
    owners = [
        entry
        for entry in entries
        if {"f:podCIDR", "f:podCIDRs"} & set(((entry.get("fieldsV1") or {}).get("f:spec") or {}).keys())
    ]
    latest = max(owners, key=lambda entry: str(entry.get("time") or ""), default=None)
    return str(latest.get("manager") or "") if latest else ""


async def read_cluster(kube: KubeClient, credentials: Credentials) -> tuple[list[NodeInfo], list[dict[str, Any]], ClusterFacts]:
    """Nodes (in LIST order), pools, and the facts; ClusterError when a required read fails."""
    try:
        nodes, _ = await kube.list_nodes()
    except ApiError as error:
        raise ClusterError(explain_api_error(error, credentials, "list on nodes (cluster-wide)")) from None
    reader = _Reader(kube, credentials)
    pools = await reader.get(POOLS_PATH, "nodecidrpools.nodeipam.io")
    workloads = [
        *_pod_workloads(await reader.get("/api/v1/namespaces/kube-system/pods", "pods in kube-system")),
        *_deployment_workloads(await reader.get("/apis/apps/v1/deployments", "deployments.apps (cluster-wide)")),
    ]
    events = await reader.get("/api/v1/events", "events (cluster-wide)", {"fieldSelector": "source=cidrAllocator"})
    flannel = None
    for namespace, name in FLANNEL_CONFIGMAPS:
        found = await reader.get(f"/api/v1/namespaces/{namespace}/configmaps/{name}", f"configmap {namespace}/{name}")
        if found is not None and "net-conf.json" in (found.get("data") or {}):
            flannel = (f"ConfigMap {namespace}/{name}", str(found["data"]["net-conf.json"]))
            break
    namespace, name = KUBE_PROXY_CONFIGMAP
    proxy = await reader.get(f"/api/v1/namespaces/{namespace}/configmaps/{name}", f"configmap {namespace}/{name}")
    daemonsets = []
    for plugin in ("cilium", "calico-node"):
        listed = await reader.get(
            "/apis/apps/v1/daemonsets", "daemonsets.apps (cluster-wide)", {"fieldSelector": f"metadata.name={plugin}"}
        )
        daemonsets += [f"{item['metadata']['namespace']}/{item['metadata']['name']}" for item in _items(listed)]
    facts = ClusterFacts(
        now=datetime.datetime.now(datetime.UTC),
        workloads=tuple(workloads),
        events=tuple(_event(item) for item in _items(events)),
        flannel=flannel,
        kube_proxy=_kube_proxy(proxy),
        daemonsets=tuple(daemonsets),
        not_read=tuple(dict.fromkeys(reader.forbidden)),
    )
    return nodes, _items(pools), facts


class _Reader:
    """GETs whose absence (404) means nothing to check, and whose refusal (403) is noted, not fatal."""

    def __init__(self, kube: KubeClient, credentials: Credentials) -> None:
        self._kube = kube
        self._credentials = credentials
        self.forbidden: list[str] = []

    async def get(self, path: str, what: str, params: dict[str, str] | None = None) -> Any:
        try:
            return await self._kube.request("GET", path, params=params)
        except ApiError as error:
            if error.status == 404:
                return None
            if error.status == 403:
                self.forbidden.append(what)
                return None
            raise ClusterError(explain_api_error(error, self._credentials, f"get on {what}")) from None


def _items(listed: Any) -> list[dict[str, Any]]:
    return list((listed or {}).get("items") or [])


def _argvs(pod_spec: Any) -> list[tuple[str, ...]]:
    containers = (pod_spec or {}).get("containers") or []
    return [tuple(str(arg) for arg in [*(c.get("command") or []), *(c.get("args") or [])]) for c in containers]


def _pod_workloads(listed: Any) -> list[Workload]:
    """kube-system's controller manager Pods: a static Pod is named kube-controller-manager-<node>."""
    found = []
    for pod in _items(listed):
        metadata = pod.get("metadata") or {}
        name = str(metadata.get("name", ""))
        labels = metadata.get("labels") or {}
        if labels.get("component") != "kube-controller-manager" and not name.startswith("kube-controller-manager"):
            continue
        found += [Workload("Pod", "kube-system", name, argv) for argv in _argvs(pod.get("spec"))]
    return found


def _deployment_workloads(listed: Any) -> list[Workload]:
    found = []
    for deployment in _items(listed):
        metadata = deployment.get("metadata") or {}
        template = ((deployment.get("spec") or {}).get("template") or {}).get("spec")
        found += [
            Workload("Deployment", str(metadata.get("namespace", "")), str(metadata.get("name", "")), argv)
            for argv in _argvs(template)
        ]
    return found


def _event(item: dict[str, Any]) -> EventFact:
    source = (item.get("source") or {}).get("component") or item.get("reportingComponent") or ""
    involved = item.get("involvedObject") or {}
    created = (item.get("metadata") or {}).get("creationTimestamp")
    when = parse_api_time(item.get("lastTimestamp")) or parse_api_time(item.get("eventTime")) or parse_api_time(created)
    return EventFact(
        reason=str(item.get("reason", "")),
        source=str(source),
        involved=f"{involved.get('kind', '')}/{involved.get('name', '')}",
        message=str(item.get("message", "")),
        when=when,
    )


def _kube_proxy(configmap: Any) -> tuple[str, str] | None:
    """kube-proxy's clusterCIDR from its config.conf (a KubeProxyConfiguration in YAML); None without one."""
    text = ((configmap or {}).get("data") or {}).get("config.conf")
    if not text:
        return None
    where = f"ConfigMap {KUBE_PROXY_CONFIGMAP[0]}/{KUBE_PROXY_CONFIGMAP[1]}"
    try:
        body = yaml.safe_load(text)
    except yaml.YAMLError:
        return None
    if not isinstance(body, dict):
        return None
    return where, str(body.get("clusterCIDR") or "")


# -- output ---------------------------------------------------------------------------------------


def render(plan: Plan, output: str) -> str:
    if output == "json":
        return json.dumps(plan.as_dict(), indent=2)
    if output == "yaml":
        return yaml.safe_dump(plan.as_dict(), sort_keys=False).rstrip()
    return format_table(plan)


def _columns(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in [header, *rows]]


def format_table(plan: Plan) -> str:
    """Nodes, then the headroom per pool CIDR, then every conflict and warning, then the verdict."""
    lines = _columns(
        ("NODE", "PODCIDRS", "HELD IN", "WOULD GET", "CONFLICTS"),
        [
            (
                node.name,
                ",".join(node.pod_cidrs) or "-",
                ",".join(node.held_in) or "-",
                ",".join(node.would_get) or "-",
                ",".join(node.findings) or "-",
            )
            for node in plan.nodes
        ],
    )
    lines.append("")
    lines += _columns(
        ("POOL", "CIDR", "MASK", "CAPACITY", "IN USE", "TO ASSIGN", "FREE AFTER"),
        [
            (
                row.pool,
                row.cidr + (" (draining)" if row.draining else ""),
                f"/{row.node_mask_size}",
                str(row.capacity),
                str(row.in_use),
                str(row.to_assign),
                str(row.free_after),
            )
            for row in plan.headroom
        ],
    )
    for title, findings in (("CONFLICTS", plan.conflicts), ("WARNINGS", plan.warnings)):
        if findings:
            lines += ["", f"{title} ({len(findings)})", *(_finding(finding) for finding in findings)]
    lines.append("")
    lines.append("safe to switch" if plan.safe else f"not safe to switch: {len(plan.conflicts)} conflict(s)")
    return "\n".join(lines)


def _finding(finding: Finding) -> str:
    return f"  {finding.kind}: {finding.subject}: {finding.message}"
