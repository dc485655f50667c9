"""What the controller's main thread was doing while its event loop stalled: a watcher thread in its process.

    python -m bench.stallwatch OUT.jsonl run --kubeconfig=... (the controller's own arguments)
    python -m bench.stallwatch --explain RESULTS.json (a bench run with --stall-log: each slow probe, and why)

Runs the controller as `python -m controller` would, with a thread that samples the main thread's stack
every TICK. A stall is a run of samples in which the main thread is not waiting in the event loop's
selector (the loop is busy, or blocked) lasting STALL or longer. One JSON line per stall: when it began
and ended (monotonic, the clock bench/probe.py stamps its requests with), the main thread's CPU time and
run-queue wait within it (/proc/self/task/TID/schedstat: runnable but not running is CPU the machine did
not give), the garbage collector's pauses within it, the watcher's own worst lateness (a watcher late
too: the GIL was held in C, or the process was not scheduled), and the stacks seen, most frequent first.
Late ticks of the watcher outside stalls are written too (kind "late"). For investigation: the sampling
takes the GIL a hundred times a second.

Next to OUT (`trace_path`), one JSON line per podCIDR patch the controller sent: the Node, when the controller
was first handed its event, when the patch was sent and when its answer came (monotonic), so that a Node's
latency splits into the API server's delivery, the controller's own time, the patch's round trip and the
delivery of its result (`bench.result.node_phases`).
"""

from __future__ import annotations

import collections
import gc
import json
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

TICK = 0.01  # seconds between two samples
STALL = 0.05  # a busy run at least this long is written
LATE = 0.03  # a watcher tick this much overdue is written
DEPTH = 14  # frames kept per stack, innermost first


def schedstat(tid: int) -> tuple[float, float]:
    """(seconds on a CPU, seconds runnable but waiting for one) of thread `tid` so far."""
    with open(f"/proc/self/task/{tid}/schedstat") as file:
        run, wait, _ = file.read().split()
    return int(run) / 1e9, int(wait) / 1e9


def idle(frame: FrameType) -> bool:
    """The event loop waits for I/O: the innermost Python frame is the selector's select()."""
    return frame.f_code.co_name == "select" and frame.f_code.co_filename.endswith("selectors.py")


def stack(frame: FrameType | None) -> str:
    frames: list[str] = []
    while frame is not None and len(frames) < DEPTH:
        code = frame.f_code
        frames.append(f"{Path(code.co_filename).stem}:{code.co_name}:{frame.f_lineno}")
        frame = frame.f_back
    return " < ".join(frames)


class GcPauses:
    """The collector's recent pauses: (start, end, generation), monotonic."""

    def __init__(self) -> None:
        self.pauses: collections.deque[tuple[float, float, int]] = collections.deque(maxlen=256)
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.monotonic()
        else:
            self.pauses.append((self._started, time.monotonic(), info["generation"]))

    def within(self, start: float, end: float) -> list[tuple[float, float, int]]:
        return [(round(a, 4), round(b - a, 4), g) for a, b, g in list(self.pauses) if b >= start and a <= end]


class Watcher:
    def __init__(self, out: TextIO) -> None:
        self.out = out
        main = threading.main_thread()
        assert main.ident is not None and main.native_id is not None
        self.main_ident, self.main_tid = main.ident, main.native_id
        self.gc = GcPauses()
        gc.callbacks.append(self.gc)

    def write(self, record: dict[str, Any]) -> None:
        self.out.write(json.dumps(record) + "\n")
        self.out.flush()

    def run(self) -> None:
        me = threading.get_native_id()
        busy_since: float | None = None
        at_start = (0.0, 0.0, 0.0, 0.0)
        stacks: collections.Counter[str] = collections.Counter()
        worst_late = 0.0
        due = time.monotonic() + TICK
        while True:
            time.sleep(max(0.0, due - time.monotonic()))
            now = time.monotonic()
            late = now - due
            due = now + TICK
            frame = sys._current_frames().get(self.main_ident)
            main_run, main_wait = schedstat(self.main_tid)
            own_run, own_wait = schedstat(me)
            if frame is None:
                return
            if not idle(frame):
                if busy_since is None:
                    busy_since, at_start, worst_late = now, (main_run, main_wait, own_run, own_wait), 0.0
                    stacks.clear()
                stacks[stack(frame)] += 1
                worst_late = max(worst_late, late)
            elif busy_since is not None:
                if now - busy_since >= STALL:
                    self.write(
                        {
                            "kind": "stall",
                            "start": round(busy_since, 4),
                            "end": round(now, 4),
                            "seconds": round(now - busy_since, 4),
                            "main_cpu": round(main_run - at_start[0], 4),
                            "main_runqueue_wait": round(main_wait - at_start[1], 4),
                            "watcher_runqueue_wait": round(own_wait - at_start[3], 4),
                            "watcher_worst_late": round(worst_late, 4),
                            "gc": self.gc.within(busy_since, now),
                            "stacks": stacks.most_common(6),
                        }
                    )
                busy_since = None
            if late >= LATE and busy_since is None:
                self.write({"kind": "late", "at": round(now, 4), "late": round(late, 4), "gc": self.gc.within(now - late, now)})


