"""The pools profile: a burst without and with NodeCIDRPools, each on a control plane of its own, probed and scraped
all along; its table row and ratio.
"""

from __future__ import annotations

import asyncio
import json
import math
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import netaddr

from bench import apigc, apiload
from bench.harness import (
    AFTER_BURST_SECONDS,
    CLUSTER_CIDR,
    Controller,
    Prober,
    Sampler,
    Watcher,
    check_disjoint,
    create_nodes,
    nth_subnet,
    wait_ready,
)
from bench.result import Result, Series, percentile
from bench.stallwatch import trace_path
from controller.kube import POOLS_PATH, KubeClient
from localcluster.cluster import LocalControlPlane, free_port

SLOW_PROBE = 0.1  # a /healthz slower than this misses the target
SLOW_SCRAPE = 0.2  # a /metrics scrape slower than this misses the target
#: The NodeCIDRPool CRD, from its one source: the chart's crds/ directory.
POOL_CRD = Path(__file__).resolve().parents[1] / "manifests" / "charts" / "nodeipam" / "crds" / "nodecidrpools.yaml"
#: The flags' range in a run with pools: outside every pool, tried last.
POOLS_DEFAULT_CIDR = "172.16.0.0/12"


def pool_layout(nodes: int, pools: int, cidrs: int) -> tuple[int, list[list[str]]]:
    """The node mask and the CIDRs of `pools` pools of `cidrs` CIDRs each, side by side in CLUSTER_CIDR, that hold
    `nodes` Nodes between them: /24 per Node where that fits, as in a burst, else /25, /26."""
    per_cidr = 2 ** max(0, math.ceil(math.log2(math.ceil(nodes / (pools * cidrs)))))
    space = netaddr.IPNetwork(CLUSTER_CIDR)
    for mask in (24, 25, 26):
        if pools * cidrs * per_cidr <= 2 ** (mask - space.prefixlen):
            prefix = mask - int(math.log2(per_cidr))
            return mask, [
                [nth_subnet(CLUSTER_CIDR, prefix, pool * cidrs + index) for index in range(cidrs)] for pool in range(pools)
            ]
    raise ValueError(f"{pools} pools of {cidrs} CIDRs for {nodes} Nodes do not fit in {CLUSTER_CIDR}")


def pool_body(name: str, mask: int, cidrs: list[str]) -> dict[str, Any]:
    """A NodeCIDRPool with no selector: it serves every Node; of several, the fullest first."""
    return {
        "apiVersion": "nodeipam.io/v1alpha1",
        "kind": "NodeCIDRPool",
        "metadata": {"name": name},
        "spec": {"ipv4": {"nodeMaskSize": mask, "cidrs": [{"cidr": cidr} for cidr in cidrs]}},
    }


@dataclass(frozen=True)
class PoolSetup:
    """What serves the Nodes of one half of a pools run."""

    label: str
    cluster_cidr: str  # the controller's flags' range
    mask: int
    pool_cidrs: list[list[str]]  # per NodeCIDRPool, its CIDRs; none: the flags' range serves every Node


def pool_setups(n: int, pools: int, cidrs: int) -> list[PoolSetup]:
    """The two setups a pools run compares: the flags' range only, then `pools` NodeCIDRPools of `cidrs` CIDRs."""
    mask, layout = pool_layout(n, pools, cidrs)
    return [
        PoolSetup("flags' range only", CLUSTER_CIDR, mask, []),
        PoolSetup(f"{pools} pools x {cidrs} CIDRs", POOLS_DEFAULT_CIDR, mask, layout),
    ]


