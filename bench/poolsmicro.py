"""Pure-module timings of the pool code, without an API server: what one status round, one scrape,
one pool change and one allocation cost the event loop with many Nodes and many NodeCIDRPools.

    python -m bench.poolsmicro [--nodes 100000] [--pools 100] [--pool-cidrs 16] [--overlap-pools 300]
                               [--overlap-cidrs 32]

The controller's own objects are driven as the reconciler drives them: a
Reconciler over a stub API (every write answered at once), rebuilt from
`--nodes` Nodes holding ranges spread over every pool CIDR. Timed:

- pools served: NodeAllocations made with the pools (`set_pools`), no Node;
- overlaps: `poolrank.overlaps` over `--overlap-pools` pools of `--overlap-cidrs` CIDRs;
- rebuild: the start-up rebuild from the LIST of all Nodes;
- a pool added while the Nodes hold their ranges (`set_pools`);
- status round: `pools.sync()` after 100 more Nodes got ranges (what a round costs during a burst);
- scrape: a frame of `/metrics` (`Metrics.exposition`) once every pool has its per-pool samples
  (allocations, releases, tries), as it has after a burst; the per-pool families alone when every pool
  changed since the last frame and when none did, beside what prometheus_client takes for the same
  families (`bench.poolmirror`), in the same run;
- allocation: reserve and commit, per Node.

Every figure is the best of `--repeat` runs. Nothing here asserts a limit.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import math
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any

import netaddr
from prometheus_client import generate_latest

from bench.poolmirror import PrometheusPools
from controller.config import FamilyRange
from controller.metrics import NAMESPACE, TRIES_BUCKETS, Metrics
from controller.model import NodeInfo
from controller.nodes import NodeAllocations
from controller.poolmetrics import LatestView, PoolMetrics
from controller.poolrank import overlaps
from controller.pools import PoolSpec
from controller.poolstatus import PoolUsage
from controller.reconciler import Reconciler

DEFAULT_RANGE = FamilyRange(netaddr.IPNetwork("172.16.0.0/16"), 24)
SERVICE_CIDR = netaddr.IPNetwork("192.168.0.0/16")
POOL_SPACE = netaddr.IPNetwork("10.0.0.0/8")
EXTRA_SPACE = netaddr.IPNetwork("100.64.0.0/10")
NODE_MASK = 26


def pool_bodies(pools: int, cidrs: int, node_ranges_per_cidr: int) -> list[dict[str, Any]]:
    """`pools` NodeCIDRPools of `cidrs` disjoint IPv4 CIDRs each, every CIDR holding that many /26 ranges."""
    prefix = NODE_MASK - int(math.log2(node_ranges_per_cidr))
    size = 2 ** (32 - prefix)
    if pools * cidrs * size > POOL_SPACE.size:
        raise SystemExit(f"{pools} x {cidrs} CIDRs of /{prefix} do not fit in {POOL_SPACE}")
    bodies = []
    for pool in range(pools):
        entries = [
            {"cidr": str(netaddr.IPNetwork((POOL_SPACE.first + (pool * cidrs + index) * size, prefix), 4))}
            for index in range(cidrs)
        ]
        bodies.append(
            {
                "metadata": {
                    "name": f"pool-{pool:04d}",
                    "uid": f"uid-pool-{pool}",
                    "resourceVersion": "1",
                    "generation": 1,
                    "creationTimestamp": f"2026-01-01T{pool // 3600:02d}:{pool // 60 % 60:02d}:{pool % 60:02d}Z",
                    "finalizers": ["nodeipam.io/ranges-in-use"],
                },
                "spec": {"ipv4": {"nodeMaskSize": NODE_MASK, "cidrs": entries}},
            }
        )
    return bodies


def held_nodes(bodies: Sequence[Mapping[str, Any]], count: int) -> list[NodeInfo]:
    """`count` Nodes holding one range each, dealt round-robin over every pool CIDR."""
    cidrs = [netaddr.IPNetwork(entry["cidr"]) for body in bodies for entry in body["spec"]["ipv4"]["cidrs"]]
    step = 2 ** (32 - NODE_MASK)
    nodes = []
    for index in range(count):
        cidr = cidrs[index % len(cidrs)]
        offset = index // len(cidrs)
        subnet = str(netaddr.IPNetwork((cidr.first + offset * step, NODE_MASK), 4))
        nodes.append(NodeInfo(f"held-{index}", f"uid-held-{index}", (subnet,), subnet))
    return nodes


class StubApi:
    """Answers every call at once; remembers nothing but the pools."""

    def __init__(self, pools: list[dict[str, Any]], nodes: list[NodeInfo]) -> None:
        self.pools = {body["metadata"]["name"]: body for body in pools}
        self.nodes = nodes
        self.status_writes = 0

    async def list_nodes(self, *, from_cache: bool = False) -> tuple[list[NodeInfo], str]:
        return self.nodes, "1"

    def watch_nodes(self, resource_version: str) -> AsyncIterator[tuple[str, NodeInfo]]:
        raise NotImplementedError

    async def get_node(self, name: str) -> NodeInfo | None:
        return None

    async def patch_pod_cidrs(self, node: NodeInfo, cidrs: Sequence[netaddr.IPNetwork]) -> object:
        return None

    async def post_node_event(self, node: NodeInfo, event_type: str, reason: str, message: str) -> bool:
        return True

    async def list_pools(self) -> list[dict[str, Any]] | None:
        return list(self.pools.values())

    async def post_pool_event(self, name: str, uid: str, event_type: str, reason: str, message: str) -> bool:
        return True

    async def patch_pool_status(self, name: str, status: Mapping[str, Any]) -> None:
        self.status_writes += 1

    async def set_pool_finalizers(self, name: str, finalizers: Sequence[str], resource_version: str) -> dict[str, Any]:
        body = self.pools[name]
        body["metadata"]["finalizers"] = list(finalizers)
        return body


def best(repeat: int, run: Callable[[], object]) -> float:
    """The shortest of `repeat` runs, in seconds."""
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return min(times)


def allocate(allocations: NodeAllocations, prefix: str, count: int) -> None:
    for index in range(count):
        reservation = allocations.reserve(NodeInfo(f"{prefix}-{index}", f"uid-{prefix}-{index}"))
        allocations.reservations.patching(reservation)
        allocations.reservations.commit(reservation)


def sample_count(text: bytes) -> int:
    """How many samples a text of /metrics holds."""
    return sum(1 for line in text.splitlines() if line and not line.startswith(b"#"))


def scrape_figures(metrics: Metrics, usages: Sequence[PoolUsage], repeat: int) -> list[tuple[str, float]]:
    """A frame of /metrics as the feed thread makes one; the per-pool families, and what prometheus_client takes
    for the same families (bench.poolmirror), side by side."""
    pools = [usage.name for usage in usages]
    metrics.refresh_views()  # as the main loop does before each frame: the pools' usage as it is now
    before = sample_count(metrics.exposition())
    for pool in pools:  # a pool gets its per-pool samples when it first serves a Node, and releases one
        metrics.pools.allocations.inc(pool)
        metrics.pools.releases.inc(pool)
        metrics.pools.tries.observe(pool, 1)
    after = sample_count(metrics.exposition())
    mirror = PrometheusPools(metrics.pools)
    mirror.usages = usages
    for pool in pools:
        mirror.allocations.labels(pool).inc()
        mirror.releases.labels(pool).inc()
        mirror.tries.labels(pool).observe(1)

    # Every pool changes between two frames: its counts go up and its usage alternates between two states.
    moving = PoolMetrics(NAMESPACE, TRIES_BUCKETS)
    states = [tuple(usages), tuple(dataclasses.replace(usage, nodes=usage.nodes + 1) for usage in usages)]
    view = LatestView(lambda: states[0])
    moving.usage.track(view)
    moving.text()

    def every_pool_changed() -> float:
        """The per-pool families' text when every pool changed since the last frame, as in a busy burst."""
        for pool in pools:
            moving.allocations.inc(pool)
            moving.releases.inc(pool)
            moving.tries.observe(pool, 1)
        states.reverse()
        view.refresh()
        started = time.perf_counter()
        moving.text()
        return time.perf_counter() - started

    theirs = best(repeat, mirror.text)
    changed = min(every_pool_changed() for _ in range(repeat))
    unchanged = best(repeat, metrics.pools.text)
    rest = best(repeat, lambda: generate_latest(metrics.registry))
    return [
        (
            f"scrape: a frame (Metrics.exposition), every pool with its per-pool samples ({before} -> {after} samples),"
            " none changed",
            best(repeat, metrics.exposition),
        ),
        ("scrape: a frame's families other than the per-pool ones (generate_latest)", rest),
        ("scrape: the per-pool families through prometheus_client (generate_latest), as before", theirs),
        ("scrape: the per-pool families, every pool changed since the last frame", changed),
        ("scrape: the per-pool families, no pool changed since the last frame", unchanged),
    ]


