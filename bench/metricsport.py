"""The metrics port while the controller's main thread holds the interpreter: on a thread of it, or in a child.

    python -m bench.metricsport [--seconds 30] [--pools 100] [--pool-cidrs 16] [--hogs 1]

One process plays the controller: a registry as the controller's at scale (every metric of
controller.metrics, and --pools pools of --pool-cidrs CIDRs each in the pool gauges), its main loop's
heartbeat, and a main loop that runs back to back in slices of 50-300 ms (as kopf's event processing and
the Node work do through a burst: BENCHMARKS.md, "Probes under load"): LIST pages of 500 realistic Nodes
decoded (json.loads holds the GIL for each page, ~30 ms, whoever asks for it) between 20 ms stretches of
pure Python (which hands the GIL over within the switch interval when another thread asks). --hogs
processes spin on the CPUs meanwhile, as the API server and etcd do in a burst (two cores: one hog and
the main thread fill them).

The port is served, in turn, two ways, each for --seconds with the main loop busy, after as long idle:

  thread  the HealthServer on a thread and event loop of that process, /metrics collected there after
          asking the main loop to refresh the pools' view (waited 0.1 s at most): the design before
          controller.metrics_port (what server_thread.py did);
  child   controller.metrics_port.MetricsProcess: the HealthServer in a child process, fed frames.

A client in a process of its own sends GET /healthz every 0.1 s and GET /metrics every 0.25 s, each on a
new HTTPS connection (as a kubelet and Prometheus do), and records how long each took. /metrics is an
always-allowed path here, so no API server is needed: the token review (cached 10 s for a scraper) is left
out of both. Printed: p50 / p99 / worst per design, load, and the thread's figure over the child's.
Nothing here asserts a limit.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import http.client
import json
import math
import os
import random
import ssl
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from controller.loopwatch import Heartbeat, share_the_gil_promptly, watch_loop
from controller.metrics import Metrics
from controller.metrics_port import MetricsProcess
from controller.poolstatus import CIDRUsage, FamilyUsage, PoolUsage
from controller.secure_serving import DEFAULT_ALWAYS_ALLOW_PATHS, ServingOptions
from controller.server import HealthServer
from localcluster.nodebodies import realistic_node

ROOT = Path(__file__).resolve().parents[1]
OPEN_METRICS = ServingOptions(always_allow_paths=(*DEFAULT_ALWAYS_ALLOW_PATHS, "/metrics"))
HEALTHZ_INTERVAL = 0.1
SCRAPE_INTERVAL = 0.25
TIMEOUT = 10.0
#: The main loop's slices of pure Python, in seconds (uniform between these).
SLICE_SECONDS = (0.05, 0.3)
REFRESH_WAIT_SECONDS = 0.1  # the old design's wait for the main loop's refresh
PAGE_NODES = 500  # a LIST page, as the controller and kopf decode them


# -- the client, in a process of its own --------------------------------------------------------------------


def client(port: int, seconds: float) -> None:
    """Request /healthz and /metrics for `seconds`; print {path: [seconds, ...]} as JSON (failures: TIMEOUT)."""
    stop = threading.Event()
    taken: dict[str, list[float]] = {"/healthz": [], "/metrics": []}

    def loop(path: str, interval: float) -> None:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        while not stop.is_set():
            sent = time.monotonic()
            took = TIMEOUT
            try:
                connection = http.client.HTTPSConnection("127.0.0.1", port, timeout=TIMEOUT, context=context)
                try:
                    connection.request("GET", path)
                    response = connection.getresponse()
                    body = response.read()
                    if response.status == 200 and (path != "/metrics" or b"node_ipam_controller_pool_nodes" in body):
                        took = time.monotonic() - sent
                finally:
                    connection.close()
            except (OSError, http.client.HTTPException):
                pass
            taken[path].append(took)
            stop.wait(max(0.0, interval - (time.monotonic() - sent)))

    threads = [
        threading.Thread(target=loop, args=("/healthz", HEALTHZ_INTERVAL), daemon=True),
        threading.Thread(target=loop, args=("/metrics", SCRAPE_INTERVAL), daemon=True),
    ]
    for thread in threads:
        thread.start()
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join(TIMEOUT + 1)
    print(json.dumps(taken))


def measure(port: int, seconds: float) -> dict[str, list[float]]:
    done = subprocess.run(
        [sys.executable, "-m", "bench.metricsport", "client", str(port), str(seconds)],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    taken: dict[str, list[float]] = json.loads(done.stdout)
    return taken


# -- the controller's part -------------------------------------------------------------------------------------


def scale_registry(pools: int, pool_cidrs: int) -> Metrics:
    """Every metric of the controller, with `pools` pools of `pool_cidrs` IPv4 CIDRs in the pool gauges."""
    metrics = Metrics()
    usages = [
        PoolUsage(
            name=f"pool-{index}",
            priority=index,
            selector="",
            disabled=False,
            families=(
                FamilyUsage(
                    node_mask_size=26,
                    capacity=pool_cidrs * 64,
                    allocated=pool_cidrs * 60,
                    free=pool_cidrs * 4,
                    per_cidr=tuple(CIDRUsage(f"10.{index}.{cidr}.0/24", 64, 60, False) for cidr in range(pool_cidrs)),
                ),
            ),
            nodes=pool_cidrs * 60,
            blocking_nodes=(),
        )
        for index in range(pools)
    ]
    metrics.track_pools(lambda: usages)
    for loop in ("node", "kopf", "resync"):
        metrics.background_failures.labels(loop)
    for _ in range(1000):
        metrics.event_loop_lag.observe(random.random() / 10)
        metrics.allocation_seconds.observe(random.random())
    return metrics


class ThreadPort:
    """The design before: the HealthServer on a thread and loop of this process, collecting there."""

    def __init__(self, exposition: Callable[[], bytes], heartbeat: Heartbeat, refresh: Callable[[], None]) -> None:
        self._exposition = exposition
        self._heartbeat = heartbeat
        self._refresh = refresh
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="metrics-port", daemon=True)
        self._server: HealthServer | None = None
        self._main: asyncio.AbstractEventLoop | None = None
        self._refreshing: concurrent.futures.Future[None] | None = None

    @property
    def ports(self) -> list[int]:
        return self._server.ports if self._server is not None else []

    async def start(self) -> None:
        self._main = asyncio.get_running_loop()
        self._thread.start()
        await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(self._open(), self._loop))

    async def stop(self) -> None:
        await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(self._close(), self._loop))
        self._loop.call_soon_threadsafe(self._loop.stop)
        await asyncio.to_thread(self._thread.join)

    async def _open(self) -> None:
        self._server = HealthServer("127.0.0.1:0", None, serving=OPEN_METRICS, collect=self._collect)
        self._server.set_liveness(lambda: self._heartbeat.problem(10.0))
        await self._server.start()

    async def _close(self) -> None:
        if self._server is not None:
            await self._server.stop()

    async def _collect(self) -> bytes:
        assert self._main is not None
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = asyncio.run_coroutine_threadsafe(_call(self._refresh), self._main)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(self._refreshing)), REFRESH_WAIT_SECONDS)
        return self._exposition()


async def _call(work: Callable[[], None]) -> None:
    work()


async def busy_main_loop(until: threading.Event) -> None:
    """Slices of SLICE_SECONDS back to back, yielding to the loop between them: in each, LIST pages decoded (one
    json.loads of PAGE_NODES realistic Nodes holds the GIL throughout, ~30 ms) between stretches of pure Python."""
    page = json.dumps({"items": [realistic_node(f"node-{index}", index) for index in range(PAGE_NODES)]})
    while not until.is_set():
        end = time.monotonic() + random.uniform(*SLICE_SECONDS)
        churn: dict[int, list[int]] = {}
        count = 0
        while time.monotonic() < end:
            json.loads(page)
            stretch = time.monotonic() + 0.02
            while time.monotonic() < stretch:
                for step in range(200):
                    churn[(count + step) % 5000] = [step, count]
                count += 1
        await asyncio.sleep(0)


@contextlib.contextmanager
def hogs(count: int) -> Iterator[None]:
    spinning = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]
    try:
        yield
    finally:
        for process in spinning:
            process.kill()
            process.wait()


async def run(design: str, seconds: float, pools: int, pool_cidrs: int, hog_count: int) -> dict[str, dict[str, list[float]]]:
    """{"idle" | "busy": {path: seconds taken}} for one design."""
    share_the_gil_promptly()
    metrics = scale_registry(pools, pool_cidrs)
    heartbeat = Heartbeat()
    pulse = asyncio.ensure_future(watch_loop(heartbeat, metrics.event_loop_lag.observe))
    port: ThreadPort | MetricsProcess
    if design == "thread":
        port = ThreadPort(metrics.exposition, heartbeat, metrics.refresh_views)
    else:
        port = MetricsProcess("127.0.0.1:0", metrics.exposition, heartbeat, serving=OPEN_METRICS, refresh=metrics.refresh_views)
    await port.start()
    figures: dict[str, dict[str, list[float]]] = {}
    try:
        figures["idle"] = await asyncio.to_thread(measure, port.ports[0], seconds / 2)
        stop = threading.Event()
        with hogs(hog_count):
            busy = asyncio.ensure_future(busy_main_loop(stop))
            try:
                figures["busy"] = await asyncio.to_thread(measure, port.ports[0], seconds)
                figures["load"] = {"1min": [os.getloadavg()[0]]}
            finally:
                stop.set()
                await busy
        if isinstance(port, MetricsProcess) and port.pid is not None:
            status = Path(f"/proc/{port.pid}/status").read_text()
            figures["child"] = {"rss_mib": [int(status.split("VmRSS:")[1].split()[0]) / 1024]}
        figures["text"] = {"bytes": [float(len(metrics.exposition()))]}
    finally:
        await port.stop()
        pulse.cancel()
    return figures


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(share * len(ordered)) - 1)]


def row(values: list[float]) -> tuple[float, float, float]:
    return statistics.median(values) * 1000, percentile(values, 0.99) * 1000, max(values) * 1000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.metricsport", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command")
    client_command = commands.add_parser("client", help="(internal) the requesting process")
    client_command.add_argument("port", type=int)
    client_command.add_argument("seconds", type=float)
    parser.add_argument("--seconds", type=float, default=30.0, help="seconds of busy main loop per design (default 30)")
    parser.add_argument("--pools", type=int, default=100)
    parser.add_argument("--pool-cidrs", type=int, default=16)
    parser.add_argument("--hogs", type=int, default=1, help="processes spinning on the CPUs while busy (default 1)")
    parser.add_argument("--json", help="write the raw figures here")
    args = parser.parse_args(argv)
    if args.command == "client":
        client(args.port, args.seconds)
        return 0
    results = {
        design: asyncio.run(run(design, args.seconds, args.pools, args.pool_cidrs, args.hogs)) for design in ("thread", "child")
    }
    if args.json:
        Path(args.json).write_text(json.dumps(results))
    text_kib = results["child"]["text"]["bytes"][0] / 1024
    print(
        f"{os.cpu_count()} CPUs; /metrics text {text_kib:.0f} KiB ({args.pools} pools x {args.pool_cidrs} CIDRs);"
        f" busy: main loop in 50-300 ms slices of page decoding and Python, {args.hogs} hog(s)"
    )
    print(f"child RSS {results['child']['child']['rss_mib'][0]:.1f} MiB")
    print("| design | main loop | path | requests | failed | p50 ms | p99 ms | worst ms |")
    print("|---|---|---|---|---|---|---|---|")
    for design, figures in results.items():
        for state in ("idle", "busy"):
            for path, values in figures[state].items():
                p50, p99, worst = row(values)
                failed = sum(1 for value in values if value >= TIMEOUT)
                print(f"| {design} | {state} | {path} | {len(values)} | {failed} | {p50:.0f} | {p99:.0f} | {worst:.0f} |")
    loads = {design: figures["load"]["1min"][0] for design, figures in results.items()}
    print(f"load (1 min) at the end of the busy run: thread {loads['thread']:.1f}, child {loads['child']:.1f}")
    print("thread / child, busy main loop:")
    for path in ("/healthz", "/metrics"):
        thread, child = row(results["thread"]["busy"][path]), row(results["child"]["busy"][path])
        ratios = ", ".join(f"{name} {a / b:.1f}x" for name, a, b in zip(("p50", "p99", "worst"), thread, child, strict=True))
        print(f"  {path}: {ratios}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
