"""Side-by-side figures: nodeipam vs kube-controller-manager's nodeipam, one API server, one run.

    python -m bench [--profile small|scale|pools] [--nodes 2000[,20000...]] [--restart-nodes 20000[,...]]
                    [--only burst,startup,restart,pools] [--controllers nodeipam,kube-controller-manager]
                    [--skip-throttled] [--create-rate N] [--pools 100] [--pool-cidrs 16] [--json PATH]

Every Node is a realistic ~10 KB body (labels, conditions, addresses,
capacity, 40 images), created 64 at a time, as kubelets registering would.
Per-Node latency is the time from the create call returning to the watch
showing its podCIDR (what upstream's test/integration/ipamperf records);
that watch runs in a process of its own (bench/watch.py), so that the load
generator never slows it down. After each burst the Nodes are listed again
and their ranges checked to be disjoint (a note says if not).
Figures are printed as a table with ratios; nothing here asserts a limit.
During every scenario the controller's RSS and the count of assigned Nodes
are sampled once a second; all of it, with the per-Node latencies, is written
as JSON (`--json`, default bench/results/<timestamp>.json) for bench.plot.

Profiles (explicit --nodes, --restart-nodes, --only, --skip-throttled win):
  small (default)  burst and start-up at 2000, restart at 20000, both controllers,
                   kube-controller-manager also at its default QPS 20/30.
                   Roughly 5-8 min on 2 cores (estimate).
  scale            burst at 2000, 20000, 60000 and 100000; restart at 60000 and
                   100000; kube-controller-manager unthrottled only; no start-up.
                   Roughly 45-60 min on 2 cores (estimate: the API server takes
                   ~310 Node creates/s, so 100000 Nodes are ~6 min of creates per
                   scenario, plus their deletion; ~424000 creates in all).
  pools            nodeipam alone, a burst of 20000 paced at 100 creates/s, twice:
                   with the flags' range only, then with --pools NodeCIDRPools of
                   --pool-cidrs CIDRs each (100 x 16) serving the Nodes; each on a
                   fresh control plane, so that neither runs against an API server
                   still holding the other's 100000 Nodes' history. During each
                   burst /healthz is probed every 0.1 s and /metrics scraped every
                   1 s (bench/probe.py, a process of its own, with the control
                   plane's admin token); printed: lag after the last create, p99 and
                   worst probe and scrape latency, side by side, and their ratio.
                   Roughly 15 min on 2 cores (estimate).

Address space: 10.0.0.0/8 for both controllers, /24 per Node while a scenario
needs at most 65536 subnets, /25 (131072 subnets) above. kube-controller-manager
cannot serve more than 2^16 node subnets from one cluster CIDR, so it is
skipped, with a note, in scenarios larger than that.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import itertools
import json
import math
import multiprocessing
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import aiohttp
import netaddr

from bench import apigc, apiload, machine
from bench.machine import StallTotals
from bench.probe import Sample, probe
from bench.stallwatch import trace_path
from bench.watch import watch_nodes
from controller.credentials import Credentials
from controller.kube import POOLS_PATH, ApiError, KubeClient
from localcluster.binaries import ensure_binaries
from localcluster.cluster import ADMIN_TOKEN, LocalControlPlane, free_port
from localcluster.nodebodies import realistic_node

CLUSTER_CIDR = "10.0.0.0/8"
KCM_MAX_SUBNETS = 2**16  # kube-controller-manager's cidrset refuses more node subnets per cluster CIDR
SERVICE_CIDR = "192.168.0.0/16"  # outside the cluster CIDR, so neither controller loses subnets to it
#: nodeipam-elected: nodeipam with leader election on, as the chart runs it (every patch waits for the Lease to
#: record it first); the others run alone, without election.
CONTROLLERS = ("nodeipam", "kube-controller-manager", "nodeipam-elected")
SCENARIOS = ("burst", "startup", "restart", "pools")
CREATE_PARALLELISM = 64
SETTLE_TIMEOUT = 900.0
SETTLE_SECONDS = 30.0  # after the restart scenario, before the end RSS is read
AFTER_BURST_SECONDS = 5.0  # after a burst or start-up is assigned, before the end RSS is read
SAMPLE_INTERVAL = 1.0
SLOW_PROBE = 0.1  # a /healthz slower than this misses the target
SLOW_SCRAPE = 0.2  # a /metrics scrape slower than this misses the target
SLOW_PATCH = 0.03  # a podCIDR patch slower than this is a slow one (bench.apigc: the API server collecting)
PROFILES: dict[str, dict[str, Any]] = {
    "small": {"nodes": [2000], "restart_nodes": [20000], "only": list(SCENARIOS), "skip_throttled": False},
    "scale": {
        "nodes": [2000, 20000, 60000, 100000],
        "restart_nodes": [60000, 100000],
        "only": ["burst", "restart"],
        "skip_throttled": True,
    },
    "pools": {"nodes": [20000], "restart_nodes": [], "only": ["pools"], "skip_throttled": True, "create_rate": 100.0},
}
#: The NodeCIDRPool CRD, from its one source: the chart's crds/ directory.
POOL_CRD = Path(__file__).resolve().parents[1] / "manifests" / "charts" / "nodeipam" / "crds" / "nodecidrpools.yaml"
#: The flags' range in a run with pools: outside every pool, tried last.
POOLS_DEFAULT_CIDR = "172.16.0.0/12"


def address_space(subnets: int) -> tuple[str, int]:
    """The cluster CIDR and node mask for a scenario needing `subnets` node subnets.

    /24 while kube-controller-manager can serve it, so both controllers run on the same
    space; /25 above, where only nodeipam runs.
    """
    mask = 24 if subnets <= KCM_MAX_SUBNETS else 25
    capacity = 2 ** (mask - netaddr.IPNetwork(CLUSTER_CIDR).prefixlen)
    if subnets > capacity:
        raise ValueError(f"{subnets} node subnets do not fit in {CLUSTER_CIDR} at /{mask} ({capacity})")
    return CLUSTER_CIDR, mask


def nth_subnet(cidr: str, mask: int, index: int) -> str:
    """The index-th /mask subnet of cidr: distinct indexes never collide."""
    network = netaddr.IPNetwork(cidr)
    if not 0 <= index < 2 ** (mask - network.prefixlen):
        raise ValueError(f"subnet {index} is outside {cidr} at /{mask}")
    return str(netaddr.IPNetwork(f"{netaddr.IPAddress(network.first + index * 2 ** (32 - mask))}/{mask}"))


@dataclass
class Series:
    """Once-a-second samples; t is seconds since the scenario's start (negative: before it)."""

    t: list[float] = field(default_factory=list)
    rss_mb: list[float] = field(default_factory=list)
    assigned: list[int] = field(default_factory=list)
    load1: list[float] = field(default_factory=list)  # the machine's 1-minute load average
    #: Per sample, the machine's stalls since the sample before (bench.machine), ms: CPU stolen by the hypervisor,
    #: every task waiting on I/O, on memory, some task waiting for a CPU.
    steal_ms: list[float] = field(default_factory=list)
    io_full_ms: list[float] = field(default_factory=list)
    memory_full_ms: list[float] = field(default_factory=list)
    cpu_some_ms: list[float] = field(default_factory=list)

    def machine_stalls(self, start: float, end: float) -> StallTotals:
        """The machine's stalls, s, in the samples' intervals that overlap [start, end] (seconds since the start)."""
        columns = (self.steal_ms, self.io_full_ms, self.memory_full_ms, self.cpu_some_ms)
        overlapping = [i for i in range(1, len(self.t)) if self.t[i - 1] <= end and self.t[i] >= start]
        return StallTotals(*(round(sum(column[i] for i in overlapping) / 1000, 3) for column in columns))


