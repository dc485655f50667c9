"""What a scenario runs and watches: the controller under test (`Controller`), the bench's own watch of Nodes
(`Watcher`), the probes and scrapes (`Prober`), the once-a-second samples (`Sampler`), the Node creates, and the
control plane they run against.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import multiprocessing
import os
import subprocess
import sys
import time
from multiprocessing.connection import Connection
from pathlib import Path

import aiohttp
import netaddr

from bench import apigc, machine
from bench.machine import StallTotals
from bench.probe import Sample, probe
from bench.result import Series
from bench.watch import watch_nodes
from controller.kube import ApiError, KubeClient
from localcluster.binaries import ensure_binaries
from localcluster.cluster import ADMIN_TOKEN, LocalControlPlane
from localcluster.nodebodies import realistic_node

CLUSTER_CIDR = "10.0.0.0/8"
KCM_MAX_SUBNETS = 2**16  # kube-controller-manager's cidrset refuses more node subnets per cluster CIDR
SERVICE_CIDR = "192.168.0.0/16"  # outside the cluster CIDR, so neither controller loses subnets to it
CREATE_PARALLELISM = 64
SETTLE_TIMEOUT = 900.0
AFTER_BURST_SECONDS = 5.0  # after a burst or start-up is assigned, before the end RSS is read
SAMPLE_INTERVAL = 1.0


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


def control_plane() -> LocalControlPlane:
    """A local control plane as every scenario runs on: limits raised so that 64 creates in flight are not throttled."""
    return LocalControlPlane(
        service_cidr=SERVICE_CIDR,
        extra_apiserver_flags=("--max-requests-inflight=2000", "--max-mutating-requests-inflight=1000"),
        apiserver_env=apigc.GCTRACE_ENV,  # a line per collection in its log: a pools run says when it marked
    )
