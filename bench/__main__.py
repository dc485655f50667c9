"""Side-by-side figures: nodeipam vs kube-controller-manager's nodeipam, one API server, one run.

    python -m bench [--nodes 2000] [--restart-nodes 20000] [--only burst,startup,restart]

Every Node is a realistic ~10 KB body (labels, conditions, addresses,
capacity, 40 images), created 64 at a time, as kubelets registering would.
Per-Node latency is the time from the create call returning to the watch
showing its podCIDR (what upstream's test/integration/ipamperf records).
Figures are printed as a table with ratios; nothing here asserts a limit.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from controller.kube import Credentials, KubeClient
from controller.localcluster.binaries import ensure_binaries
from controller.localcluster.cluster import LocalControlPlane
from controller.localcluster.nodebodies import realistic_node

CLUSTER_CIDR = "10.128.0.0/9"  # 32768 node subnets of /24
NODE_MASK = 24
CREATE_PARALLELISM = 64
SETTLE_TIMEOUT = 900.0
SETTLE_SECONDS = 30.0  # after the restart scenario, before the peak RSS is read


@dataclass
class Result:
    scenario: str
    controller: str
    seconds: float
    latencies: list[float] = field(default_factory=list)
    rss_mb: float = 0.0
    note: str = ""
    cpu_seconds: float = 0.0

    @classmethod
    def of(
        cls, scenario: str, controller: Controller, seconds: float, latencies: list[float] | None = None, note: str = ""
    ) -> Result:
        """A result with the stopped controller's peak RSS and CPU time."""
        return cls(scenario, controller.label, seconds, latencies or [], controller.peak_rss_mb, note, controller.cpu_seconds)

    def row(self) -> str:
        lat = sorted(self.latencies)

        def pct(p: float) -> str:
            return f"{lat[min(len(lat) - 1, int(p * len(lat)))]:.2f}" if lat else "-"

        mean = f"{statistics.fmean(lat):.2f}" if lat else "-"
        return (
            f"| {self.scenario} | {self.controller} | {self.seconds:.1f} | {mean} | {pct(0.5)} | {pct(0.99)} | "
            f"{(f'{lat[-1]:.2f}' if lat else '-')} | {self.rss_mb:.0f} | {self.cpu_seconds:.1f} | {self.note} |"
        )


class Controller:
    """One allocator process: ours or kube-controller-manager's."""

    def __init__(self, kind: str, plane: LocalControlPlane, log_dir: Path, throttled: bool = False) -> None:
        self.kind = kind
        self.label = kind + (" (QPS 20/30)" if throttled else "")
        if kind == "nodeipam":
            argv = [
                sys.executable,
                "-m",
                "controller",
                "run",
                f"--kubeconfig={plane.kubeconfig}",
                f"--cluster-cidr={CLUSTER_CIDR}",
                f"--node-cidr-mask-size={NODE_MASK}",
                "--leader-elect=false",
                "--metrics-bind-address=0",
                "--log-level=warning",
            ]
            if throttled:
                argv += ["--kube-api-qps=20", "--kube-api-burst=30"]
        else:
            kcm = ensure_binaries(("kube-controller-manager",))["kube-controller-manager"]
            argv = [
                str(kcm),
                f"--kubeconfig={plane.kubeconfig}",
                "--controllers=nodeipam",
                "--allocate-node-cidrs=true",
                f"--cluster-cidr={CLUSTER_CIDR}",
                f"--node-cidr-mask-size={NODE_MASK}",
                f"--service-cluster-ip-range={plane.service_cidr}",
                "--leader-elect=false",
                "--secure-port=0",
                "-v=0",
            ]
            argv += [] if throttled else ["--kube-api-qps=10000", "--kube-api-burst=10000"]
        self.log = open(log_dir / f"{kind}-{int(time.time() * 1000)}.log", "wb")  # noqa: SIM115
        self.process = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT)
        self.peak_rss_mb = 0.0
        self.cpu_seconds = 0.0

    def sample_cpu(self) -> None:
        """User + system CPU time the process has used so far."""
        try:
            fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
            self.cpu_seconds = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            pass

    def sample_rss(self) -> None:
        try:
            for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    self.peak_rss_mb = max(self.peak_rss_mb, int(line.split()[1]) / 1024)
        except OSError:
            pass

    def stop(self) -> None:
        self.sample_rss()
        self.sample_cpu()
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


