"""Prometheus metrics with kube-controller-manager's names (spelled correctly).

The metrics live on a registry this module creates on request, never on
import, so tests and several controllers in one process do not collide.

The text of /metrics (`Metrics.exposition`) is made on a thread of its own
(controller.metrics_port, which feeds it to the process serving the port), not on
the main loop: prometheus_client's metrics take their own locks, the functions
behind gauges read a length or an attribute, and what only the main loop may
read (the pools' usage, from its dicts) is a view that loop refreshes. The
per-pool families are formatted apart, once per change (controller.poolmetrics).
"""

from __future__ import annotations

import dataclasses
import functools
import gc
import time
from collections.abc import Callable, Iterable, Iterator, Sequence

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from controller.allocators import CIDRSet
from controller.gcpolicy import GENERATIONS, PauseRecorder
from controller.loopwatch import LAG_BUCKETS
from controller.poolmetrics import LatestView, PoolMetrics
from controller.poolstatus import PoolUsage
from controller.secure_serving import REFUSAL_REASONS

NAMESPACE = "node_ipam_controller"
CLUSTER_CIDR_LABEL = "clusterCIDR"
TRIES_BUCKETS = (1, 5, 25, 125, 625)
#: Seconds between two counts of the objects frozen for the garbage collector. Counting walks every one of them
#: with the interpreter held (~20 ns each: ~40 ms for the 2 million of 20,000 Nodes), so it is not done per frame.
FROZEN_COUNT_INTERVAL_SECONDS = 300.0