async def pools_burst(
    kube: KubeClient, plane: LocalControlPlane, logs: Path, n: int, setup: PoolSetup, per_second: float | None
) -> Result:
    """A burst of `n` Nodes served by one setup, on a control plane of its own (fresh: an API server that had
    served the other setup's burst still holds its objects' history, and would handicap whichever runs second),
    /healthz probed and /metrics scraped all along. The CRD is installed in both setups, so that the controller
    watches pools and writes their status in both."""
    plane.kubectl("apply", "-f", str(POOL_CRD))
    plane.kubectl("wait", "--for=condition=established", "--timeout=60s", "crd/nodecidrpools.nodeipam.io")
    for index, entries in enumerate(setup.pool_cidrs):
        await kube.request("POST", POOLS_PATH, body=pool_body(f"bench-{index:04d}", setup.mask, entries))
    port, probe_port = free_port(), free_port()
    controller = Controller("nodeipam", plane, logs, setup.cluster_cidr, setup.mask, metrics_port=port, probe_port=probe_port)
    watcher = Watcher(plane.kubeconfig)
    await watcher.start()
    sampler = Sampler(controller, watcher)
    await wait_ready(port)
    prober = Prober(port, probe_port)
    await asyncio.sleep(3)  # a few probes before the burst
    load_before, load_from = apiload.read(plane.kubectl("get", "--raw", "/metrics")), time.monotonic()
    names = [f"pools-{i}" for i in range(n)]
    started = time.monotonic()
    created = await create_nodes(kube, names, per_second=per_second)
    done = await watcher.wait_all(names)
    healthz, tls_healthz, scrapes = await prober.stop()
    await asyncio.sleep(AFTER_BURST_SECONDS)
    load = apiload.read(plane.kubectl("get", "--raw", "/metrics")).since(load_before)
    load_seconds = time.monotonic() - load_from
    sampler.stop(started)
    controller.stop()
    await watcher.stop()
    during = [sample for sample in healthz + tls_healthz + scrapes if started <= sample[0] <= done]
    nodes, _ = await kube.list_nodes()
    in_pools = sum(
        1 for node in nodes if node.pod_cidrs and netaddr.IPNetwork(node.pod_cidrs[0]) in netaddr.IPNetwork(CLUSTER_CIDR)
    )
    notes = [await check_disjoint(kube, names), f"{in_pools} Nodes in {CLUSTER_CIDR}" if setup.pool_cidrs else ""]
    result = Result.of(
        f"burst of {n}: {setup.label}",
        "pools",
        controller,
        n,
        done - started,
        sampler,
        [round(watcher.assigned[name] - created[name], 4) for name in names],
        done - max(created.values()),
        " ".join(filter(None, notes)),
    )
    result.pools = setup.label
    result.apiserver_requests, result.apiserver_allocated_bytes = load.requests, load.allocated_bytes
    result.apiserver_load_seconds = round(load_seconds, 2)
    result.record_delivery(watcher, names, created)
    result.started_monotonic = started
    result.healthz_seconds = [round(sample[1], 4) for sample in healthz if started <= sample[0] <= done]
    result.tls_healthz_seconds = [round(sample[1], 4) for sample in tls_healthz if started <= sample[0] <= done]
    during_burst = [sample for sample in scrapes if started <= sample[0] <= done]
    result.scrape_seconds = [round(sample[1], 4) for sample in during_burst]
    result.scrape_review_seconds = [round(sample[6], 4) for sample in during_burst]
    slow_limits = (("probe", healthz, SLOW_PROBE), ("metrics", tls_healthz, SLOW_PROBE), ("scrape", scrapes, SLOW_SCRAPE))
    result.slow_probes = [
        {"port": port_name, "at": round(sent - started, 3), "monotonic": round(sent, 4), "took": took}
        | {"tcp": tcp, "tls": tls, "probe_wait": wait, "review": review, "collect": collect}
        | machine_stalls_of(sampler.series, sent - started, took)
        for port_name, samples, slow in slow_limits
        for sent, took, _, tcp, tls, wait, review, collect in samples
        if started <= sent <= done and took > slow
    ]
    result.stall_log = str(controller.stall_log or "")
    trace = trace_path(controller.stall_log) if controller.stall_log else None
    if trace and trace.exists():
        records = [json.loads(line) for line in trace.read_text().splitlines() if line.strip()]
        result.record_phases(records, names, created, watcher.assigned)
        log = plane.workdir / "kube-apiserver.log"
        result.record_apiserver_gc(apigc.marks(log.read_text(errors="replace"), plane.spawned_at["kube-apiserver"]), records)
    result.probe_failures = sum(1 for sample in during if sample[2] != 200)
    return result


