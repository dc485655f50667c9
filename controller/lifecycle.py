"""The application's lifecycle: start-up, leader election, the health server, shutdown.

One process: the metrics port from the start (served by a child process,
controller.metrics_port), the kubelet's probes (from another,
controller.probes), a Lease to compete for (on another), and,
once leading, the rebuild, the start-up sweep, the background loops and kopf
(wired in handlers.py) on the main loop. Losing the lease stops allocating at
once and exits.

Stopping is bounded: once a signal or a lost lease starts it, the process
exits within `SHUTDOWN_GRACE_SECONDS` whatever holds the cleanup up, and a
second signal exits at once. Cutting cleanup short is as safe as a SIGKILL,
which the next leader's rebuild settles.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import threading
from collections.abc import Awaitable, Callable
from typing import Any

from controller import gcpolicy, handlers, inflight, kopfpatches, loopwatch
from controller.config import Settings
from controller.credentials import Credentials
from controller.dryrun import DryRun
from controller.kube import KubeClient
from controller.leader import LeaseKeeper
from controller.metrics import Metrics
from controller.metrics_port import MetricsProcess
from controller.nodes import NodeAllocations
from controller.probes import ProbeProcess
from controller.reconciler import NodeApi, Reconciler

logger = logging.getLogger("nodeipam")

LEASE_CONNECTIONS = 2  # a renewal and a release can overlap at most
#: From the start of stopping to the exit at the latest: well inside a Pod's default 30 s grace period.
SHUTDOWN_GRACE_SECONDS = 10.0
EXIT_CUT_SHORT = 1
LOOP_KOPF = "kopf"  # background_failures_total: kopf started again after a watch error
LOOP_METRICS_PORT = "metrics_port"  # background_failures_total: the metrics port's process replaced


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
    )
    if level.lower() != "debug":
        for noisy in ("kopf", "aiohttp.access"):
            logging.getLogger(noisy).setLevel(logging.WARNING)


class ShutdownDeadline:
    """Exits the process if stopping has not finished `grace` seconds after it began.

    A timer thread, not the event loop: what holds the stop up may be the loop itself
    (a task that ignores cancellation, a generator that will not close).
    """

    def __init__(self, grace: float, exit_now: Callable[[int], object] = os._exit) -> None:
        self.grace = grace
        self._exit_now = exit_now
        self._timer: threading.Timer | None = None
        self.began_with = ""  # what started the stop; empty while not armed

    @property
    def armed(self) -> bool:
        return self._timer is not None

    def arm(self, why: str) -> None:
        """Start the countdown; the first call counts, later ones change nothing."""
        if self._timer is None:
            self.began_with = why
            self._timer = threading.Timer(self.grace, self.exit_now, args=(f"{why}, {self.grace:g}s ago",))
            self._timer.daemon = True
            self._timer.start()

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()

    def exit_now(self, why: str) -> None:
        """Exit without further cleanup (the stop began with `why`)."""
        logger.error("stopping did not finish (began with: %s); exiting now", why)
        logging.shutdown()  # flush the log line before the hard exit
        self._exit_now(EXIT_CUT_SHORT)


class Stopping:
    """The stop flag, set by SIGTERM/SIGINT or a lost lease, and the deadline that bounds what follows."""

    def __init__(self, deadline: ShutdownDeadline) -> None:
        self.flag = asyncio.Event()
        self.deadline = deadline

    def listen(self) -> None:
        """Route SIGTERM and SIGINT here: at start, and again each time kopf has spawned its tasks (it installs
        handlers of its own that, once it has stopped, only log an error and leave the process running)."""
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.on_signal, signum)

    def begin(self, why: str) -> None:
        self.flag.set()
        self.deadline.arm(why)

    def on_signal(self, signum: signal.Signals) -> None:
        """What the event loop calls on SIGTERM/SIGINT."""
        if self.flag.is_set():
            logger.warning("%s while stopping: exiting at once", signum.name)
            self.deadline.exit_now(f"{self.deadline.began_with}, then {signum.name}")
            return
        logger.info("%s: stopping", signum.name)
        self.begin(signum.name)


async def run(settings: Settings, credentials: Credentials | None = None, deadline: ShutdownDeadline | None = None) -> None:
    """Run until SIGTERM/SIGINT, or until leadership is lost.

    `deadline` bounds the stop; the caller cancels it once the event loop is closed too.
    """
    credentials = credentials or Credentials.load(settings.kubeconfig, settings.master)
    kopfpatches.quiet_closing_of_kopf_streams(asyncio.get_running_loop())
    stopping = Stopping(deadline or ShutdownDeadline(SHUTDOWN_GRACE_SECONDS))
    stopping.listen()
    metrics = Metrics()
    loopwatch.share_the_gil_promptly()
    # The main loop's lag, and the heartbeat that feeds /healthz on both ports.
    heartbeat = loopwatch.Heartbeat()
    pulse = asyncio.ensure_future(loopwatch.watch_loop(heartbeat, metrics.event_loop_lag.observe))
    try:
        await _serve(settings, credentials, stopping, metrics, heartbeat)
    finally:
        pulse.cancel()
    logger.info("stopped")


async def _serve(
    settings: Settings, credentials: Credentials, stopping: Stopping, metrics: Metrics, heartbeat: loopwatch.Heartbeat
) -> None:
    """The metrics port and the Lease from the start; leading once the Lease is ours, until stopped."""
    # kopf leaves a reference cycle per watch event: see gcpolicy for why, and what it costs otherwise.
    gcpolicy.collect_young_less_often()
    with gcpolicy.PauseRecorder() as gc_pauses, gcpolicy.FreezeSurvivors():
        metrics.track_gc_pauses(gc_pauses)
        # Leases get a client of their own, on a thread and event loop of their own: no rate limit, their own
        # connections, no retries of their own (each attempt is cut off at the renew deadline and the elector
        # tries again), so that neither queued Node patches nor a busy main loop can delay a renewal.
        async with (
            LeaseKeeper(
                lambda: KubeClient(credentials, max_in_flight=LEASE_CONNECTIONS, transient_attempts=1), settings.leader_election
            ) as elector,
            # Every write of the Node client, each retry too, is sent only while this process leads.
            KubeClient(
                credentials,
                settings.kube_api_qps,
                settings.kube_api_burst,
                settings.max_in_flight,
                may_write=_never if settings.dry_run else elector.is_leading,
            ) as kube,
        ):
            leading = _never if settings.dry_run else elector.is_leading
            metrics.track_leadership(settings.leader_election.resource_name, leading)
            # The metrics port, served by a process of its own, so that no scrape waits for this process. Its token
            # reviews go through a client of its own there, so they neither wait behind Node patches nor take a
            # connection a Lease renewal needs; this process feeds it the metrics' text and the token.
            health = MetricsProcess(
                settings.metrics_bind_address,
                metrics.exposition,
                heartbeat,
                serving=settings.serving,
                credentials=credentials,
                refused=metrics.refused_on_metrics_port,
                refresh=metrics.refresh_views,
                on_restart=metrics.background_failures.labels(LOOP_METRICS_PORT).inc,
                log_level=settings.log_level,
            )
            # The kubelet's probes, from a process of its own: no thread of this one can hold them up.
            probes = ProbeProcess(
                settings.health_probe_bind_address,
                heartbeat,
                stall_limit=loopwatch.MAIN_LOOP_STALL_SECONDS,
                log_level=settings.log_level,
                on_exit=stopping.begin,
            )
            await health.start()
            try:
                await probes.start()
                if await _until_stopped(elector.acquire(), stopping.flag) is not None:
                    await _lead(settings, credentials, kube, metrics, (health, probes), heartbeat, elector, stopping)
            finally:
                stopping.deadline.arm("shutdown")
                await probes.stop()
                await health.stop()


async def _lead(
    settings: Settings,
    credentials: Credentials,
    kube: KubeClient,
    metrics: Metrics,
    ports: tuple[MetricsProcess, ProbeProcess],
    heartbeat: loopwatch.Heartbeat,
    elector: LeaseKeeper,
    stopping: Stopping,
) -> None:
    """Everything the leader does, from the rebuild to shutdown.

    No range is reserved once `elector.is_leading()` turns False, which is
    before any standby may take the lease; stopping kopf and the process
    follows as soon as `hold()` notices.
    """
    stop = stopping.flag
    lost = asyncio.ensure_future(elector.hold())
    # Also interrupts a rebuild (and its retries) or a sweep in progress.
    lost.add_done_callback(lambda done: None if done.cancelled() else stopping.begin("leadership lost"))
    allocations = NodeAllocations(settings.ranges, settings.service_cidrs)
    log = None
    carried: list[inflight.InFlight] = []
    if settings.leader_election.enabled:
        # A patch is sent only once the Lease records it: the next leader keeps its ranges for its Node.
        log = inflight.InFlightLog(elector.write_annotation, lambda: _in_flight(allocations), elector.is_leading)
        carried, problem = inflight.decode(elector.taken_over_annotation(inflight.ANNOTATION))
        if problem:
            logger.warning("the podCIDR patches the last leader left in the Lease: %s", problem)
    api: NodeApi = kube
    watched = None
    if settings.dry_run:
        # Reads sent, writes logged and withheld, what another allocator writes compared (and no Lease: see cli).
        dry_run = DryRun(allocations, metrics.track_dry_run())
        api, watched = dry_run.api(kube), dry_run.watched
        logger.info("dry run: deciding and logging, writing nothing; no Lease is taken")
    reconciler = Reconciler(api, allocations, metrics, settings.max_in_flight, fence=log, watched=watched)
    for port in ports:
        port.watch(reconciler.rebuilt)
    heartbeat.liveness = reconciler.problem  # both ports answer /healthz from the main loop's beats
    try:
        waiting = await _until_stopped(reconciler.rebuild(carried), stop)
        # Nodes found waiting are assigned before kopf starts its own LIST:
        # both compete for the same API server, and the sweep is faster alone.
        if waiting is None or await _until_stopped(reconciler.assign_all(waiting), stop) is None:
            return
        # What is alive now lives as long as the process (or goes by its reference count): never scanned again.
        logger.info("%d objects frozen for the garbage collector", gcpolicy.freeze_survivors())
        # Created before kopf starts, so that kopf's shutdown leaves them to us.
        tasks = [
            asyncio.ensure_future(reconciler.work()),
            asyncio.ensure_future(reconciler.bridge(reconciler.watch_live)),
            asyncio.ensure_future(reconciler.serve_waiting()),
            asyncio.ensure_future(reconciler.resync_forever(settings.resync_period)),
        ]
        if not settings.dry_run:  # a dry run's pool statuses and finalizers would be writes
            tasks.append(asyncio.ensure_future(reconciler.write_pool_statuses()))
        # Stopping, for whatever reason, cancels kopf at once: signals stay ours (taken back from kopf as soon
        # as it runs), so that one flag, one deadline and one path stop everything.
        # The API server streams the watch's initial listing from its cache where it can (a re-list after a
        # gap too), instead of kopf's paged LIST of every Node.
        streamed = await kube.streams_initial_events()
        operator = asyncio.ensure_future(
            handlers.operate(
                credentials,
                reconciler,
                on_started=stopping.listen,
                initial_streaming=streamed,
                on_restart=metrics.background_failures.labels(LOOP_KOPF).inc,
            )
        )
        # Cancelled exactly once: a second cancel reaches kopf while it stops its own tasks, and it abandons
        # them half-stopped (a watcher waiting for workers nobody reaps holds the process at exit for good).
        stopped = asyncio.ensure_future(stop.wait())
        stopped.add_done_callback(lambda done: None if done.cancelled() else operator.cancel())
        try:
            await asyncio.wait({operator})
        finally:
            stopped.cancel()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        if not operator.cancelled():
            operator.result()  # re-raises what stopped kopf, if anything
    finally:
        if log is not None:
            await log.close()
        if lost.done() and not lost.cancelled():
            logger.error("leaderelection lost")
            raise LeadershipLost("lost the leader lease; exiting so that a fresh process can compete again")
        lost.cancel()
        await elector.release()


def _never() -> bool:
    return False


def _in_flight(allocations: NodeAllocations) -> list[inflight.InFlight]:
    return [inflight.InFlight(name, uid, tuple(str(cidr) for cidr in cidrs)) for name, uid, cidrs in allocations.in_flight()]


class LeadershipLost(RuntimeError):
    """The lease went to another instance; allocation stopped at once."""


async def _until_stopped(awaitable: Awaitable[Any], stop: asyncio.Event) -> Any:
    """Await `awaitable` unless the stop flag comes first (then None)."""
    work = asyncio.ensure_future(awaitable)
    stopper = asyncio.ensure_future(stop.wait())
    done, _ = await asyncio.wait({work, stopper}, return_when=asyncio.FIRST_COMPLETED)
    if work in done:
        stopper.cancel()
        return work.result()
    work.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await work
    return None