@dataclass
class Result:
    scenario: str
    kind: str  # which scenario: burst, startup or restart
    controller: str
    nodes: int
    cluster_cidr: str
    node_mask: int
    seconds: float
    latencies: list[float] = field(default_factory=list)
    rss_mb: float = 0.0  # peak (VmHWM)
    end_rss_mb: float = 0.0  # once the scenario settled (VmRSS)
    note: str = ""
    cpu_seconds: float = 0.0
    lag_seconds: float | None = None  # last Node assigned - last create returned
    apiserver_cpu_seconds: float = 0.0  # while the controller ran
    etcd_cpu_seconds: float = 0.0
    series: Series = field(default_factory=Series)
    pools: str = ""  # the pools scenario: which pools served the Nodes
    healthz_seconds: list[float] = field(default_factory=list)  # /healthz latencies on the probe port during the burst
    #: /healthz latencies on the metrics port (https, a thread of the controller's) during the burst
    tls_healthz_seconds: list[float] = field(default_factory=list)
    scrape_seconds: list[float] = field(default_factory=list)  # /metrics latencies during the burst
    #: Of each of those scrapes, its token review, as its Server-Timing header said (0: answered from the cache)
    scrape_review_seconds: list[float] = field(default_factory=list)
    probe_failures: int = 0  # requests that timed out or were not answered 200
    #: /healthz requests over SLOW_PROBE (port "probe" or "metrics") and scrapes over SLOW_SCRAPE (port "scrape"):
    #: sent (s since the start; and monotonic, as the controller's stall log), took, and of that the TCP connect,
    #: the TLS handshake and the probe's own wait for a CPU, s; and the machine's stalls meanwhile (machine_*, s).
    slow_probes: list[dict[str, Any]] = field(default_factory=list)
    stall_log: str = ""  # bench.stallwatch's record of the controller's stalls (--stall-log)
    #: Per Node, the bench's watch first saw it - its create returned: how late the API server delivered it to its
    #: watchers (the controller's too). The rest of each latency is the controller's, its patch's and the delivery
    #: of that patch.
    delivery_latencies: list[float] = field(default_factory=list)
    delivery_lag_seconds: float | None = None  # the last Node first seen - the last create returned
    started_monotonic: float = 0.0  # when the first create was sent (time.monotonic(), as the stall log's)
    #: Per phase of a Node's latency (NODE_PHASES; --stall-log only), s: p50, p99 and worst over the burst's Nodes.
    phase_percentiles: dict[str, list[float]] = field(default_factory=dict)
    #: The phases of the Node assigned last (the one that set the lag), s, and its name.
    last_node_phases: dict[str, float] = field(default_factory=dict)
    last_node: str = ""
    #: The API server's collections during the burst (GODEBUG=gctrace=1): [start s since the first create, mark s,
    #: live heap after, MB].
    apiserver_gc_marks: list[list[float]] = field(default_factory=list)
    #: The podCIDR patches sent while the API server's collector marked, and the others: count, p50 s, share over
    #: SLOW_PATCH; and whether the last patch of the burst was sent while it marked.
    patches_while_marking: list[float] = field(default_factory=list)
    patches_otherwise: list[float] = field(default_factory=list)
    last_patch_while_marking: bool | None = None
    #: The requests the API server served from just before the first create until the controller stopped, keyed
    #: "VERB resource[/subresource]" (bench.apiload): the Nodes' creates and patches, and what else was asked;
    #: and the bytes it allocated meanwhile.
    apiserver_requests: dict[str, int] = field(default_factory=dict)
    apiserver_allocated_bytes: float = 0.0

    @classmethod
    def of(
        cls,
        scenario: str,
        kind: str,
        controller: Controller,
        nodes: int,
        seconds: float,
        sampler: Sampler,
        latencies: list[float] | None = None,
        lag: float | None = None,
        note: str = "",
    ) -> Result:
        """A result with the stopped controller's peak and end RSS, CPU time and samples."""
        return cls(
            scenario,
            kind,
            controller.label,
            nodes,
            controller.cluster_cidr,
            controller.node_mask,
            seconds,
            latencies or [],
            controller.peak_rss_mb,
            controller.end_rss_mb,
            note,
            controller.cpu_seconds,
            lag,
            controller.plane_cpu_seconds["kube-apiserver"],
            controller.plane_cpu_seconds["etcd"],
            sampler.series,
        )

    def record_delivery(self, watcher: Watcher, names: list[str], created: dict[str, float]) -> None:
        """How late the API server delivered each new Node to its watchers (in the order of `names`, as the
        latencies), and the last one."""
        if any(name not in watcher.appeared for name in names):  # first seen in a re-list: no delivery time
            return
        self.delivery_latencies = [round(watcher.appeared[name] - created[name], 4) for name in names]
        self.delivery_lag_seconds = max(watcher.appeared[name] for name in names) - max(created.values())

    def record_phases(
        self, records: list[dict[str, Any]], names: list[str], created: dict[str, float], assigned: dict[str, float]
    ) -> None:
        """Split each Node's latency into its phases, from the controller's trace (bench.stallwatch)."""
        phases = node_phases(records, names, created, assigned)
        if not phases:
            return
        self.phase_percentiles = {
            phase: [round(percentile(list(values), fraction), 4) for fraction in (0.5, 0.99, 1.0)]
            for phase, values in zip(NODE_PHASES, zip(*phases.values(), strict=True), strict=True)
        }
        self.last_node = max(phases, key=lambda name: assigned[name])
        self.last_node_phases = {phase: round(value, 4) for phase, value in zip(NODE_PHASES, phases[self.last_node], strict=True)}

    def record_apiserver_gc(self, marks: list[apigc.Mark], records: list[dict[str, Any]]) -> None:
        """The API server's collections in the burst, and the patches sent while they marked against the others."""
        end = self.started_monotonic + self.seconds
        self.apiserver_gc_marks = [
            [round(mark.start - self.started_monotonic, 2), mark.seconds, mark.live_mb]
            for mark in marks
            if mark.start + mark.seconds >= self.started_monotonic and mark.start <= end
        ]
        split: dict[bool, list[float]] = {True: [], False: []}
        for record in records:
            split[apigc.marking(marks, record["sent"])].append(record["returned"] - record["sent"])

        def figures(took: list[float]) -> list[float]:
            slow = sum(1 for seconds in took if seconds > SLOW_PATCH) / len(took) if took else 0.0
            return [len(took), round(percentile(took, 0.5), 4), round(slow, 4)]

        self.patches_while_marking, self.patches_otherwise = figures(split[True]), figures(split[False])
        if records:
            self.last_patch_while_marking = apigc.marking(marks, max(record["sent"] for record in records))

    def gc_line(self) -> str:
        """The API server's collector during the burst, and the patches, on one line."""
        if not self.apiserver_gc_marks:
            return ""
        marked = sum(seconds for _, seconds, _ in self.apiserver_gc_marks)

        def patches(figures: list[float]) -> str:
            count, median, slow = figures
            return f"{int(count)} sent, p50 {1000 * median:.1f} ms, {100 * slow:.1f} % over {1000 * SLOW_PATCH:.0f} ms"

        return (
            f"the API server's collector marked {marked:.0f} s of {self.seconds:.0f} ({len(self.apiserver_gc_marks)} "
            f"collections, live heap {self.apiserver_gc_marks[-1][2]:.0f} MB at the end); patches while it marked: "
            f"{patches(self.patches_while_marking)}; otherwise: {patches(self.patches_otherwise)}; the last patch "
            f"{'while it marked' if self.last_patch_while_marking else 'outside a mark'}"
        )

    def phases_line(self) -> str:
        """The phases of the Nodes' latencies, ms, on one line: p50 / p99 / worst, then the last Node's."""
        if not self.phase_percentiles:
            return ""
        spread = ", ".join(
            f"{phase} {' / '.join(f'{1000 * value:.0f}' for value in values)}" for phase, values in self.phase_percentiles.items()
        )
        last = ", ".join(f"{phase} {1000 * value:.1f}" for phase, value in self.last_node_phases.items())
        return f"phases ms, p50 / p99 / worst: {spread}; the last Node ({self.last_node}): {last}"

    def row(self) -> str:
        lat = sorted(self.latencies)

        def pct(p: float) -> str:
            return f"{lat[min(len(lat) - 1, int(p * len(lat)))]:.2f}" if lat else "-"

        mean = f"{statistics.fmean(lat):.2f}" if lat else "-"
        lag = f"{self.lag_seconds:.2f}" if self.lag_seconds is not None else "-"
        per_node = f"{1000 * self.cpu_seconds / self.nodes:.2f}" if self.nodes else "-"
        return (
            f"| {self.scenario} | {self.controller} | {self.seconds:.1f} | {lag} | {mean} | {pct(0.5)} | {pct(0.99)} | "
            f"{(f'{lat[-1]:.2f}' if lat else '-')} | {self.rss_mb:.0f} | {self.end_rss_mb:.0f} | {self.cpu_seconds:.1f} | "
            f"{per_node} | {self.apiserver_cpu_seconds:.1f} | {self.etcd_cpu_seconds:.1f} | {self.note} |"
        )


