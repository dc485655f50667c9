"""Metrics under kube-controller-manager's names, so that its dashboards and alerts work unchanged."""

from __future__ import annotations

import netaddr
import pytest

from controller.allocators import CIDRSet
from controller.metrics import Metrics

LEASE = "ipam-nodeipam"


@pytest.mark.parametrize(("leading", "status"), [(True, 1.0), (False, 0.0)])
def test_leader_status_follows_the_lease_at_scrape_time(leading: bool, status: float) -> None:
    metrics = Metrics()
    now = {"leading": not leading}
    metrics.track_leadership(LEASE, lambda: now["leading"])
    now["leading"] = leading  # read when scraped, not when tracked
    assert metrics.registry.get_sample_value("leader_election_master_status", {"name": LEASE}) == status


@pytest.mark.parametrize(
    ("cluster_cidr", "mask", "max_cidrs"),
    [("10.244.0.0/16", 24, 256), ("fd00:10:244::/56", 64, 256), ("10.0.0.0/8", 20, 4096)],
)
def test_max_cidrs_under_the_corrected_and_the_upstream_name(cluster_cidr: str, mask: int, max_cidrs: int) -> None:
    metrics = Metrics()
    metrics.track_sets([CIDRSet(cluster_cidr, mask)])
    for name in ("node_ipam_controller_cidrset_max_cidrs", "node_ipam_controller_cirdset_max_cidrs"):
        assert metrics.registry.get_sample_value(name, {"clusterCIDR": cluster_cidr}) == max_cidrs, name


@pytest.mark.parametrize(("cluster_cidr", "mask"), [("10.244.0.0/16", 24), ("fd00:10::/56", 64)], ids=["ipv4", "ipv6"])
def test_counters_and_histograms_export_no_created_series(cluster_cidr: str, mask: int) -> None:
    """As kube-controller-manager: `_total`, `_bucket`, `_count`, `_sum`, and no `_created` beside each."""
    metrics = Metrics()
    metrics.track_sets([CIDRSet(netaddr.IPNetwork(cluster_cidr), mask)])
    metrics.allocations.labels(cluster_cidr).inc()
    metrics.tries.labels(cluster_cidr).observe(1)
    metrics.pools.tries.observe("p", 1)
    text = metrics.exposition().decode()
    assert f'node_ipam_controller_cidrset_cidrs_allocations_total{{clusterCIDR="{cluster_cidr}"}} 1.0' in text
    assert 'node_ipam_controller_pool_allocation_tries_per_request_count{pool="p"} 1.0' in text
    assert "_created" not in text
