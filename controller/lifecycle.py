"""The application's lifecycle: start-up, leader election, the health server, shutdown.

One process: a health server from the start, a Lease to compete for, and,
once leading, the rebuild, the start-up sweep, the background loops and kopf
(wired in handlers.py). Losing the lease stops allocating at once and exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable
from typing import Any

from controller import handlers
from controller.config import Settings
from controller.kube import Credentials, KubeClient
from controller.leader import LeaseKeeper
from controller.metrics import Metrics
from controller.nodes import NodeAllocations
from controller.reconciler import Reconciler
from controller.server import HealthServer

logger = logging.getLogger("nodeipam")

LEASE_CONNECTIONS = 2  # a renewal and a release can overlap at most


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
    )
    if level.lower() != "debug":
        for noisy in ("kopf", "aiohttp.access"):
            logging.getLogger(noisy).setLevel(logging.WARNING)


async def run(settings: Settings, credentials: Credentials | None = None) -> None:
    """Run until SIGTERM/SIGINT, or until leadership is lost."""
    credentials = credentials or Credentials.load(settings.kubeconfig, settings.master)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    metrics = Metrics()
    # Leases get a client of their own, on a thread and event loop of their own: no rate limit, their own
    # connections, no retries of their own (each attempt is cut off at the renew deadline and the elector
    # tries again), so that neither queued Node patches nor a busy main loop can delay a renewal.
    async with (
        KubeClient(credentials, settings.kube_api_qps, settings.kube_api_burst, settings.max_in_flight) as kube,
        LeaseKeeper(
            lambda: KubeClient(credentials, max_in_flight=LEASE_CONNECTIONS, transient_attempts=1), settings.leader_election
        ) as elector,
        # The token reviews of /metrics scrapes: a client of their own, so they neither wait behind Node
        # patches nor take a connection a Lease renewal needs.
        KubeClient(credentials, max_in_flight=2, transient_attempts=1) as review_kube,
    ):
        health = HealthServer(settings.metrics_bind_address, metrics.registry, serving=settings.serving, reviews=review_kube)
        await health.start()
        try:
            if await _until_stopped(elector.acquire(), stop) is not None:
                await _lead(settings, credentials, kube, metrics, health, elector, stop)
        finally:
            await health.stop()
    logger.info("stopped")


async def _lead(
    settings: Settings,
    credentials: Credentials,
    kube: KubeClient,
    metrics: Metrics,
    health: HealthServer,
    elector: LeaseKeeper,
    stop: asyncio.Event,
) -> None:
    """Everything the leader does, from the rebuild to shutdown.

    No range is reserved once `elector.is_leading()` turns False, which is
    before any standby may take the lease; stopping kopf and the process
    follows as soon as `hold()` notices.
    """
    lost = asyncio.ensure_future(elector.hold())
    lost.add_done_callback(lambda _: stop.set())  # also interrupts a rebuild (and its retries) or a sweep in progress
    allocations = NodeAllocations(settings.ranges, settings.service_cidrs)
    reconciler = Reconciler(kube, allocations, metrics, settings.max_in_flight, may_allocate=elector.is_leading)
    health.watch(reconciler.rebuilt)
    health.set_liveness(reconciler.problem)
    try:
        waiting = await _until_stopped(reconciler.rebuild(), stop)
        # Nodes found waiting are assigned before kopf starts its own LIST:
        # both compete for the same API server, and the sweep is faster alone.
        if waiting is None or await _until_stopped(reconciler.assign_all(waiting), stop) is None:
            return
        # Created before kopf starts, so that kopf's shutdown leaves them to us.
        kopf_live = asyncio.Event()
        tasks = [
            asyncio.ensure_future(reconciler.bridge(kopf_live)),
            asyncio.ensure_future(reconciler.serve_waiting()),
            asyncio.ensure_future(reconciler.resync_forever(settings.resync_period)),
            asyncio.ensure_future(reconciler.write_pool_statuses()),
        ]
        # kopf handles SIGTERM itself once started; losing the lease cancels it at once.
        operator = asyncio.ensure_future(handlers.operate(credentials, reconciler, kopf_live))
        lost.add_done_callback(lambda _: operator.cancel())
        # A SIGTERM that arrived before kopf took the signal over set only our flag: kopf must hear of it too.
        stopped = asyncio.ensure_future(stop.wait())
        stopped.add_done_callback(lambda _: operator.cancel())
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
        if lost.done() and not lost.cancelled():
            logger.error("leaderelection lost")
            raise LeadershipLost("lost the leader lease; exiting so that a fresh process can compete again")
        lost.cancel()
        await elector.release()


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