TABLE_HEADER = (
    "| scenario | controller | total s | lag after last create s | mean s | p50 s | p99 s | max s | peak RSS MB | end RSS MB "
    "| CPU s | CPU ms/Node | API server CPU s | etcd CPU s | note |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
)


def process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU time a process has used so far; None once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


PLANE_PROCESSES = ("kube-apiserver", "etcd")


def read_status_kb(pid: int, key: str) -> int | None:
    """One kB figure (VmRSS, VmHWM) from /proc/PID/status; None once the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


class Controller:
    """One allocator process: ours or kube-controller-manager's."""

    #: Flags added to nodeipam's command line (`--nodeipam-flag`), to measure a setting other than the default.
    nodeipam_flags: tuple[str, ...] = ()
    #: Run nodeipam under bench.stallwatch, which writes its stalls next to its log (`--stall-log`).
    record_stalls = False

    def __init__(
        self,
        kind: str,
        plane: LocalControlPlane,
        log_dir: Path,
        cluster_cidr: str,
        node_mask: int,
        throttled: bool = False,
        metrics_port: int | None = None,
        probe_port: int | None = None,
    ) -> None:
        """`metrics_port`: nodeipam serves /metrics and /healthz there (on 127.0.0.1); None: not at all.
        `probe_port`: the same for its probe process's /healthz and /readyz (plain http)."""
        self.kind = kind
        self.label = kind + (" (QPS 20/30)" if throttled else "")
        ours = kind in ("nodeipam", "nodeipam-elected")
        if ours and self.nodeipam_flags:
            self.label += f" ({' '.join(self.nodeipam_flags)})"
        self.cluster_cidr = cluster_cidr
        self.node_mask = node_mask
        if ours:
            election = ["--leader-elect=false"]
            if kind == "nodeipam-elected":
                election = [
                    "--leader-elect=true",
                    f"--leader-elect-resource-name=bench-{int(time.time() * 1000)}",
                    "--leader-elect-resource-namespace=kube-system",
                ]
            stalls = log_dir / f"{kind}-{int(time.time() * 1000)}.stalls.jsonl"
            self.stall_log: Path | None = stalls if Controller.record_stalls else None
            entry = ["bench.stallwatch", str(self.stall_log)] if self.stall_log else ["controller"]
            argv = plane.controller_command(
                cluster_cidr,
                f"--node-cidr-mask-size={node_mask}",
                *election,
                f"--metrics-bind-address=127.0.0.1:{metrics_port}" if metrics_port else "--metrics-bind-address=0",
                f"--health-probe-bind-address=127.0.0.1:{probe_port}" if probe_port else "--health-probe-bind-address=0",
                "--log-level=warning",
                module=entry,
            )
            if throttled:
                argv += ["--kube-api-qps=20", "--kube-api-burst=30"]
            argv += self.nodeipam_flags
        else:
            kcm = ensure_binaries(("kube-controller-manager",))["kube-controller-manager"]
            argv = [
                str(kcm),
                f"--kubeconfig={plane.kubeconfig}",
                "--controllers=nodeipam",
                "--allocate-node-cidrs=true",
                f"--cluster-cidr={cluster_cidr}",
                f"--node-cidr-mask-size={node_mask}",
                f"--service-cluster-ip-range={plane.service_cidr}",
                "--leader-elect=false",
                "--secure-port=0",
                "-v=0",
            ]
            argv += [] if throttled else ["--kube-api-qps=10000", "--kube-api-burst=10000"]
            self.stall_log = None
        self.log = open(log_dir / f"{kind}-{int(time.time() * 1000)}.log", "wb")  # noqa: SIM115
        # The API server's and etcd's CPU while this controller runs: what serving it (and the load) cost them.
        self.plane = plane
        self._plane_cpu_at_start = self._plane_cpu()
        self.plane_cpu_seconds = dict.fromkeys(PLANE_PROCESSES, 0.0)
        # A session of its own, as etcd and the API server have (LocalControlPlane): where the kernel groups
        # CPU time by session (autogroup), the controller would otherwise share one fair share with the
        # load generator, as no controller in a cluster does (each Pod has a cgroup of its own).
        self.process = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        self.peak_rss_mb = 0.0
        self.end_rss_mb = 0.0
        self.cpu_seconds = 0.0

    def _plane_cpu(self) -> dict[str, float]:
        return {name: process_cpu_seconds(self.plane.pid(name)) or 0.0 for name in PLANE_PROCESSES}

    def sample_cpu(self) -> None:
        """User + system CPU time the process has used so far."""
        seconds = process_cpu_seconds(self.process.pid)
        if seconds is not None:
            self.cpu_seconds = seconds

    def rss_mb(self) -> float | None:
        """Resident memory now (VmRSS)."""
        kb = read_status_kb(self.process.pid, "VmRSS")
        return kb / 1024 if kb is not None else None

    def sample_rss(self) -> None:
        kb = read_status_kb(self.process.pid, "VmHWM")
        if kb is not None:
            self.peak_rss_mb = max(self.peak_rss_mb, kb / 1024)

    def stop(self) -> None:
        """Read the end and peak RSS and the CPU time, then stop the process."""
        self.end_rss_mb = self.rss_mb() or 0.0
        self.sample_rss()
        self.sample_cpu()
        now = self._plane_cpu()
        self.plane_cpu_seconds = {name: now[name] - self._plane_cpu_at_start[name] for name in PLANE_PROCESSES}
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