class Metrics:
    """The controller's metrics, on their own registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        # No `_created` series (kube-controller-manager, in Go, exports none): they doubled the series of every
        # counter and histogram a scrape formats. prometheus_client keeps this setting for the whole process.
        prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = registry if registry is not None else CollectorRegistry()
        labels = [CLUSTER_CIDR_LABEL]
        self.allocations = Counter(
            "cidrset_cidrs_allocations",
            "Node CIDRs allocated, per cluster CIDR.",
            labels,
            namespace=NAMESPACE,
            registry=self.registry,
        )
        self.releases = Counter(
            "cidrset_cidrs_releases",
            "Node CIDRs released, per cluster CIDR.",
            labels,
            namespace=NAMESPACE,
            registry=self.registry,
        )
        self.usage = Gauge(
            "cidrset_usage_cidrs",
            "Fraction of the node CIDRs in use (0..1), per cluster CIDR.",
            labels,
            namespace=NAMESPACE,
            registry=self.registry,
        )
        self.max_cidrs = Gauge(
            "cidrset_max_cidrs",
            "Node CIDRs the cluster CIDR holds.",
            labels,
            namespace=NAMESPACE,
            registry=self.registry,
        )
        # Upstream's misspelt name, beside the corrected one, so that kube-controller-manager dashboards keep working.
        self.max_cidrs_upstream = Gauge(
            "cirdset_max_cidrs",
            "Node CIDRs the cluster CIDR holds (kube-controller-manager's misspelt name of cidrset_max_cidrs).",
            labels,
            namespace=NAMESPACE,
            registry=self.registry,
        )
        self.allocated = Gauge(
            "cidrset_allocated_cidrs",
            "Node CIDRs in use, per cluster CIDR.",
            labels,
            namespace=NAMESPACE,
            registry=self.registry,
        )
        self.tries = Histogram(
            "cidrset_allocation_tries_per_request",
            "Attempts (reserve + patch) needed to give a Node its podCIDRs, per cluster CIDR of the flags.",
            labels,
            buckets=TRIES_BUCKETS,
            namespace=NAMESPACE,
            registry=self.registry,
        )
        self.events = Counter(
            "events",
            "Kubernetes Events emitted, by type and reason.",
            ["type", "reason"],
            namespace=NAMESPACE,
            registry=self.registry,
        )
        self.patch_failures = Counter(
            "patch_failures",
            "podCIDR patches the API server refused or could not take, by HTTP status.",
            ["status"],
            namespace=NAMESPACE,
            registry=self.registry,
        )
        self.nodes_waiting = Gauge(
            "nodes_waiting_for_cidr",
            "Nodes without podCIDRs because the range is exhausted.",
            namespace=NAMESPACE,
            registry=self.registry,
        )
        self.longest_wait = Gauge(
            "longest_node_wait_seconds",
            "How long the Node waiting longest for a range has waited (0: none waits).",
            namespace=NAMESPACE,
            registry=self.registry,
        )
        self.duplicate_nodes = Gauge(
            "duplicate_pod_cidr_nodes",
            "Nodes whose podCIDR overlaps another Node's (set by someone else: this controller hands out none).",
            namespace=NAMESPACE,
            registry=self.registry,
        )
        self.nodes_queued = Gauge(
            "nodes_queued",
            "Nodes whose latest event waits to be handled (the work queue's depth).",
            namespace=NAMESPACE,
            registry=self.registry,
        )
        self.relists = Counter(
            "node_relists",
            "LISTs of all Nodes after a gap in the watch (the resync lists nothing otherwise).",
            namespace=NAMESPACE,
            registry=self.registry,
        )
        self.allocation_seconds = Histogram(
            "allocation_duration_seconds",
            "Time from seeing a Node without podCIDRs to its patch landing.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            namespace=NAMESPACE,
            registry=self.registry,
        )

        # The per-pool families are formatted apart, each pool's lines once per change (controller.poolmetrics).
        self.pools = PoolMetrics(NAMESPACE, TRIES_BUCKETS)
        self.background_failures = Counter(
            "background_failures",
            "Failures of background work, by loop: restarts of a loop, or one Node's handling ('node').",
            ["loop"],
            namespace=NAMESPACE,
            registry=self.registry,
        )

        self.event_loop_lag = Histogram(
            "event_loop_lag_seconds",
            "How much later than due the main event loop ran a 0.1 s timer: the time something else held it.",
            buckets=LAG_BUCKETS,
            namespace=NAMESPACE,
            registry=self.registry,
        )

        self.metrics_port_refused = Counter(
            "metrics_port_refused",
            "Connections and requests the metrics port refused or cut short, by reason (see README, metrics port).",
            ["reason"],
            namespace=NAMESPACE,
            registry=self.registry,
        )
        for reason in REFUSAL_REASONS:  # every reason shows, at 0, from the start
            self.metrics_port_refused.labels(reason)

    def refused_on_metrics_port(self, reason: str, count: int = 1) -> None:
        self.metrics_port_refused.labels(reason).inc(count)

    def track_sets(self, sets: Iterable[CIDRSet]) -> None:
        """Usage gauges computed at scrape time from the sets themselves."""
        for cidr_set in sets:
            label = str(cidr_set.cluster_cidr)
            self.max_cidrs.labels(label).set(cidr_set.max_cidrs)
            self.max_cidrs_upstream.labels(label).set(cidr_set.max_cidrs)
            self.usage.labels(label).set_function(functools.partial(_usage, cidr_set))
            self.allocated.labels(label).set_function(functools.partial(_allocated, cidr_set))
            self.allocations.labels(label)
            self.releases.labels(label)

    def track_leadership(self, lease_name: str, leading: Callable[[], bool]) -> None:
        """kube-controller-manager's leader_election_master_status{name}: 1 while this replica leads, else 0.

        Read at scrape time, so a standby shows 0 and dashboards and alerts built for upstream work unchanged.
        """
        status = Gauge(
            "leader_election_master_status",
            "1 while this process leads the Lease `name`, 0 otherwise (kube-controller-manager's name).",
            ["name"],
            registry=self.registry,
        )
        status.labels(lease_name).set_function(lambda: 1.0 if leading() else 0.0)

    def track_pools(self, usages: Callable[[], Sequence[PoolUsage]]) -> None:
        """Per-pool gauges: pools come and go at runtime. `usages` reads the main loop's state, so it runs there,
        at `refresh_views()`; a frame, on the metrics feed's thread, reads what it last gave."""
        self.pools.usage.track(LatestView(usages))

    def refresh_views(self) -> None:
        """On the main loop: read again what only the main loop may read (the pools' usage) for the next frames."""
        self.pools.usage.refresh()

    def exposition(self) -> bytes:
        """The text of /metrics: the registry's families, then the per-pool ones."""
        return generate_latest(self.registry) + self.pools.text()

    def sample_value(self, name: str, labels: dict[str, str] | None = None) -> float | None:
        """One sample of `exposition()`, parsed back (None: absent): for checks and tools, not for the hot path."""
        wanted = labels or {}
        for family in text_string_to_metric_families(self.exposition().decode()):
            for sample in family.samples:
                if sample.name == name and sample.labels == wanted:
                    return float(sample.value)
        return None

    def track_gc_pauses(self, pauses: PauseRecorder, clock: Callable[[], float] = time.monotonic) -> None:
        """The garbage collector's pauses per generation, read from the recorder at scrape time."""
        self.registry.register(_GcPauseCollector(pauses, clock))

    def track_dry_run(self) -> DryRunCounters:
        """`run --dry-run`'s counters: how its decisions compare with what another allocator wrote, what it withheld."""
        return DryRunCounters(
            agreements=Counter(
                "plan_agreements",
                "Dry run: Nodes that got from another allocator exactly the podCIDRs this controller would have given.",
                namespace=NAMESPACE,
                registry=self.registry,
            ),
            disagreements=Counter(
                "plan_disagreements",
                "Dry run: decisions that differ from what another allocator wrote (a Node got other podCIDRs than"
                " predicted, or ranges predicted for a Node went to another).",
                namespace=NAMESPACE,
                registry=self.registry,
            ),
            withheld=Counter(
                "dry_run_writes_withheld",
                "Dry run: writes decided and not sent, by kind (podcidr, event, pool_status, pool_finalizer).",
                ["kind"],
                namespace=NAMESPACE,
                registry=self.registry,
            ),
        )