def trace_path(stall_log: Path) -> Path:
    """Where the Node trace of a run whose stalls go to `stall_log` is written."""
    return stall_log.with_name(stall_log.name.removesuffix(".stalls.jsonl") + ".nodes.jsonl")


class NodeTrace:
    """Per podCIDR patch: when its Node's first event reached the reconciler, when it was sent, when it returned.

    Installed by wrapping two methods of the controller's classes before it starts: it measures, it changes nothing.
    """

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.seen: dict[str, float] = {}

    def install(self) -> None:
        from controller.kube import KubeClient
        from controller.model import NodeInfo
        from controller.reconciler import Reconciler

        trace, handed, patch = self, Reconciler.node_event, KubeClient.patch_pod_cidrs

        async def node_event(reconciler: Reconciler, kind: str | None, node: NodeInfo) -> None:
            if kind != "DELETED":
                trace.seen.setdefault(node.name, time.monotonic())
            await handed(reconciler, kind, node)

        async def patch_pod_cidrs(client: KubeClient, node: NodeInfo, cidrs: Any) -> None:
            sent, outcome = time.monotonic(), "error"
            try:
                await patch(client, node, cidrs)
                outcome = "applied"
            finally:
                seen = trace.seen.pop(node.name, None)
                record = {"name": node.name, "seen": seen, "sent": sent, "returned": time.monotonic(), "outcome": outcome}
                trace.out.write(json.dumps(record) + "\n")

        Reconciler.node_event = node_event  # type: ignore[method-assign,assignment]
        KubeClient.patch_pod_cidrs = patch_pod_cidrs  # type: ignore[method-assign,assignment]


def explain(results: Path) -> None:
    """For each /healthz over the target in a bench run, the phases of its time and the stalls it overlapped."""
    for result in json.loads(results.read_text())["results"]:
        if not result.get("stall_log"):
            continue
        records = [json.loads(line) for line in Path(result["stall_log"]).read_text().splitlines()]
        stalls = [record for record in records if record["kind"] == "stall"]
        print(f"{result['scenario']}: {len(result['slow_probes'])} slow probes, {len(stalls)} stalls over {STALL}s")
        for slow in result["slow_probes"]:
            sent, took = slow["monotonic"], slow["took"]
            print(
                f"  at {slow['at']:.1f}s: {1000 * took:.0f} ms (TCP {1000 * slow['tcp']:.0f}, TLS {1000 * slow['tls']:.0f}, "
                f"probe's own CPU wait {1000 * slow['probe_wait']:.0f}, server's token review "
                f"{1000 * slow.get('review', 0.0):.0f}, collection {1000 * slow.get('collect', 0.0):.0f})"
            )
            for stall in stalls:
                if stall["end"] >= sent and stall["start"] <= sent + took:
                    gc_seconds = sum(seconds for _, seconds, _ in stall["gc"])
                    print(
                        f"    stall {stall['start'] - sent:+.3f}s, {1000 * stall['seconds']:.0f} ms: main thread on CPU "
                        f"{1000 * stall['main_cpu']:.0f}, waiting for a CPU {1000 * stall['main_runqueue_wait']:.0f}, "
                        f"GC {1000 * gc_seconds:.0f}, watcher late {1000 * stall['watcher_worst_late']:.0f} ms"
                    )
                    for where, count in stall["stacks"][:3]:
                        print(f"      {count} x {where[:160]}")
            for late in records:
                if late["kind"] == "late" and sent <= late["at"] <= sent + took + LATE:
                    print(f"    watcher late {1000 * late['late']:.0f} ms at {late['at'] - sent:+.3f}s, GC {late['gc']}")


def main(argv: list[str]) -> int:
    if argv[0] == "--explain":
        explain(Path(argv[1]))
        return 0
    out = open(argv[0], "a", buffering=1)  # noqa: SIM115 -- open for the life of the process
    watcher = Watcher(out)
    threading.Thread(target=watcher.run, name="stallwatch", daemon=True).start()
    NodeTrace(open(trace_path(Path(argv[0])), "a", buffering=1)).install()  # noqa: SIM115 -- as `out`
    from controller.cli import main as controller

    run: Callable[[list[str]], int] = controller
    return run(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