class Watcher:
    """Records when each Node is first seen with a podCIDR."""

    def __init__(self, kube: KubeClient) -> None:
        self.kube = kube
        self.assigned: dict[str, float] = {}
        self.changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        nodes, version = await self.kube.list_nodes()
        now = time.monotonic()
        for node in nodes:
            if node.pod_cidrs:
                self.assigned[node.name] = now
        self._task = asyncio.ensure_future(self._watch(version))

    async def _watch(self, version: str) -> None:
        creds = self.kube.credentials
        headers = {"Authorization": f"Bearer {creds.current_token()}"}
        connector = aiohttp.TCPConnector(ssl=creds.ssl_context())
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=None)) as session:
            while True:
                params = {"watch": "1", "resourceVersion": version, "allowWatchBookmarks": "true"}
                async with session.get(creds.server + "/api/v1/nodes", params=params, headers=headers) as response:
                    async for line in response.content:
                        event = json.loads(line)
                        obj = event.get("object", {})
                        version = obj.get("metadata", {}).get("resourceVersion", version)
                        if event.get("type") in ("ADDED", "MODIFIED") and obj.get("spec", {}).get("podCIDR"):
                            self.assigned.setdefault(obj["metadata"]["name"], time.monotonic())
                            self.changed.set()

    async def wait_all(self, names: list[str], timeout: float = SETTLE_TIMEOUT) -> float:
        deadline = time.monotonic() + timeout
        while not all(name in self.assigned for name in names):
            self.changed.clear()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                missing = sum(1 for name in names if name not in self.assigned)
                raise TimeoutError(f"{missing} of {len(names)} Nodes never got a podCIDR")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), timeout=min(remaining, 1.0))
        return max(self.assigned[name] for name in names)

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()


async def create_nodes(kube: KubeClient, names: list[str], offset: int = 0, preset: bool = False) -> dict[str, float]:
    """Create Nodes 64 at a time; returns when each create call returned."""
    created: dict[str, float] = {}
    gate = asyncio.Semaphore(CREATE_PARALLELISM)

    async def one(index: int, name: str) -> None:
        cidrs = (f"10.{128 + (index >> 8) % 128}.{index % 256}.0/24",) if preset else ()
        body = realistic_node(name, offset + index, cidrs)
        async with gate:
            await kube.request("POST", "/api/v1/nodes", body=body)
        created[name] = time.monotonic()

    await asyncio.gather(*(one(offset + i, name) for i, name in enumerate(names)))
    return created


async def delete_all_nodes(kube: KubeClient) -> None:
    await kube.request("DELETE", "/api/v1/nodes")
    while (await kube.request("GET", "/api/v1/nodes", params={"limit": "1"}))["items"]:
        await asyncio.sleep(0.5)


async def burst(kube: KubeClient, plane: LocalControlPlane, logs: Path, kind: str, n: int, throttled: bool) -> Result:
    """The controller runs; n Nodes register at full speed; until all have a podCIDR."""
    await delete_all_nodes(kube)
    controller = Controller(kind, plane, logs, throttled)
    await asyncio.sleep(3)  # let it finish its start-up before the burst
    watcher = Watcher(kube)
    await watcher.start()
    names = [f"burst-{i}" for i in range(n)]
    started = time.monotonic()
    created = await create_nodes(kube, names)
    done = await watcher.wait_all(names)
    controller.stop()
    await watcher.stop()
    latencies = [watcher.assigned[name] - created[name] for name in names]
    return Result.of(f"burst of {n}", controller, done - started, latencies)


async def startup(kube: KubeClient, plane: LocalControlPlane, logs: Path, kind: str, n: int) -> Result:
    """n unassigned Nodes exist; start the controller; until all are assigned."""
    await delete_all_nodes(kube)
    names = [f"wait-{i}" for i in range(n)]
    await create_nodes(kube, names)
    watcher = Watcher(kube)
    await watcher.start()
    started = time.monotonic()
    controller = Controller(kind, plane, logs)
    done = await watcher.wait_all(names)
    controller.stop()
    await watcher.stop()
    return Result.of(f"start with {n} waiting", controller, done - started)