class Watcher:
    """Records when each Node is first seen with a podCIDR, from a process of its own.

    Read in the bench's own event loop, between 64 create workers, the watch
    fell behind at 100,000 Nodes: the API server closed it as too slow ~2
    times a second, and once its resume had left the API server's watch
    cache (410) it never saw another event. A slow watcher also holds up the
    API server's dispatch of events to every other watcher of Nodes, the
    controller's too. So a process of its own reads the watch, decodes only
    the fields it needs, re-lists after a 410, and sends (name, time seen)
    back; `time.monotonic()` is one clock for every process here.
    """

    def __init__(self, kubeconfig: str) -> None:
        self.kubeconfig = kubeconfig
        self.assigned: dict[str, float] = {}
        self.appeared: dict[str, float] = {}  # first seen at all: when the API server delivered the new Node
        self.changed = asyncio.Event()
        self.resumed = 0  # watches the API server ended (a watcher too slow to read is closed) and were resumed
        self.relisted = 0  # resumes the API server refused (410: past its watch cache), so all Nodes listed again
        self._ready = asyncio.Event()
        self._process: multiprocessing.process.BaseProcess | None = None
        self._connection: Connection | None = None

    async def start(self) -> None:
        context = multiprocessing.get_context("spawn")
        self._connection, child = context.Pipe(duplex=False)
        self._process = context.Process(target=watch_nodes, args=(self.kubeconfig, child), daemon=True)
        self._process.start()
        child.close()
        asyncio.get_running_loop().add_reader(self._connection.fileno(), self._receive)
        await asyncio.wait_for(self._ready.wait(), timeout=SETTLE_TIMEOUT)

    def _receive(self) -> None:
        assert self._connection is not None
        while self._connection.poll():
            try:
                seen, appeared, self.resumed, self.relisted, ready = self._connection.recv()
            except EOFError:
                asyncio.get_running_loop().remove_reader(self._connection.fileno())
                return
            for name, at in appeared:
                self.appeared.setdefault(name, at)
            for name, at in seen:
                self.assigned.setdefault(name, at)
            if seen:
                self.changed.set()
            if ready:
                self._ready.set()

    async def wait_all(self, names: list[str], timeout: float = SETTLE_TIMEOUT) -> float:
        """When the last of `names` was assigned; the missing set shrinks, so 100000 names stay cheap to check."""
        deadline = time.monotonic() + timeout
        missing = {name for name in names if name not in self.assigned}
        while missing:
            self.changed.clear()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"{len(missing)} of {len(names)} Nodes never got a podCIDR")
            if self._process is not None and not self._process.is_alive():
                raise RuntimeError(f"the bench's watch process exited ({self._process.exitcode})")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), timeout=min(remaining, 1.0))
            missing = {name for name in missing if name not in self.assigned}
        return max(self.assigned[name] for name in names)

    async def stop(self) -> None:
        if self._connection is not None:
            self._receive()
            with contextlib.suppress(ValueError):
                asyncio.get_running_loop().remove_reader(self._connection.fileno())
            self._connection.close()
        if self._process is not None:
            self._process.terminate()
            await asyncio.to_thread(self._process.join, 10)


