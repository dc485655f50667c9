"""The metrics port: a child process serves it (controller.metrics_server), fed from here.

On a thread of this process, the port waited for the interpreter whenever the main thread held it, which
in a burst is most of the time: at 100,000 Nodes a scrape took 772-897 ms at p99, and the port's /healthz
329-474 ms (BENCHMARKS.md, "The probes from a process of their own, at 100,000 Nodes"). The child has an
interpreter of its own; TLS, the token reviews and the connection limits all run there, and no request of
the port waits for this process.

What the child serves comes from here, over a socket pair (controller.metrics_frames). The `metrics-feed`
thread, every FEED_INTERVAL_SECONDS and whenever a scrape asks (the scrape waits for it FRESH_WAIT_SECONDS
at most, then answers the last one), makes the text of /metrics with `exposition` (as the port's thread did: the
metrics take their own locks, and what only the main loop may read is a view that loop refreshes on its own schedule,
here), and sends it with the main loop's verdict on its health (its last heartbeat: a main loop stalled past
the stall limit fails /healthz, as before) and its readiness (at once when it changes). A frame also carries the bearer token the
child sends to the API server, renewed here, so that an exec plugin or an auth provider runs in one process.

One child, as this side reaches it (started, written to, read, judged stuck, ended), is a ChildLink
(controller.metrics_child); here is what is sent when, and the replacement of a child that fails.

The port is bound here and its sockets passed on, so that the child can be replaced without the port ever
closing: a child that exits, or leaves a frame unacknowledged for `stuck_after` seconds, is killed and
started again, with backoff. The child exits once its end of the socket pair closes, whether this process
stopped or was killed: no child outlives the controller.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from controller import metrics_frames
from controller.backoff import Backoff
from controller.config import split_bind_address
from controller.credentials import Credentials
from controller.loopwatch import MAIN_LOOP_STALL_SECONDS, Heartbeat
from controller.metrics_child import ChildLink, MetricsServerError, Stopping, Waker
from controller.secure_serving import ServingOptions
from controller.serving_connections import listening_sockets

logger = logging.getLogger("nodeipam.server")

#: Seconds between two frames: the text of /metrics is at most about this old (plus the pools' view, refreshed
#: by the main loop as often).
FEED_INTERVAL_SECONDS = 1.0
#: How long a scrape waits for the frame it asked for before it answers the last one: the controller sends
#: one within milliseconds unless its main thread holds the interpreter, and then the scrape does not wait
#: for it longer than this (at 0.1 s the wait was most of a scrape's p99 in bench.metricsport).
FRESH_WAIT_SECONDS = 0.05
#: The shortest time between two frames when scrapes ask for them (each costs a collection).
MIN_FRAME_GAP_SECONDS = 0.05
#: A child that has not acknowledged a frame (or read one) for this long is stuck: killed and replaced. Well
#: above what a flood of the port holds its loop for; /healthz on the port fails meanwhile anyway.
STUCK_SECONDS = 10.0
#: Delay before starting another child, per failure in a row (a child that acknowledged a frame succeeded).
RESTART_BACKOFF = Backoff(1.0, cap=30.0)


__all__ = ["MetricsProcess", "MetricsServerError"]


class MetricsProcess:
    """Binds the metrics port, starts its server in a child, feeds and supervises it, and stops it.

    Nothing at all when the port is disabled. `exposition` makes the text of /metrics (Metrics.exposition), on
    the feed thread. `refused(reason, count)` counts what the port refused;
    `refresh` runs on the main loop every `feed_interval` (Metrics.refresh_views); `on_restart` is called
    each time a child is replaced.
    """

    def __init__(
        self,
        bind_address: str,
        exposition: Callable[[], bytes],
        heartbeat: Heartbeat,
        *,
        serving: ServingOptions | None = None,
        credentials: Credentials | None = None,
        refused: Callable[[str, int], None] = lambda reason, count: None,
        refresh: Callable[[], None] = lambda: None,
        on_restart: Callable[[], None] = lambda: None,
        stall_limit: float = MAIN_LOOP_STALL_SECONDS,
        log_level: str = "info",
        feed_interval: float = FEED_INTERVAL_SECONDS,
        stuck_after: float = STUCK_SECONDS,
        backoff: Backoff = RESTART_BACKOFF,
        fresh_wait: float = FRESH_WAIT_SECONDS,
    ) -> None:
        self._bind_address = bind_address
        self._bind = split_bind_address(bind_address)
        self._exposition = exposition
        self.heartbeat = heartbeat
        self._serving = serving or ServingOptions()
        self._credentials = credentials
        self._refused = refused
        self._refresh = refresh
        self._on_restart = on_restart
        self.stall_limit = stall_limit
        self._log_level = log_level
        self.feed_interval = feed_interval
        self.stuck_after = stuck_after
        self._backoff = backoff
        self.fresh_wait = fresh_wait
        self._ready: asyncio.Event | None = None  # None: standby
        self._sockets: list[socket.socket] = []
        self._child: ChildLink | None = None
        self._thread: threading.Thread | None = None
        self._refresher: asyncio.Task[None] | None = None
        self._waker = Waker()  # wakes the feed thread: to stop, or for a frame now (readiness changed)
        self._watchers: set[asyncio.Task[None]] = set()
        self._renewal: threading.Thread | None = None
        self.restarts = 0
        self._failures = 0  # children in a row that failed

    @property
    def ports(self) -> list[int]:
        return [int(listening.getsockname()[1]) for listening in self._sockets]

    @property
    def pid(self) -> int | None:
        """The child serving the port now (None: none, between a death and its replacement)."""
        child = self._child
        return child.pid if child is not None else None

    async def start(self) -> None:
        """Bind the port (OSError if taken), start the child and wait until it serves (MetricsServerError if not)."""
        if self._bind is None:
            return
        self._sockets = listening_sockets(*self._bind)
        try:
            self._child = await asyncio.to_thread(self._spawn)
        except BaseException:
            self._close_sockets()
            raise
        self._thread = threading.Thread(target=self._feed_forever, name="metrics-feed", daemon=True)
        self._thread.start()
        self._refresher = asyncio.ensure_future(self._refresh_views())

    def watch(self, ready: asyncio.Event) -> None:
        """This replica now leads: report ready once `ready` (the rebuild, on the main loop) is set.

        Read from the feed thread through is_set() alone, which only reads a flag. A frame goes out at once, and
        again once `ready` is set, so that /readyz follows without waiting for the next one.
        """
        self._ready = ready
        self._poke()
        watcher = asyncio.ensure_future(self._poke_when(ready))
        self._watchers.add(watcher)
        watcher.add_done_callback(self._watchers.discard)

    async def stop(self) -> None:
        """Stop feeding, close the child's end (it exits; killed past STOP_TIMEOUT_SECONDS), close the port."""
        self._waker.stop()
        for watcher in list(self._watchers):
            watcher.cancel()
        if self._refresher is not None:
            self._refresher.cancel()
            await asyncio.gather(self._refresher, return_exceptions=True)
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)
        child, self._child = self._child, None
        if child is not None:
            await asyncio.to_thread(child.end)
        self._close_sockets()
        self._waker.close()

    # -- on the main loop

    async def _poke_when(self, ready: asyncio.Event) -> None:
        await ready.wait()
        self._poke()

    def _poke(self) -> None:
        """Have the feed thread send a frame now (any thread)."""
        self._waker.poke()

    async def _refresh_views(self) -> None:
        """What only the main loop may read (the pools' usage), read again for the next frames."""
        while True:
            try:
                self._refresh()
            except Exception:
                logger.exception("refreshing the main loop's views for /metrics failed; the last ones serve")
            await asyncio.sleep(self.feed_interval)

    # -- on the feed thread (and, for the first child, a thread of asyncio's)

    def _spawn(self) -> ChildLink:
        """A child serving the port, once it says it listens; MetricsServerError otherwise."""
        token = self._credentials.current_token() if self._credentials is not None else None
        child = ChildLink.start(
            self._sockets, self._log_level, self._setup(token), self._waker, self.stuck_after, self._bind_address
        )
        logger.info("the metrics port is served by process %d", child.pid)
        return child

    def _setup(self, token: str | None) -> dict[str, Any]:
        credentials = self._credentials
        api = None
        if credentials is not None:
            api = {
                "server": credentials.server,
                "ca_file": credentials.ca_file,
                "cert_file": credentials.cert_file,
                "key_file": credentials.key_file,
                "insecure": credentials.insecure,
            }
        return {
            "kind": metrics_frames.SETUP,
            "bind": self._bind_address,
            "serving": dataclasses.asdict(self._serving),
            "api": api,
            "token": token,
            "stall_limit": self.stall_limit,
            "fresh_wait": self.fresh_wait,
        }

    def _feed_forever(self) -> None:
        stopping = self._waker.stopping
        while not stopping.is_set():
            child = self._child
            if child is None:
                try:
                    self._child = child = self._spawn()
                except (MetricsServerError, OSError) as error:
                    if stopping.is_set():
                        return
                    self._failures += 1
                    delay = self._backoff.after(self._failures)
                    logger.error("could not start the metrics port's server again (%s); trying again in %.1fs", error, delay)
                    stopping.wait(delay)
                    continue
            try:
                why = self._feed(child)
            except Stopping:
                return
            self._child = None
            child.end()
            self._failures += 1
            self.restarts += 1
            self._on_restart()
            delay = self._backoff.after(self._failures)
            logger.error("the metrics port's server (process %d) %s; starting another in %.1fs", child.pid, why, delay)
            if stopping.wait(delay):
                return

    def _feed(self, child: ChildLink) -> str:
        """Feed `child` a frame every `feed_interval` and read its acknowledgements, until it fails: why."""
        next_frame = last_frame = time.monotonic()
        while True:
            now = time.monotonic()
            if self._waker.poked.is_set():
                self._waker.poked.clear()
                next_frame = now
            if now >= next_frame:
                last_frame, next_frame = now, now + self.feed_interval
                try:
                    child.send(self._frame(child), self.stuck_after)
                except TimeoutError:
                    return f"read no frame for {self.stuck_after:g}s"
                except OSError:
                    return f"exited (status {child.status()})"
            try:
                messages = child.receive(next_frame - time.monotonic())
            except metrics_frames.BrokenStream as error:
                return f"sent something that is not a message ({error})"
            if messages is None:
                return f"exited (status {child.status()})"
            for header, _ in messages:
                if header["kind"] == metrics_frames.ACK:
                    self._acknowledged(child, header)
                elif header["kind"] == metrics_frames.WANT:  # a scrape waits: a frame now, or as soon as allowed
                    next_frame = min(next_frame, last_frame + MIN_FRAME_GAP_SECONDS)
            if child.stuck():
                return f"acknowledged no frame for {self.stuck_after:g}s"

    def _frame(self, child: ChildLink) -> bytes:
        header: dict[str, Any] = {"kind": metrics_frames.FRAME}
        try:
            text = self._exposition()
        except Exception:
            logger.exception("collecting the metrics failed; the port serves the last text")
            text, header["text"] = b"", False
        ready = self._ready
        header["problem"] = self.heartbeat.problem(self.stall_limit)
        header["leading"] = ready is not None
        header["ready"] = ready is not None and ready.is_set()
        token = self._token()
        if token != child.token:
            header["token"] = child.token = token
        header["seq"] = child.next_seq()
        return metrics_frames.encode(header, text)

    def _token(self) -> str | None:
        """The token at hand; one due for renewal is renewed on a thread of its own meanwhile (a plugin may be slow)."""
        credentials = self._credentials
        if credentials is None:
            return None
        renewing = credentials.renewing
        if renewing is not None and renewing.due() and (self._renewal is None or not self._renewal.is_alive()):
            self._renewal = threading.Thread(target=renewing.renewed, name="metrics-token", daemon=True)
            self._renewal.start()
        return credentials.current_token()

    def _acknowledged(self, child: ChildLink, header: dict[str, Any]) -> None:
        child.acknowledged(header.get("seq"))
        self._failures = 0  # a child that works ends a run of failures
        for reason, count in (header.get("refused") or {}).items():
            self._refused(str(reason), int(count))

    def _close_sockets(self) -> None:
        for listening in self._sockets:
            listening.close()
        self._sockets = []
