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
import datetime
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench import apiload
from bench.harness import (
    AFTER_BURST_SECONDS,
    CREATE_PARALLELISM,
    KCM_MAX_SUBNETS,
    SERVICE_CIDR,
    Controller,
    Sampler,
    Watcher,
    address_space,
    check_disjoint,
    control_plane,
    create_nodes,
    delete_all_nodes,
)
from bench.pools import (
    POOLS_TABLE_HEADER,
    pool_layout,
    pool_setups,
    pools_burst,
    pools_ratio,
    pools_row,
)
from bench.result import TABLE_HEADER, Result
from controller.credentials import Credentials
from controller.kube import KubeClient
from localcluster.cluster import LocalControlPlane

#: nodeipam-elected: nodeipam with leader election on, as the chart runs it (every patch waits for the Lease to
#: record it first); the others run alone, without election.
CONTROLLERS = ("nodeipam", "kube-controller-manager", "nodeipam-elected")
SCENARIOS = ("burst", "startup", "restart", "pools")
SETTLE_SECONDS = 30.0  # after the restart scenario, before the end RSS is read


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
                for line in (result.phases_line(), result.gc_line(), load.line(n, result.apiserver_load_seconds)):
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
