"""The bench's own instruments: the check that a burst's ranges are disjoint, and what its watch reads."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any, cast

import msgspec
import netaddr
import pytest

from bench import apigc, apiload
from bench.__main__ import parse_args
from bench.harness import CREATE_PARALLELISM, Watcher, create_nodes, overlapping
from bench.machine import StallTotals, pressure_seconds, steal_seconds
from bench.pools import pool_layout
from bench.result import Result, Series, node_phases, percentile
from bench.watch import _WatchEvent


@pytest.mark.parametrize(
    ("cidrs", "expected"),
    [
        pytest.param(["10.0.0.0/24", "10.0.1.0/24", "10.0.2.0/25"], 0, id="ipv4-disjoint"),
        pytest.param(["10.0.1.0/24", "10.0.0.0/16", "10.0.2.0/24"], 2, id="ipv4-two-inside-a-larger-one"),
        pytest.param(["10.0.0.0/24", "10.0.0.0/24"], 1, id="ipv4-the-same-twice"),
        pytest.param(["fd00::/64", "fd00:0:0:1::/64"], 0, id="ipv6-disjoint"),
        pytest.param(["fd00::/64", "fd00::/65"], 1, id="ipv6-nested"),
        pytest.param(["10.0.0.0/24", "::a00:0/120"], 0, id="dual-stack-families-never-overlap"),
    ],
)
def test_overlapping_counts_ranges_that_overlap_an_earlier_one(cidrs: list[str], expected: int) -> None:
    assert overlapping(cidrs) == expected


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        pytest.param(
            {
                "type": "MODIFIED",
                "object": {"metadata": {"name": "n1", "resourceVersion": "7"}, "spec": {"podCIDR": "10.0.0.0/24"}},
            },
            ("MODIFIED", "n1", "7", "10.0.0.0/24", 0),
            id="ipv4-assigned",
        ),
        pytest.param(
            {"type": "ADDED", "object": {"metadata": {"name": "n2", "resourceVersion": "8"}, "spec": {"podCIDR": "fd00::/64"}}},
            ("ADDED", "n2", "8", "fd00::/64", 0),
            id="ipv6-assigned",
        ),
        pytest.param(
            {"type": "ERROR", "object": {"kind": "Status", "code": 410, "reason": "Expired", "metadata": {}}},
            ("ERROR", "", "", "", 410),
            id="resume-past-the-watch-cache",
        ),
    ],
)
def test_the_watch_process_reads_only_what_it_needs(line: dict[str, Any], expected: tuple[str, str, str, str, int]) -> None:
    event = msgspec.json.Decoder(_WatchEvent).decode(json.dumps({**line, "unread": ["x" * 100]}))
    meta = event.object.metadata
    assert (event.type, meta.name, meta.resourceVersion, event.object.spec.podCIDR, event.object.code) == expected


class RecordingKube:
    """Takes creates as the API server would, noting when each was sent; holds the answers while `held`."""

    def __init__(self) -> None:
        self.sent: list[float] = []
        self.answered = 0
        self.held = asyncio.Event()
        self.held.set()

    async def request(self, method: str, path: str, body: Any = None, **_: Any) -> Any:
        self.sent.append(time.monotonic())
        await self.held.wait()
        self.answered += 1
        return body


@pytest.mark.parametrize("nodes", [pytest.param(40, id="fewer-than-the-workers"), pytest.param(100, id="more")])
def test_an_unpaced_burst_has_as_many_creates_in_flight_as_it_allows(nodes: int) -> None:
    kube = RecordingKube()
    kube.held.clear()  # no create is answered until as many as allowed are in flight
    together = min(CREATE_PARALLELISM, nodes)

    async def go() -> dict[str, float]:
        burst = asyncio.ensure_future(create_nodes(cast(Any, kube), [f"n{i}" for i in range(nodes)]))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                while len(kube.sent) < together:
                    await asyncio.sleep(0.001)
        in_flight = len(kube.sent) - kube.answered
        kube.held.set()
        created = await burst
        assert in_flight == together, f"{in_flight} creates in flight before any answer, not {together}"
        return created

    assert len(asyncio.run(go())) == len(kube.sent) == nodes


def test_a_paced_burst_sends_no_create_before_its_time() -> None:
    kube = RecordingKube()
    per_second, nodes = 200.0, 40

    async def go() -> dict[str, float]:
        return await create_nodes(cast(Any, kube), [f"n{i}" for i in range(nodes)], per_second=per_second)

    started = time.monotonic()
    created = asyncio.run(go())
    assert len(created) == len(kube.sent) == nodes
    late = [(i, at - started) for i, at in enumerate(sorted(kube.sent)) if at - started < i / per_second]
    assert not late, f"{len(late)} creates sent before their slot; the first (index, seconds after the start): {late[:3]}"


@pytest.mark.parametrize(("text", "accepted"), [("150", 150.0), ("0.5", 0.5), ("0", None), ("-3", None), ("fast", None)])
def test_the_create_rate_is_a_positive_number(text: str, accepted: float | None, capsys: pytest.CaptureFixture[str]) -> None:
    if accepted is not None:
        assert parse_args(["--create-rate", text]).create_rate == accepted
        return
    with pytest.raises(SystemExit):
        parse_args(["--create-rate", text])
    assert "--create-rate" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("nodes", "pools", "cidrs", "mask", "first", "last"),
    [
        pytest.param(20000, 100, 16, 24, "10.0.0.0/20", "10.99.240.0/20", id="twenty-thousand-at-24"),
        pytest.param(100000, 100, 16, 25, "10.0.0.0/19", "10.199.224.0/19", id="a-hundred-thousand-at-25"),
        pytest.param(10, 1, 1, 24, "10.0.0.0/20", "10.0.0.0/20", id="one-pool"),
    ],
)
def test_the_pools_hold_the_burst_side_by_side_without_overlap(
    nodes: int, pools: int, cidrs: int, mask: int, first: str, last: str
) -> None:
    found_mask, layout = pool_layout(nodes, pools, cidrs)
    flat = [cidr for pool in layout for cidr in pool]
    assert (found_mask, len(layout), {len(pool) for pool in layout}, flat[0], flat[-1]) == (mask, pools, {cidrs}, first, last)
    assert overlapping(flat) == 0
    assert sum(2 ** (found_mask - netaddr.IPNetwork(cidr).prefixlen) for cidr in flat) >= nodes


def test_pools_that_cannot_hold_the_burst_are_refused_before_anything_runs(capsys: pytest.CaptureFixture[str]) -> None:
    assert parse_args(["--profile", "pools"]).pools == 100
    with pytest.raises(SystemExit):
        parse_args(["--profile", "pools", "--nodes", "20000000"])
    assert "do not fit" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("values", "fraction", "expected"), [([], 0.99, 0.0), ([3.0, 1.0, 2.0], 0.5, 2.0), ([1.0] * 99 + [9.0], 0.99, 9.0)]
)
def test_percentile_is_the_nearest_rank(values: list[float], fraction: float, expected: float) -> None:
    assert percentile(values, fraction) == expected


@pytest.mark.parametrize(
    ("appeared", "expected_latencies", "expected_lag"),
    [
        # b was delivered 0.5 s after its create returned; the lag is the last delivery's, after the last create.
        ({"a": 10.1, "b": 11.5}, [0.1, 0.5], 0.5),
        # a watch event may come before the create's answer: the figure is negative, not hidden.
        ({"a": 9.9, "b": 11.0}, [-0.1, 0.0], 0.0),
        # b was first seen in a re-list, already assigned: no delivery time of its own, so none is reported.
        ({"a": 10.1}, [], None),
    ],
)
def test_the_api_servers_delivery_is_split_from_the_latency(
    appeared: dict[str, float], expected_latencies: list[float], expected_lag: float | None
) -> None:
    watcher = Watcher("unused")
    watcher.appeared = appeared
    result = Result("burst", "pools", "nodeipam", 2, "10.0.0.0/8", 24, 1.0)
    result.record_delivery(watcher, ["a", "b"], {"b": 11.0, "a": 10.0})
    assert result.delivery_latencies == pytest.approx(expected_latencies)
    assert result.delivery_lag_seconds == (pytest.approx(expected_lag) if expected_lag is not None else None)


def traced(name: str, seen: float | None, sent: float, returned: float, outcome: str = "applied") -> dict[str, Any]:
    return {"name": name, "seen": seen, "sent": sent, "returned": returned, "outcome": outcome}


@pytest.mark.parametrize(
    ("records", "expected"),
    [
        # created at 10, handed to the reconciler at 10.01, patch sent at 10.03, back at 10.06, watch saw it at 10.1.
        ([traced("a", 10.01, 10.03, 10.06)], {"a": (0.01, 0.02, 0.03, 0.04)}),
        # a Node patched twice (the first answer lost) has no single path to split: left out, not averaged in.
        ([traced("a", 10.01, 10.03, 10.06, "error"), traced("a", None, 10.07, 10.08)], {}),
        # a Node the trace never saw handed over (its event came before the trace was installed): left out.
        ([traced("a", None, 10.03, 10.06)], {}),
        # a Node outside the burst is not counted; one of it that the controller never patched is not either.
        ([traced("other", 1.0, 1.0, 1.0)], {}),
    ],
)
def test_a_nodes_latency_splits_into_its_phases_at_the_controllers_timestamps(
    records: list[dict[str, Any]], expected: dict[str, tuple[float, ...]]
) -> None:
    phases = node_phases(records, ["a"], {"a": 10.0}, {"a": 10.1})
    assert phases.keys() == expected.keys()
    for name, values in expected.items():
        assert phases[name] == pytest.approx(values)
        assert sum(phases[name]) == pytest.approx(0.1)  # the phases add up to the Node's latency


def test_the_last_node_assigned_is_the_one_whose_phases_are_kept() -> None:
    records = [traced("a", 10.01, 10.02, 10.03), traced("b", 11.05, 11.06, 11.08)]
    result = Result("burst", "pools", "nodeipam", 2, "10.0.0.0/8", 24, 1.0)
    result.record_phases(records, ["a", "b"], {"a": 10.0, "b": 11.0}, {"a": 12.0, "b": 11.1})
    assert result.last_node == "a"  # created first, assigned last: it set the lag
    assert result.last_node_phases == pytest.approx(
        {"to controller": 0.01, "in controller": 0.01, "patch": 0.01, "back to watch": 1.97}
    )
    assert result.phase_percentiles["back to watch"] == pytest.approx([1.97, 1.97, 1.97])
    assert "the last Node (a): to controller 10.0" in result.phases_line()


GCTRACE = """\
gc 1 @0.024s 2%: 0.41+4.2+0.24 ms clock, 0.82+0.038/0.82/0.39+0.48 ms cpu, 3->4->1 MB, 4 MB goal, 0 MB stacks, 0 MB globals, 2 P
I1207 02:22:04.123456    3597 alloc.go:329] "allocated clusterIPs"
gc 80 @543.617s 5%: 1.0+6209+0.042 ms clock, 2.0+0.56/3110/428+0.084 ms cpu, 4185->4738->2531 MB, 4881 MB goal, 3 MB stacks, 0 MB globals, 2 P
gc 81 @569.315s 5%: 4.0+5254+0.041 ms clock, 8.1+1.4/2635/1185+0.083 ms cpu, 4343->4813->2530 MB, 5066 MB goal, 2 P
"""


def test_the_api_servers_collections_are_read_from_its_go_runtime_trace() -> None:
    found = apigc.marks(GCTRACE, spawned_at=1000.0)
    assert [(mark.start, mark.seconds, mark.heap_mb, mark.live_mb) for mark in found] == [
        (pytest.approx(1000.024), pytest.approx(0.0042), 3, 1),
        (pytest.approx(1543.617), pytest.approx(6.209), 4185, 2531),
        (pytest.approx(1569.315), pytest.approx(5.254), 4343, 2530),
    ]
    assert apigc.marking(found, 1545.0) and apigc.marking(found, 1569.315)
    assert not apigc.marking(found, 1550.0) and not apigc.marking(found, 1000.0)


def test_patches_are_split_by_whether_the_api_servers_collector_marked_when_they_were_sent() -> None:
    result = Result("burst", "pools", "nodeipam", 4, "10.0.0.0/8", 24, 100.0)
    result.started_monotonic = 1500.0
    marks = [apigc.Mark(1400.0, 5.0, 900, 500), apigc.Mark(1543.617, 6.209, 4185, 2531)]
    records = [
        traced("a", None, 1544.0, 1544.05),  # while it marked: slow
        traced("b", None, 1545.0, 1545.01),  # while it marked
        traced("c", None, 1520.0, 1520.005),  # otherwise
        traced("d", None, 1590.0, 1590.006),  # otherwise, and the last sent
    ]
    result.record_apiserver_gc(marks, records)
    assert result.apiserver_gc_marks == [[43.62, 6.209, 2531]]  # the one before the burst is left out
    assert result.patches_while_marking == [2, pytest.approx(0.05), 0.5]
    assert result.patches_otherwise == [2, pytest.approx(0.006), 0.0]
    assert result.last_patch_while_marking is False
    assert "marked 6 s of 100 (1 collections" in result.gc_line() and "outside a mark" in result.gc_line()


APISERVER_METRICS = """\
# HELP apiserver_request_total [STABLE] Counter of apiserver requests broken out for each verb, dry run value, group, version, resource, scope, component, and HTTP response code.
# TYPE apiserver_request_total counter
apiserver_request_total{code="201",component="apiserver",dry_run="",group="",resource="nodes",scope="resource",subresource="",verb="POST",version="v1"} 3000
apiserver_request_total{code="200",component="apiserver",dry_run="",group="",resource="nodes",scope="resource",subresource="",verb="PATCH",version="v1"} 2990
apiserver_request_total{code="409",component="apiserver",dry_run="",group="",resource="nodes",scope="resource",subresource="",verb="PATCH",version="v1"} 10
apiserver_request_total{code="200",component="apiserver",dry_run="",group="nodeipam.io",resource="nodecidrpools",scope="resource",subresource="status",verb="PATCH",version="v1alpha1"} 118
apiserver_request_total{code="0",component="apiserver",dry_run="",group="",resource="nodes",scope="cluster",subresource="",verb="WATCH",version="v1"} 2
# HELP go_memstats_alloc_bytes Number of bytes allocated in heap and currently in use.
# TYPE go_memstats_alloc_bytes gauge
go_memstats_alloc_bytes 1.28104192e+08
# HELP go_memstats_alloc_bytes_total Total number of bytes allocated in heap until now, even if released already.
# TYPE go_memstats_alloc_bytes_total counter
go_memstats_alloc_bytes_total 3.52124008e+09
"""


def test_the_api_servers_requests_and_allocations_are_read_from_its_metrics() -> None:
    load = apiload.read(APISERVER_METRICS)
    assert load.requests == {
        "POST nodes": 3000,
        "PATCH nodes": 3000,  # whatever the answer
        "PATCH nodecidrpools/status": 118,
        "WATCH nodes": 2,
    }
    assert load.allocated_bytes == 3.52124008e09  # the counter, not the gauge of what is in use


def test_a_bursts_load_is_what_grew_between_two_readings() -> None:
    before = apiload.Load({"POST nodes": 10, "WATCH nodes": 2, "PUT leases": 5}, 1e9)
    after = apiload.Load({"POST nodes": 3010, "PATCH nodes": 3000, "WATCH nodes": 2, "PUT leases": 9}, 4e9)
    grown = after.since(before)
    assert list(grown.requests.items()) == [("POST nodes", 3000), ("PATCH nodes", 3000), ("PUT leases", 4)]
    assert grown.allocated_bytes == 3e9
    assert grown.line(3000, 30.0) == (
        "the API server served 6004 requests (2.00 per Node, 200/s): POST nodes 3000, PATCH nodes 3000, PUT leases 4; "
        "it allocated 977 KiB per Node"
    )
    assert "POST nodes 3000, 2 other kinds 3004; it allocated" in grown.line(3000, 30.0, kinds=1)


PROC_STAT = "cpu  583856 11 123082 6164421 3397 0 10226 1178 0 0\ncpu0 291928 5 61541 3082210 1698 0 5113 589 0 0\n"
PRESSURE = "some avg10=0.00 avg60=0.06 avg300=0.02 total=38767301\nfull avg10=0.00 avg60=0.06 avg300=0.02 total=25710801\n"


@pytest.mark.parametrize(
    ("text", "kind", "expected"),
    [
        (PRESSURE, "some", 38.767301),
        (PRESSURE, "full", 25.710801),
        ("some avg10=0.00 avg60=0.00 avg300=0.00 total=2042552023\n", "full", 0.0),  # /proc/pressure/cpu before 5.13
        ("", "full", 0.0),  # no PSI in this kernel
    ],
)
def test_pressure_stalls_are_read_from_the_total_in_microseconds(text: str, kind: str, expected: float) -> None:
    assert pressure_seconds(text, kind) == pytest.approx(expected)


@pytest.mark.parametrize(("text", "expected"), [(PROC_STAT, 11.78), ("cpu  1 2 3 4\n", 0.0), ("", 0.0)])
def test_stolen_cpu_is_the_aggregate_lines_steal_column(text: str, expected: float) -> None:
    assert steal_seconds(text, 100) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("start", "end", "expected"),
    [
        (1.5, 1.6, StallTotals(0.2, 0.02, 0.0, 0.5)),  # within the second sample's interval (1, 2]
        (0.5, 2.5, StallTotals(0.3, 0.02, 0.1, 0.5)),  # across two intervals
        (5.0, 6.0, StallTotals()),  # after the last sample
    ],
)
def test_the_machines_stalls_during_a_request_sum_the_samples_that_overlap_it(
    start: float, end: float, expected: StallTotals
) -> None:
    series = Series(
        t=[0.0, 1.0, 2.0, 3.0],
        steal_ms=[0.0, 100.0, 200.0, 0.0],
        io_full_ms=[0.0, 0.0, 20.0, 0.0],
        memory_full_ms=[0.0, 100.0, 0.0, 0.0],
        cpu_some_ms=[0.0, 0.0, 500.0, 0.0],
    )
    assert series.machine_stalls(start, end) == expected


def test_a_sample_of_stall_totals_keeps_what_grew_since_the_last() -> None:
    assert StallTotals(2.0, 5.5, 1.0, 9.0).minus(StallTotals(1.0, 5.0, 1.0, 10.0)) == StallTotals(1.0, 0.5, 0.0, 0.0)
