"""What a scenario measured (`Result`, with the controller's samples in `Series`), and how a burst's Node latencies
split into phases: the figures `python -m bench` prints and writes as JSON.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from bench import apigc
from bench.machine import StallTotals

if TYPE_CHECKING:
    from bench.harness import Controller, Sampler, Watcher


SLOW_PATCH = 0.03  # a podCIDR patch slower than this is a slow one (bench.apigc: the API server collecting)


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
    #: /healthz requests over bench.pools.SLOW_PROBE (port "probe" or "metrics") and scrapes over its SLOW_SCRAPE
    #: (port "scrape"): sent (s since the start; and monotonic, as the controller's stall log), took, and of that the TCP connect,
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
    #: The requests the API server served from just before the first create until AFTER_BURST_SECONDS after the
    #: last Node was assigned, keyed "VERB resource[/subresource]" (bench.apiload): the Nodes' creates and patches,
    #: and what else was asked; the bytes it allocated meanwhile; and how long that was, s.
    apiserver_requests: dict[str, int] = field(default_factory=dict)
    apiserver_allocated_bytes: float = 0.0
    apiserver_load_seconds: float = 0.0

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
