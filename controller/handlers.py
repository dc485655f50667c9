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
import functools
import importlib
import importlib.metadata
import inspect
import json
import logging
import os
import time
from collections.abc import Callable
from types import ModuleType
from typing import Any

import kopf
import msgspec

from controller.kube import Credentials, node_of
from controller.reconciler import Reconciler

WATCH_PAGE_SIZE = 500
#: Delays before kopf is started again after a watch error, then the last one each time.
KOPF_RESTART_DELAYS = (1.0, 2.0, 4.0, 8.0, 16.0, 30.0)
#: A kopf run at least this long was healthy: a watch error after it waits the first delay again.
KOPF_HEALTHY_RUN_SECONDS = 600.0
_KOPF_DIR = os.path.dirname(kopf.__file__) + os.sep

logger = logging.getLogger("nodeipam")


def _kopf_internal(name: str) -> ModuleType | None:
    """One of kopf's private modules; None if this kopf release has no module of that name."""
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


# kopf's private modules, adjusted below only while their code is as expected. A kopf release that moves one
# leaves its adjustment not applied (said in the log when it would be), never this module unimportable.
kopf_api = _kopf_internal("kopf._cogs.clients.api")
kopf_scanning = _kopf_internal("kopf._cogs.clients.scanning")
kopf_watching = _kopf_internal("kopf._cogs.clients.watching")


def _kopf_version() -> str:
    return importlib.metadata.version("kopf")


class _NoSuchError(Exception):
    """Stands for kopf's watch error class if a kopf release renames it: then no failure of kopf's is retried."""


def kopf_watch_error() -> type[Exception]:
    """What kopf raises for an ERROR event in a watch stream (other than 410 Gone, which it handles itself).

    _NoSuchError, with a log line, if this kopf release has no such class where 1.45 has it.
    """
    error = getattr(kopf_watching, "WatchingError", None)
    if isinstance(error, type) and issubclass(error, Exception):
        return error
    logger.info("kopf %s: its watch errors are unknown here: one ends the controller instead of restarting kopf", _kopf_version())
    return _NoSuchError


def quiet_closing_of_kopf_streams(loop: asyncio.AbstractEventLoop) -> None:
    """At exit, a kopf watch stream that failed to close is a debug line, not an ERROR traceback.

    When kopf's watcher is cancelled between two events, its watch generator
    stays suspended inside kopf's own `streaming_block` context manager;
    asyncio closes it as the loop ends, and that context manager answers
    the close with "generator didn't stop after athrow()". By then every
    handler has returned: nothing is lost, only the log line is alarming.
    Any other exception the loop reports keeps its default handling.
    """

    def handle(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        generator = context.get("asyncgen")
        code = getattr(generator, "ag_code", None)
        if code is not None and code.co_filename.startswith(_KOPF_DIR):
            logger.debug("kopf's watch stream %s ended at exit: %r", code.co_name, context.get("exception"))
            return
        loop.default_exception_handler(context)

    loop.set_exception_handler(handle)


class _MsgspecJson:
    """What kopf's API module calls on its `json` name: `loads`, as msgspec's decoder."""

    loads = staticmethod(msgspec.json.decode)


def decode_kopf_watch_events_with_msgspec() -> bool:
    """kopf decodes every watch event with msgspec instead of the stdlib's json; False if kopf's code has changed.

    kopf has no setting for its decoder, and it decodes every event of the
    Node watch (two per Node: its creation and our patch, ~10 KB each) with
    `json.loads` in its API module; that was a fifth of the controller's CPU
    in a burst. msgspec gives the same dicts and lists, about twice as fast.
    Only the module's `json` name is replaced, and only while it is the
    stdlib's json module: a kopf release that decodes differently is left as it is.
    """
    decoder = getattr(kopf_api, "json", None)
    if decoder is _MsgspecJson:
        return True  # a second operator in this process
    if kopf_api is None or decoder is not json:
        logger.info("kopf %s: its watch events are decoded by its own decoder", _kopf_version())
        return False
    kopf_api.json = _MsgspecJson  # type: ignore[attr-defined]
    return True


def cancel_kopfs_discovery_reads_with_it() -> bool:
    """Cancelling kopf's scan of the API's discovery documents cancels every read it started; False if kopf changed.

    kopf reads the documents concurrently with `asyncio.as_completed`, which
    leaves its reads running when the scan is cancelled (a SIGTERM within a
    second of kopf's start). They went on after kopf had closed its HTTP
    session, failed there ("Connector is closed"), and kopf logged each as
    an ERROR while the controller stopped cleanly. The scan is wrapped so
    that, as it ends, it cancels the reads of kopf's scanning module that
    began during it and still run. Only a coroutine function is wrapped, once.
    """
    scanning = kopf_scanning
    scan = getattr(scanning, "scan_resources", None)
    if getattr(scan, "cancels_its_reads", False):
        return True  # a second operator in this process
    if scanning is None or not inspect.iscoroutinefunction(scan):
        logger.info("kopf %s: its discovery is left as it is", _kopf_version())
        return False

    @functools.wraps(scan)
    async def scan_resources(**kwargs: Any) -> Any:
        before = asyncio.all_tasks()
        try:
            return await scan(**kwargs)
        finally:  # none is left when the scan ends by itself
            for task in asyncio.all_tasks() - before:
                code = getattr(task.get_coro(), "cr_code", None)
                if code is not None and code.co_filename == scanning.__file__:
                    task.cancel()

    scan_resources.cancels_its_reads = True  # type: ignore[attr-defined]
    scanning.scan_resources = scan_resources  # type: ignore[attr-defined]
    return True


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
        delay = KOPF_RESTART_DELAYS[min(self.failures_in_a_row, len(KOPF_RESTART_DELAYS) - 1)]
        self.failures_in_a_row += 1
        return delay


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
    and `on_restart` called. Any other failure of kopf's still ends the run.

    No stop_flag: kopf's stop-flag waiter outlives the operator and holds
    shutdown for 5 s; the caller cancels the task instead. `on_started` is
    called each time kopf's startup is done, which is after it installed its
    own signal handlers (the caller takes the signals back then).
    """
    decode_kopf_watch_events_with_msgspec()
    cancel_kopfs_discovery_reads_with_it()
    watch_error = kopf_watch_error()
    registry = build_registry(credentials, reconciler)
    backoff = RestartBackoff()
    while True:
        started_at = time.monotonic()
        ready = asyncio.Event()
        notify = asyncio.ensure_future(ready.wait())
        if on_started is not None:
            notify.add_done_callback(lambda done: None if done.cancelled() else on_started())
        try:
            await kopf.operator(
                registry=registry,
                settings=kopf_settings(initial_streaming),
                clusterwide=True,
                standalone=True,
                ready_flag=ready,
            )
            return
        except watch_error as error:
            delay = backoff.delay_after(time.monotonic() - started_at)
            logger.warning("kopf's watch failed: %s; kopf starts again in %.0f s and lists every node", error, delay)
            if on_restart is not None:
                on_restart()
        finally:
            notify.cancel()
        await asyncio.sleep(delay)