POOLS_TABLE_HEADER = (
    "| burst | setup | lag after last create s (of it, the API server's delivery) | p50 s "
    "| /healthz p50 / p99 / worst ms | /healthz over 100 ms "
    "| metrics port /healthz p50 / p99 / worst ms, over 100 ms "
    "| /metrics p50 / p99 / worst ms | of them token reviews sent: count, p50 / p99 / worst ms "
    "| probes, scrapes (failed) | CPU ms/Node | load avg mean / max "
    "| machine stalled s: steal / io full / memory full | note |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
)


#: A scrape's review time from which it was sent to the API server: a cached answer takes microseconds.
SENT_REVIEW = 0.001


def machine_stalls_of(series: Series, at: float, took: float) -> dict[str, float]:
    """The machine's stalls while a request `at` s into the burst took `took` s, keyed for a slow probe's record."""
    return {f"machine_{name}": seconds for name, seconds in series.machine_stalls(at, at + took)._asdict().items()}


def pools_row(result: Result) -> str:
    lag = f"{result.lag_seconds:.2f}" if result.lag_seconds is not None else "-"
    if result.delivery_lag_seconds is not None:
        lag += f" ({result.delivery_lag_seconds:.2f})"

    def ms(values: list[float]) -> str:
        figures = (percentile(values, 0.5), percentile(values, 0.99), max(values, default=0))
        return " / ".join(f"{1000 * value:.0f}" for value in figures)

    slow = sum(1 for took in result.healthz_seconds if took > SLOW_PROBE)
    tls_slow = sum(1 for took in result.tls_healthz_seconds if took > SLOW_PROBE)
    probes = len(result.healthz_seconds) + len(result.tls_healthz_seconds)
    load = result.series.load1
    loads = f"{statistics.fmean(load):.1f} / {max(load):.1f}" if load else "-"
    stalled = result.series.machine_stalls(0.0, result.seconds)
    machine = f"{stalled.steal:.1f} / {stalled.io_full:.1f} / {stalled.memory_full:.1f}"
    reviews = [seconds for seconds in result.scrape_review_seconds if seconds >= SENT_REVIEW]
    return (
        f"| {result.nodes} | {result.pools} | {lag} | {percentile(result.latencies, 0.5):.2f} "
        f"| {ms(result.healthz_seconds)} | {slow} of {len(result.healthz_seconds)} "
        f"| {ms(result.tls_healthz_seconds)}, {tls_slow} of {len(result.tls_healthz_seconds)} | {ms(result.scrape_seconds)} "
        f"| {len(reviews)}, {ms(reviews)} "
        f"| {probes}, {len(result.scrape_seconds)} ({result.probe_failures}) "
        f"| {1000 * result.cpu_seconds / result.nodes:.2f} | {loads} | {machine} | {result.note} |"
    )


def pools_ratio(baseline: Result, pooled: Result) -> str:
    """How much worse the run with pools was than the one without, on one line."""

    def ratio(ours: float, theirs: float) -> str:
        return f"{ours / theirs:.2f}x" if theirs > 0 else "-"

    return (
        f"burst of {pooled.nodes}: {pooled.pools} / {baseline.pools}: "
        f"lag {ratio(pooled.lag_seconds or 0.0, baseline.lag_seconds or 0.0)}, "
        f"/healthz p99 {ratio(percentile(pooled.healthz_seconds, 0.99), percentile(baseline.healthz_seconds, 0.99))}, "
        f"/metrics p99 {ratio(percentile(pooled.scrape_seconds, 0.99), percentile(baseline.scrape_seconds, 0.99))}"
    )
