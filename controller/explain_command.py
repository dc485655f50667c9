"""`nodeipam explain NODE`: reads the Nodes, the NodeCIDRPools and the controller's Lease, prints `explain.explain`'s answer.

Read-only. The Nodes are required; the pools are too, unless the user may
not list them (403: a note, and the flags' range alone is explained, as
`status` does); the Lease is optional: who leads, and the record of patches
in flight, are then missing, and a note on stderr says why.
"""

from __future__ import annotations

import asyncio
import datetime
import sys
from typing import Any

import netaddr

from controller import inflight
from controller.cluster_reads import ClusterError, InspectError, explain_api_error, in_flight_of
from controller.config import FamilyRange
from controller.credentials import Credentials
from controller.explain import Explanation, Leader, explain, format_text, leader_of
from controller.inspect import render
from controller.kube import ApiError, KubeClient
from controller.model import NodeInfo


async def _read(
    credentials: Credentials, lease: tuple[str, str]
) -> tuple[list[NodeInfo], list[dict[str, Any]], list[inflight.InFlight], Leader | None]:
    """Nodes (LIST order), pools, the Lease's record of patches in flight and its holder; ClusterError when a required
    read fails."""
    namespace, name = lease
    async with KubeClient(credentials) as kube:
        try:
            nodes, _ = await kube.list_nodes()
        except ApiError as error:
            raise ClusterError(explain_api_error(error, credentials, "list on nodes (cluster-wide)")) from None
        try:
            pools = await kube.list_pools() or []
        except ApiError as error:
            if error.status != 403:
                raise ClusterError(explain_api_error(error, credentials, "list on nodecidrpools.nodeipam.io")) from None
            why = explain_api_error(error, credentials, "list on nodecidrpools.nodeipam.io")
            print(f"note: pools not read, the flags' range alone is explained: {why}", file=sys.stderr)
            pools = []
        try:
            body = await kube.get_lease(namespace, name)
        except ApiError as error:
            what = f"get on leases.coordination.k8s.io in namespace {namespace}"
            if error.status != 403:
                raise ClusterError(explain_api_error(error, credentials, what)) from None
            print(
                f"note: the leader and patches in flight not shown: {explain_api_error(error, credentials, what)}",
                file=sys.stderr,
            )
            return nodes, pools, [], None
    return nodes, pools, in_flight_of(lease, body), leader_of(f"{namespace}/{name}", body, datetime.datetime.now(datetime.UTC))


def explain_command(
    node: str,
    ranges: tuple[FamilyRange, ...],
    service_cidrs: tuple[netaddr.IPNetwork, ...],
    credentials: Credentials,
    output: str,
    lease: tuple[str, str],
) -> None:
    """Prints why `node` holds its range or waits ("text", "json" or "yaml"); InspectError when no Node has that name."""
    nodes, pools, in_flight, leader = asyncio.run(_read(credentials, lease))
    try:
        explanation: Explanation = explain(node, nodes, ranges, service_cidrs, pools, in_flight, leader)
    except KeyError:
        raise InspectError(f"there is no node {node}; kubectl get nodes lists them") from None
    print(format_text(explanation) if output == "text" else render(explanation.as_dict(), output))