class Prober:
    """Probes /healthz and scrapes /metrics of the controller from a process of its own (bench/probe.py)."""

    def __init__(self, port: int, probe_port: int | None = None) -> None:
        context = multiprocessing.get_context("spawn")
        self._connection, child = context.Pipe()
        self._process = context.Process(target=probe, args=(port, ADMIN_TOKEN, child, probe_port), daemon=True)
        self._process.start()
        child.close()

    async def stop(self) -> tuple[list[Sample], list[Sample], list[Sample]]:
        """Stop; (probe port /healthz, metrics port /healthz, scrape samples): see bench.probe.Sample."""
        self._connection.send("stop")
        samples: tuple[list[Sample], list[Sample], list[Sample]] = await asyncio.to_thread(self._connection.recv)
        await asyncio.to_thread(self._process.join, 10)
        return samples


class Sampler:
    """Samples the controller's RSS and the assigned count once a second, to see memory and progress over time."""

    def __init__(self, controller: Controller, watcher: Watcher) -> None:
        self.controller = controller
        self.watcher = watcher
        self._samples: list[tuple[float, float, int, float, StallTotals]] = []
        self._task = asyncio.ensure_future(self._run())
        self.series = Series()

    async def _run(self) -> None:
        while True:
            rss = self.controller.rss_mb()
            if rss is not None:
                sample = (time.monotonic(), rss, len(self.watcher.assigned), os.getloadavg()[0], machine.read_totals())
                self._samples.append(sample)
            await asyncio.sleep(SAMPLE_INTERVAL)

    def stop(self, started: float) -> None:
        """Stop sampling; times become seconds since `started`."""
        self._task.cancel()
        totals = [sample[4] for sample in self._samples]
        stalls = [StallTotals(), *(now.minus(before) for before, now in itertools.pairwise(totals))][: len(totals)]
        self.series = Series(
            [round(at - started, 2) for at, *_ in self._samples],
            [round(rss, 1) for _, rss, *_ in self._samples],
            [count for _, _, count, *_ in self._samples],
            [round(load, 2) for _, _, _, load, _ in self._samples],
            [round(1000 * stall.steal, 1) for stall in stalls],
            [round(1000 * stall.io_full, 1) for stall in stalls],
            [round(1000 * stall.memory_full, 1) for stall in stalls],
            [round(1000 * stall.cpu_some, 1) for stall in stalls],
        )


async def create_nodes(
    kube: KubeClient,
    names: list[str],
    offset: int = 0,
    preset: tuple[str, int] | None = None,
    per_second: float | None = None,
) -> dict[str, float]:
    """Create Nodes 64 at a time; returns when each create call returned.

    `preset` (cluster CIDR, mask): each Node already holds the (offset + i)-th subnet. Bodies
    are built by 64 workers as they go: 100000 bodies built up front would take gigabytes.
    `per_second`: the i-th create is sent no sooner than i / per_second seconds after the first.
    """
    created: dict[str, float] = {}
    todo = enumerate(names)
    started = time.monotonic()

    async def worker() -> None:
        for i, name in todo:
            if per_second:
                await asyncio.sleep(started + i / per_second - time.monotonic())
            index = offset + i
            cidrs = (nth_subnet(*preset, index),) if preset else ()
            await kube.request("POST", "/api/v1/nodes", body=realistic_node(name, index, cidrs))
            created[name] = time.monotonic()

    await asyncio.gather(*(worker() for _ in range(min(CREATE_PARALLELISM, len(names)))))
    return created


async def count_nodes(kube: KubeClient) -> int:
    page = await kube.request("GET", "/api/v1/nodes", params={"limit": "1"})
    return len(page["items"]) + int(page["metadata"].get("remainingItemCount") or 0)


