"""The I/O layer against the real API server."""

from __future__ import annotations

import asyncio

import pytest

from controller.credentials import Credentials
from controller.kube import ApiError, KubeClient
from controller.model import NodeInfo
from tests.integration.conftest import Cluster

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("page_size", [1, 2, 3, 500])
def test_paged_list_returns_every_node_once(cluster: Cluster, page_size: int) -> None:
    names = [f"page-{i}" for i in range(7)]
    cluster.create_nodes(names)

    async def go() -> tuple[list[NodeInfo], str]:
        async with KubeClient(Credentials.load(cluster.plane.kubeconfig)) as kube:
            return await kube.list_nodes(page_size=page_size)

    nodes, version = asyncio.run(go())
    assert sorted(node.name for node in nodes) == names
    assert version.isdigit()


@pytest.mark.parametrize(
    ("first", "second"),
    [pytest.param("10.9.0.0/24", "10.9.1.0/24", id="ipv4"), pytest.param("fd00:9::/64", "fd00:9:0:1::/64", id="ipv6")],
)
def test_pod_cidr_is_immutable_so_a_second_patch_is_refused(cluster: Cluster, first: str, second: str) -> None:
    import netaddr

    cluster.create_nodes(["immutable"])

    async def go() -> int:
        async with KubeClient(Credentials.load(cluster.plane.kubeconfig)) as kube:
            node = await kube.get_node("immutable")
            assert node is not None
            await kube.patch_pod_cidrs(node, [netaddr.IPNetwork(first)])
            try:
                await kube.patch_pod_cidrs(node, [netaddr.IPNetwork(second)])
            except ApiError as error:
                return error.status
            return 200

    assert asyncio.run(go()) == 422
    assert cluster.pod_cidrs()["immutable"] == [first]


def test_patch_with_a_stale_uid_is_refused(cluster: Cluster) -> None:
    import netaddr

    cluster.create_nodes(["recreated"])

    async def go() -> int:
        async with KubeClient(Credentials.load(cluster.plane.kubeconfig)) as kube:
            node = await kube.get_node("recreated")
            assert node is not None
            stale = NodeInfo(node.name, "00000000-0000-0000-0000-000000000000")
            try:
                await kube.patch_pod_cidrs(stale, [netaddr.IPNetwork("10.9.0.0/24")])
            except ApiError as error:
                return error.status
            return 200

    assert asyncio.run(go()) in (409, 422)
    assert cluster.pod_cidrs()["recreated"] == []