async def restart(kube: KubeClient, plane: LocalControlPlane, logs: Path, kinds: list[str], n: int) -> list[Result]:
    """n assigned Nodes exist; start the controller and create a Node at once (time from start until it is
    assigned); then create a second one (its latency shows any backlog of the initial listing); then let
    the controller settle for SETTLE_SECONDS and read its peak RSS."""
    await delete_all_nodes(kube)
    await create_nodes(kube, [f"held-{i}" for i in range(n)], preset=True)
    results = []
    for index, kind in enumerate(kinds):
        watcher = Watcher(kube)
        await watcher.start()
        started = time.monotonic()
        controller = Controller(kind, plane, logs)
        first, second = f"newcomer-{index}-a", f"newcomer-{index}-b"
        await create_nodes(kube, [first], offset=n + 2 * index)
        done = await watcher.wait_all([first])
        created = await create_nodes(kube, [second], offset=n + 2 * index + 1)
        second_done = await watcher.wait_all([second])
        await asyncio.sleep(SETTLE_SECONDS)
        controller.stop()
        await watcher.stop()
        note = f"a Node created once the first was assigned waited {second_done - created[second]:.2f} s"
        results.append(Result.of(f"restart with {n} assigned", controller, done - started, note=note))
    return results


async def main_async(args: argparse.Namespace) -> list[Result]:
    logs = Path("bench/logs")
    logs.mkdir(parents=True, exist_ok=True)
    results: list[Result] = []
    with LocalControlPlane(
        extra_apiserver_flags=("--max-requests-inflight=2000", "--max-mutating-requests-inflight=1000")
    ) as plane:
        async with KubeClient(Credentials.load(plane.kubeconfig), max_in_flight=CREATE_PARALLELISM) as kube:
            scenarios: list[tuple[str, Callable[[], Awaitable[Any]]]] = []
            if "burst" in args.only:
                for kind, throttled in (
                    ("nodeipam", False),
                    ("kube-controller-manager", False),
                    ("kube-controller-manager", True),
                ):
                    if throttled and args.skip_throttled:
                        continue
                    scenarios.append(("burst", lambda k=kind, t=throttled: burst(kube, plane, logs, k, args.nodes, t)))
            if "startup" in args.only:
                for kind in ("nodeipam", "kube-controller-manager"):
                    scenarios.append(("startup", lambda k=kind: startup(kube, plane, logs, k, args.nodes)))
            if "restart" in args.only:
                scenarios.append(
                    ("restart", lambda: restart(kube, plane, logs, ["nodeipam", "kube-controller-manager"], args.restart_nodes))
                )
            for name, run in scenarios:
                print(f"running {name} ...", file=sys.stderr, flush=True)
                outcome = await run()
                for result in outcome if isinstance(outcome, list) else [outcome]:
                    print(result.row(), file=sys.stderr, flush=True)
                    results.append(result)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--nodes", type=int, default=2000, help="Nodes for the burst and start-up scenarios (default 2000)")
    parser.add_argument(
        "--restart-nodes", type=int, default=20000, help="assigned Nodes for the restart scenario (default 20000)"
    )
    parser.add_argument("--only", default="burst,startup,restart", help="comma-separated scenarios")
    parser.add_argument("--skip-throttled", action="store_true", help="skip kube-controller-manager at its default QPS 20/30")
    args = parser.parse_args()
    args.only = set(args.only.split(","))
    results = asyncio.run(main_async(args))
    print("| scenario | controller | total s | mean s | p50 s | p99 s | max s | peak RSS MB | CPU s | note |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for result in results:
        print(result.row())
    print()
    by_scenario: dict[str, dict[str, Result]] = {}
    for result in results:
        by_scenario.setdefault(result.scenario, {})[result.controller] = result
    for scenario, entries in by_scenario.items():
        ours = entries.get("nodeipam")
        for label, theirs in entries.items():
            if ours and label != "nodeipam":
                print(f"{scenario}: {label} / nodeipam = {theirs.seconds / ours.seconds:.2f}x time")


if __name__ == "__main__":
    main()