async def measure(args: argparse.Namespace) -> list[tuple[str, float]]:
    figures: list[tuple[str, float]] = []
    per_cidr = 2 ** max(1, math.ceil(math.log2(2 * math.ceil(args.nodes / (args.pools * args.pool_cidrs)))))
    bodies = pool_bodies(args.pools, args.pool_cidrs, per_cidr)
    specs = [PoolSpec.from_body(body) for body in bodies]
    figures.append(
        (
            f"pools served: NodeAllocations with {args.pools} x {args.pool_cidrs} pools, no Node",
            best(args.repeat, lambda: NodeAllocations([DEFAULT_RANGE], [SERVICE_CIDR], specs)),
        )
    )
    many = [PoolSpec.from_body(body) for body in pool_bodies(args.overlap_pools, args.overlap_cidrs, 4)]
    default = PoolSpec.default([DEFAULT_RANGE])
    figures.append(
        (
            f"overlaps(): {args.overlap_pools} x {args.overlap_cidrs} pools",
            best(args.repeat, lambda: overlaps([default, *many], [SERVICE_CIDR])),
        )
    )
    figures.append(
        (
            f"pools served: NodeAllocations with {args.overlap_pools} x {args.overlap_cidrs} pools, no Node",
            best(1, lambda: NodeAllocations([DEFAULT_RANGE], [SERVICE_CIDR], many)),
        )
    )

    api = StubApi(bodies, held_nodes(bodies, args.nodes))
    allocations = NodeAllocations([DEFAULT_RANGE], [SERVICE_CIDR])
    reconciler = Reconciler(api, allocations, Metrics())
    started = time.perf_counter()
    await reconciler.rebuild()
    figures.append((f"rebuild from {args.nodes} Nodes holding ranges", time.perf_counter() - started))
    started = time.perf_counter()
    await reconciler.pools.sync()
    figures.append((f"first status round ({api.status_writes} statuses written)", time.perf_counter() - started))
    extra = PoolSpec.from_body(
        {
            "metadata": {"name": "extra", "creationTimestamp": "2026-02-01T00:00:00Z"},
            "spec": {
                "ipv4": {
                    "nodeMaskSize": NODE_MASK,
                    "cidrs": [{"cidr": str(c)} for c in EXTRA_SPACE.subnet(24)][: args.pool_cidrs],
                }
            },
        }
    )
    started = time.perf_counter()
    allocations.set_pools([*allocations.pool_sets.pools()[1:], extra])
    figures.append((f"a pool of {args.pool_cidrs} CIDRs added, {args.nodes} Nodes holding ranges", time.perf_counter() - started))

    rounds = []
    for attempt in range(args.repeat):
        allocate(allocations, f"round{attempt}", 100)
        writes = api.status_writes
        started = time.perf_counter()
        await reconciler.pools.sync()
        rounds.append(time.perf_counter() - started)
    figures.append((f"status round after 100 allocations ({api.status_writes - writes} statuses written)", min(rounds)))
    figures.extend(scrape_figures(reconciler.metrics, reconciler.pools.usages(), args.repeat))
    count = 1000
    figures.append(
        (
            f"allocation: reserve + commit, per Node ({args.pools} x {args.pool_cidrs} pools)",
            best(1, lambda: allocate(allocations, "burst", count)) / count,
        )
    )
    filling = NodeAllocations(
        [DEFAULT_RANGE], [SERVICE_CIDR], [PoolSpec.from_body(body) for body in pool_bodies(args.pools, args.pool_cidrs, 4)]
    )
    fill = args.pools * args.pool_cidrs * 4
    figures.append(
        (
            f"allocation: reserve + commit, per Node, {fill} Nodes filling {args.pools} x {args.pool_cidrs} pools in turn",
            best(1, lambda: allocate(filling, "fill", fill)) / fill,
        )
    )
    single = NodeAllocations([FamilyRange(POOL_SPACE, NODE_MASK)], [SERVICE_CIDR])
    allocate(single, "warm", 1000)
    figures.append(
        (
            "allocation: reserve + commit, per Node (the default pool only)",
            best(1, lambda: allocate(single, "burst", count)) / count,
        )
    )
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.poolsmicro", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--nodes", type=int, default=100_000)
    parser.add_argument("--pools", type=int, default=100)
    parser.add_argument("--pool-cidrs", type=int, default=16)
    parser.add_argument("--overlap-pools", type=int, default=300)
    parser.add_argument("--overlap-cidrs", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    print("| what | ms |\n|---|---|")
    for what, seconds in asyncio.run(measure(args)):
        print(f"| {what} | {1000 * seconds:.3f} |", flush=True)


if __name__ == "__main__":
    main()