async def delete_all_nodes(kube: KubeClient, plane: LocalControlPlane) -> None:
    """Delete every Node, then compact etcd, so each scenario starts from a small store.

    The API server may time out a large delete-collection while it goes on deleting,
    so the call is re-issued only when the count stops falling.
    """
    last, stalled = -1, 0
    while left := await count_nodes(kube):
        stalled = stalled + 1 if left == last else 0
        if last < 0 or stalled >= 20:
            with contextlib.suppress(ApiError):
                await kube.request("DELETE", "/api/v1/nodes")
            stalled = 0
        last = left
        await asyncio.sleep(0.5)
    await compact_etcd(plane.etcd_url)


async def compact_etcd(etcd_url: str) -> None:
    """Compact and defragment etcd (its v3 JSON gateway): without it, the deleted Nodes' revisions of a
    scale run (~10 KB each, several per Node) would approach etcd's default 2 GB quota."""
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as session:
            async with session.post(etcd_url + "/v3/kv/range", json={"key": "AA=="}) as response:
                revision = (await response.json())["header"]["revision"]
            async with session.post(etcd_url + "/v3/kv/compaction", json={"revision": revision, "physical": True}):
                pass
            async with session.post(etcd_url + "/v3/maintenance/defragment", json={}) as response:
                response.raise_for_status()
    except (aiohttp.ClientError, TimeoutError, KeyError) as error:
        print(f"note: etcd compaction failed ({error!r}); going on", file=sys.stderr, flush=True)


def overlapping(cidrs: list[str]) -> int:
    """How many of the ranges overlap one before them (0: all disjoint), IPv4 and IPv6 alike."""
    spans = sorted((network.first, network.last, network.version) for network in map(netaddr.IPNetwork, cidrs))
    overlaps, reach = 0, {4: -1, 6: -1}
    for first, last, version in spans:
        if first <= reach[version]:
            overlaps += 1
        reach[version] = max(reach[version], last)
    return overlaps


async def check_disjoint(kube: KubeClient, names: list[str]) -> str:
    """A note if the burst's Nodes hold overlapping ranges: read back from the API server, not from the watcher."""
    nodes, _ = await kube.list_nodes()
    wanted = set(names)
    overlaps = overlapping([cidr for node in nodes if node.name in wanted for cidr in node.pod_cidrs])
    return f"{overlaps} OVERLAPPING RANGES" if overlaps else ""


async def burst(
    kube: KubeClient,
    plane: LocalControlPlane,
    logs: Path,
    kind: str,
    n: int,
    throttled: bool,
    space: tuple[str, int],
    per_second: float | None = None,
) -> Result:
    """The controller runs; n Nodes register at full speed (or `per_second`); until all have a podCIDR."""
    await delete_all_nodes(kube, plane)
    controller = Controller(kind, plane, logs, *space, throttled=throttled)
    watcher = Watcher(plane.kubeconfig)
    await watcher.start()
    sampler = Sampler(controller, watcher)
    await asyncio.sleep(3)  # let it finish its start-up before the burst
    names = [f"burst-{i}" for i in range(n)]
    started = time.monotonic()
    created = await create_nodes(kube, names, per_second=per_second)
    done = await watcher.wait_all(names)
    await asyncio.sleep(AFTER_BURST_SECONDS)
    sampler.stop(started)
    controller.stop()
    await watcher.stop()
    latencies = [round(watcher.assigned[name] - created[name], 4) for name in names]
    lag = done - max(created.values())
    watch = f"the bench's watch resumed {watcher.resumed} times, re-listed {watcher.relisted}"
    note = " ".join(filter(None, [await check_disjoint(kube, names), watch]))
    result = Result.of(f"burst of {n}", "burst", controller, n, done - started, sampler, latencies, lag, note)
    result.record_delivery(watcher, names, created)
    result.started_monotonic = started
    return result


async def startup(kube: KubeClient, plane: LocalControlPlane, logs: Path, kind: str, n: int, space: tuple[str, int]) -> Result:
    """n unassigned Nodes exist; start the controller; until all are assigned."""
    await delete_all_nodes(kube, plane)
    names = [f"wait-{i}" for i in range(n)]
    await create_nodes(kube, names)
    watcher = Watcher(plane.kubeconfig)
    await watcher.start()
    started = time.monotonic()
    controller = Controller(kind, plane, logs, *space)
    sampler = Sampler(controller, watcher)
    done = await watcher.wait_all(names)
    await asyncio.sleep(AFTER_BURST_SECONDS)
    sampler.stop(started)
    controller.stop()
    await watcher.stop()
    return Result.of(f"start with {n} waiting", "startup", controller, n, done - started, sampler)


async def restart(
    kube: KubeClient, plane: LocalControlPlane, logs: Path, kinds: list[str], n: int, space: tuple[str, int]
) -> list[Result]:
    """n assigned Nodes exist; start the controller and create a Node at once (time from start until it is
    assigned); then create a second one (its latency shows any backlog of the initial listing); then let
    the controller settle for SETTLE_SECONDS and read its RSS."""
    await delete_all_nodes(kube, plane)
    await create_nodes(kube, [f"held-{i}" for i in range(n)], preset=space)
    results = []
    for index, kind in enumerate(kinds):
        watcher = Watcher(plane.kubeconfig)
        await watcher.start()
        started = time.monotonic()
        controller = Controller(kind, plane, logs, *space)
        sampler = Sampler(controller, watcher)
        first, second = f"newcomer-{index}-a", f"newcomer-{index}-b"
        await create_nodes(kube, [first], offset=n + 2 * index)
        done = await watcher.wait_all([first])
        created = await create_nodes(kube, [second], offset=n + 2 * index + 1)
        second_done = await watcher.wait_all([second])
        await asyncio.sleep(SETTLE_SECONDS)
        sampler.stop(started)
        controller.stop()
        await watcher.stop()
        note = f"a Node created once the first was assigned waited {second_done - created[second]:.2f} s"
        results.append(Result.of(f"restart with {n} assigned", "restart", controller, n, done - started, sampler, note=note))
    return results


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


