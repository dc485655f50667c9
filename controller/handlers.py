"""kopf wiring only: settings, and handlers that hand each event to the reconciler.

Nothing is decided here; lifecycle.py starts and stops what this module wires.
kopf is told to store nothing on Nodes: no progress or diff-base annotations,
no finalizers (only `@kopf.on.event` is used), no status, no kopf events.
The only write to a Node is the podCIDR patch in kube.py. NodeCIDRPools'
finalizer and status are written by the reconciler, not by kopf.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import time
from collections.abc import Callable, Collection
from typing import Any

import kopf

from controller import kopfpatches
from controller.backoff import Backoff
from controller.credentials import Credentials
from controller.kube import node_of
from controller.reconciler import Reconciler

WATCH_PAGE_SIZE = 500
#: Seconds before kopf is started again after a watch error: 1, doubling per failed run in a row, up to 30.
KOPF_RESTART_BACKOFF = Backoff(1.0, cap=30.0)
#: A kopf run at least this long was healthy: a watch error after it waits the first delay again.
KOPF_HEALTHY_RUN_SECONDS = 600.0
logger = logging.getLogger("nodeipam")


class NoProgressStorage(kopf.ProgressStorage):
    """Keeps no handler progress: event handlers need none, and Nodes stay clean."""

    def fetch(self, **_: Any) -> None:
        return None

    def store(self, **_: Any) -> None:
        return None

    def purge(self, **_: Any) -> None:
        return None

    def touch(self, **_: Any) -> None:
        return None

    def clear(self, *, essence: Any) -> Any:
        return essence


class NoDiffBaseStorage(kopf.DiffBaseStorage):
    """Keeps no last-handled configuration on Nodes, and computes none.

    kopf builds a diff base for every event by deep-copying the body; with
    only event handlers nothing reads it, and on ~10 KB Nodes the copy was
    two thirds of the controller's CPU time.
    """

    def build(self, **_: Any) -> Any:
        return {}

    def fetch(self, **_: Any) -> None:
        return None

    def store(self, **_: Any) -> None:
        return None


def kopf_settings(initial_streaming: bool = False) -> kopf.OperatorSettings:
    """kopf's settings; `initial_streaming`: the watch starts with a streamed listing (WatchList), not a paged LIST."""
    settings = kopf.OperatorSettings()
    settings.persistence.progress_storage = NoProgressStorage()
    settings.persistence.diffbase_storage = NoDiffBaseStorage()
    settings.posting.enabled = False  # our own Events, in the shape kubectl describe shows
    settings.scanning.disabled = True  # no CRD/namespace watching: RBAC stays minimal
    settings.watching.chunk_size = WATCH_PAGE_SIZE
    settings.watching.initial_streaming = initial_streaming
    # A Node event only queues a small record (see build_registry): kopf's per-Node worker, with the decoded
    # body it holds, can end soon after (5 s by default). (kopf 1.45 has no time-based batching any more:
    # its batch_window setting only warns.)
    settings.queueing.idle_timeout = 0.2
    return settings


def connection_info(credentials: Credentials) -> kopf.ConnectionInfo:
    """What kopf's login handler gives kopf. May block renewing a token (an exec plugin): kopf calls a sync login
    handler in a thread, and logs in again once `expiration` has passed, which is when the token is due for
    renewal, before it expires."""
    token = credentials.renewed_token()
    renew_at = credentials.renewing.renew_at if credentials.renewing is not None else None
    return kopf.ConnectionInfo(
        server=credentials.server,
        ca_path=credentials.ca_file,
        insecure=credentials.insecure,
        scheme="Bearer" if token else None,
        token=token,
        certificate_path=credentials.cert_file,
        private_key_path=credentials.key_file,
        expiration=datetime.datetime.fromtimestamp(renew_at, datetime.UTC) if renew_at is not None else None,
    )