@dataclasses.dataclass(frozen=True)
class DryRunCounters:
    agreements: Counter
    disagreements: Counter
    withheld: Counter


class _GcPauseCollector(Collector):
    """How long the cyclic garbage collector held the process, per generation (2: a full collection)."""

    def __init__(self, pauses: PauseRecorder, clock: Callable[[], float] = time.monotonic) -> None:
        self._pauses = pauses
        self._clock = clock
        self._frozen: tuple[float, int] | None = None  # (when counted, how many)

    def collect(self) -> Iterator[HistogramMetricFamily | GaugeMetricFamily]:
        yield GaugeMetricFamily(
            f"{NAMESPACE}_gc_frozen_objects",
            "Objects frozen for the cyclic garbage collector (never scanned until thawed): the start-up state "
            f"and what full collections left, as counted at most {FROZEN_COUNT_INTERVAL_SECONDS:g} s ago.",
            value=self._frozen_count(),
        )
        family = HistogramMetricFamily(
            f"{NAMESPACE}_gc_pause_seconds",
            "Pauses of Python's cyclic garbage collector, per generation; in a pause nothing else runs.",
            labels=["generation"],
        )
        for generation in GENERATIONS:
            family.add_metric(
                [str(generation)], list(self._pauses.cumulative(generation)), sum_value=self._pauses.seconds[generation]
            )
        yield family

    def _frozen_count(self) -> int:
        now = self._clock()
        if self._frozen is None or now - self._frozen[0] >= FROZEN_COUNT_INTERVAL_SECONDS:
            self._frozen = (now, gc.get_freeze_count())
        return self._frozen[1]

    def describe(self) -> Iterator[HistogramMetricFamily | GaugeMetricFamily]:
        return iter(())


def _usage(cidr_set: CIDRSet) -> float:
    return cidr_set.usage


def _allocated(cidr_set: CIDRSet) -> float:
    return float(cidr_set.allocated)