async def wait_ready(port: int, timeout: float = SETTLE_TIMEOUT) -> None:
    """Until the controller's /readyz answers 200: it listed the pools and Nodes and serves."""
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with session.get(f"https://127.0.0.1:{port}/readyz", ssl=False) as response:
                    if response.status == 200:
                        return
            await asyncio.sleep(0.2)
    raise TimeoutError(f"the controller's /readyz on port {port} never answered 200")


#: A Node's latency (its create returned to the bench's watch seeing its podCIDR) in four phases, each measured
#: from the end of the one before: the API server delivered the new Node to the controller's reconciler; the
#: controller decided and sent its patch; the patch's round trip; the API server delivered the patched Node to
#: the bench's watch.
NODE_PHASES = ("to controller", "in controller", "patch", "back to watch")


def node_phases(
    records: list[dict[str, Any]], names: list[str], created: dict[str, float], assigned: dict[str, float]
) -> dict[str, tuple[float, ...]]:
    """Per Node of `names` patched once, the NODE_PHASES of its latency, s (a trace record: bench.stallwatch)."""
    patched: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        patched.setdefault(record["name"], []).append(record)
    phases: dict[str, tuple[float, ...]] = {}
    for name in names:
        tried = patched.get(name, [])
        if len(tried) != 1 or tried[0]["seen"] is None or tried[0]["outcome"] != "applied" or name not in assigned:
            continue  # retried, or first seen before the trace: no single path to split
        seen, sent, returned = tried[0]["seen"], tried[0]["sent"], tried[0]["returned"]
        phases[name] = (seen - created[name], sent - seen, returned - sent, assigned[name] - returned)
    return phases