def build_registry(credentials: Credentials, reconciler: Reconciler) -> kopf.OperatorRegistry:
    """The handlers: credentials for kopf's watch; Node and NodeCIDRPool events (if the CRD is installed) into the reconciler.

    A Node event returns at once (the reconciler queues it), so that kopf's
    per-Node worker, and the decoded body it holds, ends within its idle timeout.
    """
    registry = kopf.OperatorRegistry()

    @kopf.on.login(registry=registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        return connection_info(credentials)

    if reconciler.pools_served:

        @kopf.on.event("nodeipam.io", "v1alpha1", "nodecidrpools", registry=registry)
        async def pool_event(event: kopf.RawEvent, **_: Any) -> None:
            await reconciler.pool_event(event["type"], event["object"])

    @kopf.on.event("", "v1", "nodes", registry=registry)
    async def node_event(event: kopf.RawEvent, **_: Any) -> None:
        await reconciler.node_event(event["type"], node_of(event["object"]))

    return registry


class RestartBackoff:
    """The delay before kopf starts again: doubling while its runs keep failing, the first again after a healthy run."""

    def __init__(self) -> None:
        self.failures_in_a_row = 0

    def delay_after(self, ran_for: float) -> float:
        """The delay after a kopf run of `ran_for` seconds ended with a watch error."""
        if ran_for >= KOPF_HEALTHY_RUN_SECONDS:
            self.failures_in_a_row = 0
        self.failures_in_a_row += 1
        return KOPF_RESTART_BACKOFF.after(self.failures_in_a_row)


async def operate(
    credentials: Credentials,
    reconciler: Reconciler,
    on_started: Callable[[], object] | None = None,
    initial_streaming: bool = False,
    on_restart: Callable[[], object] | None = None,
) -> None:
    """kopf's operator with these handlers, cluster-wide, until cancelled; started again after a watch error.

    kopf ends its operator on any ERROR event in a watch stream but 410
    Gone. The API server sends one, 504 "Too large resource version", when
    its watch cache is behind etcd and a watch asks for a newer version (a
    streamed listing after a 410 does): at 100,000 Nodes in a burst that
    ended the controller. Such an error passes: kopf is started again after a
    delay, lists every Node again (the reconciler takes that for a gap and
    lists every Node too) and the controller goes on serving, with a warning
    and `on_restart` called. Any other failure of kopf's still ends the run,
    but not one that came of the watch error: as kopf stops after it, its
    other watch streams may fail too ("Connection closed."), and which of its
    tasks' errors `run_tasks` raises is a matter of chance.

    No stop_flag: kopf's stop-flag waiter outlives the operator and holds
    shutdown for 5 s; the caller cancels the task instead. kopf's operator is
    its public `spawn_tasks` then `run_tasks`, which is what `kopf.operator`
    does: `on_started` is called in between, each time kopf has spawned its
    tasks and installed its own signal handlers, with no await between the two
    (the caller takes the signals back then, so none reaches kopf's handlers).
    """
    kopfpatches.decode_kopf_watch_events_with_msgspec()
    kopfpatches.cancel_kopfs_discovery_reads_with_it()
    kopfpatches.cancel_kopfs_stream_requests_on_their_stopper()
    watch_error = kopfpatches.kopf_watch_error()
    registry = build_registry(credentials, reconciler)
    backoff = RestartBackoff()
    while True:
        started_at = time.monotonic()
        existing = asyncio.all_tasks()  # kopf stops what it spawned at its end, never these
        tasks: Collection[asyncio.Task[Any]] = ()
        try:
            tasks = await kopf.spawn_tasks(
                registry=registry,
                settings=kopf_settings(initial_streaming),
                clusterwide=True,
                standalone=True,
            )
            if on_started is not None:
                on_started()
            await kopf.run_tasks(tasks, ignored=existing)
            return
        except Exception as error:
            cause = error if isinstance(error, watch_error) else failed_with(tasks, watch_error)
            if cause is None:
                raise
            delay = backoff.delay_after(time.monotonic() - started_at)
            logger.warning("kopf's watch failed: %s; kopf starts again in %.0f s and lists every node", cause, delay)
            if on_restart is not None:
                on_restart()
        await asyncio.sleep(delay)


def failed_with(tasks: Collection[asyncio.Task[Any]], kind: type[Exception]) -> Exception | None:
    """The first error of `kind` that ended one of `tasks`, if any (taken: asyncio does not log it as unretrieved)."""
    for task in tasks:
        if task.done() and not task.cancelled() and isinstance(error := task.exception(), kind):
            return error
    return None