def percentile(values: list[float], fraction: float) -> float:
    """The value at `fraction` of the sorted values (nearest rank); 0 for none."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else 0.0


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
    load_before = apiload.read(plane.kubectl("get", "--raw", "/metrics"))
    names = [f"pools-{i}" for i in range(n)]
    started = time.monotonic()
    created = await create_nodes(kube, names, per_second=per_second)
    done = await watcher.wait_all(names)
    healthz, tls_healthz, scrapes = await prober.stop()
    await asyncio.sleep(AFTER_BURST_SECONDS)
    load = apiload.read(plane.kubectl("get", "--raw", "/metrics")).since(load_before)
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


class Report:
    """Results so far, printed as they come and rewritten to the JSON file after every scenario,
    so a long run that stops early keeps what it measured."""

    def __init__(self, path: Path, args: argparse.Namespace) -> None:
        self.path = path
        self.results: list[Result] = []
        self.skipped: list[str] = []
        self.meta = {
            "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "argv": sys.argv[1:],
            "profile": args.profile,
            "nodes": args.nodes,
            "restart_nodes": args.restart_nodes,
            "only": args.only,
            "controllers": args.controllers,
            "skip_throttled": args.skip_throttled,
            "nodeipam_flags": args.nodeipam_flag,
            "create_parallelism": CREATE_PARALLELISM,
            "create_rate": args.create_rate,
            "pools": args.pools,
            "pool_cidrs": args.pool_cidrs,
            "stall_log": args.stall_log,
            "service_cidr": SERVICE_CIDR,
        }

    def add(self, result: Result) -> None:
        print(result.row(), file=sys.stderr, flush=True)
        self.results.append(result)
        self.write()

    def skip(self, note: str) -> None:
        print(f"note: {note}", file=sys.stderr, flush=True)
        self.skipped.append(note)
        self.write()

    def write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        document = {"meta": self.meta, "skipped": self.skipped, "results": [asdict(result) for result in self.results]}
        self.path.write_text(json.dumps(document, indent=1) + "\n")


def kcm_fits(kind: str, scenario: str, subnets: int, report: Report) -> bool:
    """False, with a note, where kube-controller-manager cannot serve the scenario from one cluster CIDR."""
    if kind != "kube-controller-manager" or subnets <= KCM_MAX_SUBNETS:
        return True
    report.skip(
        f"kube-controller-manager skipped in {scenario}: it needs {subnets} node subnets, "
        f"more than the {KCM_MAX_SUBNETS} kube-controller-manager serves from one cluster CIDR"
    )
    return False


def control_plane() -> LocalControlPlane:
    """A local control plane as every scenario runs on: limits raised so that 64 creates in flight are not throttled."""
    return LocalControlPlane(
        service_cidr=SERVICE_CIDR,
        extra_apiserver_flags=("--max-requests-inflight=2000", "--max-mutating-requests-inflight=1000"),
        apiserver_env=apigc.GCTRACE_ENV,  # a line per collection in its log: a pools run says when it marked
    )


async def main_async(args: argparse.Namespace, report: Report) -> None:
    logs = Path("bench/logs")
    logs.mkdir(parents=True, exist_ok=True)
    if "pools" in args.only:
        for n in args.nodes:
            print(f"running pools burst of {n}: {args.pools} x {args.pool_cidrs} ...", file=sys.stderr)
            for setup in pool_setups(n, args.pools, args.pool_cidrs):
                with control_plane() as plane:
                    async with KubeClient(Credentials.load(plane.kubeconfig), max_in_flight=CREATE_PARALLELISM) as kube:
                        result = await pools_burst(kube, plane, logs, n, setup, args.create_rate)
                print(pools_row(result), file=sys.stderr, flush=True)
                load = apiload.Load(result.apiserver_requests, result.apiserver_allocated_bytes)
                for line in (result.phases_line(), result.gc_line(), load.line(n, result.seconds)):
                    if line:
                        print(line, file=sys.stderr, flush=True)
                report.add(result)
    if not set(args.only) - {"pools"}:
        return
    with control_plane() as plane:
        async with KubeClient(Credentials.load(plane.kubeconfig), max_in_flight=CREATE_PARALLELISM) as kube:
            if "burst" in args.only:
                for n in args.nodes:
                    space = address_space(n)
                    for kind in args.controllers:
                        if not kcm_fits(kind, f"burst of {n}", n, report):
                            continue
                        for throttled in (False, True) if kind == "kube-controller-manager" else (False,):
                            if throttled and args.skip_throttled:
                                continue
                            print(f"running burst of {n}: {kind}{' throttled' if throttled else ''} ...", file=sys.stderr)
                            report.add(await burst(kube, plane, logs, kind, n, throttled, space, args.create_rate))
            if "startup" in args.only:
                for n in args.nodes:
                    for kind in args.controllers:
                        if kcm_fits(kind, f"start with {n} waiting", n, report):
                            print(f"running start with {n} waiting: {kind} ...", file=sys.stderr)
                            report.add(await startup(kube, plane, logs, kind, n, address_space(n)))
            if "restart" in args.only:
                for n in args.restart_nodes:
                    subnets = n + 2 * len(args.controllers)  # the held Nodes and two newcomers per controller
                    kinds = [kind for kind in args.controllers if kcm_fits(kind, f"restart with {n} assigned", subnets, report)]
                    if kinds:
                        print(f"running restart with {n} assigned: {', '.join(kinds)} ...", file=sys.stderr)
                        for result in await restart(kube, plane, logs, kinds, n, address_space(subnets)):
                            report.add(result)


def sizes(text: str) -> list[int]:
    """A comma-separated list of Node counts."""
    values = [int(part) for part in text.split(",") if part]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive Node counts, got {text!r}")
    return values


def positive_rate(text: str) -> float:
    """Nodes per second, above zero."""
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected Nodes per second above 0, got {text!r}")
    return value


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def choices(allowed: tuple[str, ...]) -> Any:
    def parse(text: str) -> list[str]:
        values = [part for part in text.split(",") if part]
        unknown = sorted(set(values) - set(allowed))
        if unknown or not values:
            raise argparse.ArgumentTypeError(f"expected some of {','.join(allowed)}, got {text!r}")
        return [value for value in allowed if value in values]

    return parse


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--profile", choices=sorted(PROFILES), default="small", help="preset sizes (default small); see above")
    parser.add_argument("--nodes", type=sizes, help="Nodes for the burst and start-up scenarios, comma-separated (small: 2000)")
    parser.add_argument(
        "--restart-nodes", type=sizes, help="assigned Nodes for the restart scenario, comma-separated (small: 20000)"
    )
    parser.add_argument("--only", type=choices(SCENARIOS), help=f"comma-separated scenarios, of {','.join(SCENARIOS)}")
    parser.add_argument(
        "--controllers",
        type=choices(CONTROLLERS),
        default=list(CONTROLLERS),
        help=f"comma-separated controllers to run, of {','.join(CONTROLLERS)} (default {','.join(CONTROLLERS[:2])})",
    )
    parser.add_argument(
        "--skip-throttled", action="store_true", default=None, help="skip kube-controller-manager at its default QPS 20/30"
    )
    parser.add_argument("--json", type=Path, help="raw results and time series (default bench/results/<timestamp>.json)")
    parser.add_argument(
        "--nodeipam-flag",
        action="append",
        default=[],
        metavar="FLAG",
        help="a flag added to nodeipam's command line, e.g. --nodeipam-flag=--max-requests-in-flight=128 (repeatable)",
    )
    parser.add_argument(
        "--create-rate",
        type=positive_rate,
        metavar="NODES_PER_SECOND",
        help="in the burst, create Nodes no faster than this (default: as fast as 64 creates in flight allow)",
    )
    parser.add_argument("--pools", type=positive_int, default=100, help="NodeCIDRPools in the pools scenario (default 100)")
    parser.add_argument("--pool-cidrs", type=positive_int, default=16, help="CIDRs per NodeCIDRPool there (default 16)")
    parser.add_argument(
        "--stall-log",
        action="store_true",
        help="run nodeipam under bench.stallwatch: its event loop's stalls, with stacks, next to its log",
    )
    args = parser.parse_args(argv)
    for key, value in PROFILES[args.profile].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    for n in args.nodes + args.restart_nodes:
        try:
            address_space(n + 2 * len(args.controllers))
            if "pools" in args.only:
                pool_layout(n, args.pools, args.pool_cidrs)
        except ValueError as error:
            parser.error(str(error))
    if args.json is None:
        args.json = Path("bench/results") / f"{datetime.datetime.now().strftime('%Y%m%d-%H%M%S')}.json"
    return args


def main() -> None:
    args = parse_args()
    Controller.nodeipam_flags = tuple(args.nodeipam_flag)
    Controller.record_stalls = args.stall_log
    report = Report(args.json, args)
    asyncio.run(main_async(args, report))
    print(TABLE_HEADER)
    for result in report.results:
        print(result.row())
    print()
    pooled = [result for result in report.results if result.kind == "pools"]
    if pooled:
        print(POOLS_TABLE_HEADER)
        for result in pooled:
            print(pools_row(result))
        for baseline, with_pools in zip(pooled[::2], pooled[1::2], strict=False):
            print(pools_ratio(baseline, with_pools))
        print()
    for note in report.skipped:
        print(f"note: {note}")
    by_scenario: dict[str, dict[str, Result]] = {}
    for result in report.results:
        by_scenario.setdefault(result.scenario, {})[result.controller] = result
    for scenario, entries in by_scenario.items():
        ours = entries.get("nodeipam")
        for label, theirs in entries.items():
            if ours and label != "nodeipam":
                print(f"{scenario}: {label} / nodeipam = {theirs.seconds / ours.seconds:.2f}x time")
    print(f"raw results: {args.json}")


if __name__ == "__main__":
    main()
