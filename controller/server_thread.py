"""The metrics port on a thread and event loop of its own, so that the kubelet's probes never wait for the main loop.

In a burst the main loop runs patches back to back and the machine's CPU goes to the API server and etcd:
a probe's TLS handshake, queued on that loop behind the Node work, took up to half a second (BENCHMARKS.md,
"Probes under load"). Here the HealthServer (TLS, token reviews, connection limits) runs on a loop of its
own, with its own review client, created on that loop (as LeaseKeeper does for the Lease). What it reads of
the main loop is thread-safe: readiness is an asyncio.Event's is_set(), and liveness the main loop's
heartbeat (controller.loopwatch), which also carries the main loop's own verdict on its health.
/metrics is collected here too (controller.metrics says why that is safe): the main loop is only asked
to refresh what only it may read, and waited for a tenth of a second at most. A main loop busier than
that answers the scrape with the view of its last refresh (at most a scrape old), and refreshes it for
the next: a scrape never waits for Node work, which held one for 250-320 ms at p99 in a burst.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry, generate_latest

from controller.config import split_bind_address
from controller.loopwatch import Heartbeat
from controller.secure_serving import ServingOptions
from controller.server import HealthServer
from controller.serving_reviews import ReviewAPI

logger = logging.getLogger("nodeipam.server")
T = TypeVar("T")

#: /healthz fails once the main loop has not ticked for this long. The chart probes every 10 s (timeout 5 s)
#: and restarts after 3 failures in a row, so a loop stuck for good is restarted at most 10 + 2 x 10 = 30 s
#: after it stuck, as when a probe waiting on a stuck loop timed out thrice. A stall the loop comes back
#: from fails no probe below 10 s, and three in a row only past 30 s: the longest the main loop holds itself
#: is the start-up rebuild, ~11 s at 100,000 Nodes on 2 cores (BENCHMARKS.md, "The pool code alone").
MAIN_LOOP_STALL_SECONDS = 10.0
#: How long a scrape waits for the main loop to refresh its views (Metrics.refresh_views) before it is
#: collected with the last ones: the whole scrape stays within 200 ms.
REFRESH_WAIT_SECONDS = 0.1


class ServerThread:
    """A HealthServer on a thread and event loop of its own; started, watched and stopped from the main loop.

    `open_reviews` is entered on the server's loop (an HTTP client must live on the loop that uses it) and
    exited there by `stop()`. `heartbeat` is beaten by the main loop: /healthz fails once it is older than
    `stall_limit`, and answers what `set_liveness`'s check said at the last beat. `refresh` runs on the
    main loop before a scrape is collected, waited for `refresh_wait` at most.
    """

    def __init__(
        self,
        bind_address: str,
        registry: CollectorRegistry,
        heartbeat: Heartbeat,
        *,
        serving: ServingOptions | None = None,
        open_reviews: Callable[[], contextlib.AbstractAsyncContextManager[ReviewAPI]] | None = None,
        refused: Callable[[str], None] | None = None,
        refresh: Callable[[], None] = lambda: None,
        stall_limit: float = MAIN_LOOP_STALL_SECONDS,
        refresh_wait: float = REFRESH_WAIT_SECONDS,
    ) -> None:
        self._bind_address = bind_address
        self._registry = registry
        self.heartbeat = heartbeat
        self._serving = serving
        self._open_reviews = open_reviews
        self._refused = refused
        self._refresh = refresh
        self.stall_limit = stall_limit
        self.refresh_wait = refresh_wait
        self._refreshing: concurrent.futures.Future[None] | None = None
        self._main_loop: asyncio.AbstractEventLoop | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stack = contextlib.AsyncExitStack()
        self._server: HealthServer | None = None
        self._ready: asyncio.Event | None = None

    @property
    def server(self) -> HealthServer:
        assert self._server is not None, "start() first"
        return self._server

    @property
    def ports(self) -> list[int]:
        return self._server.ports if self._server is not None else []

    async def start(self) -> None:
        """Start the thread, the review client and the server on it; nothing at all when the port is disabled."""
        if split_bind_address(self._bind_address) is None:
            return
        self._main_loop = asyncio.get_running_loop()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="metrics-port", daemon=True)
        self._thread.start()
        try:
            await self._run(self._open())
        except BaseException:
            await self.stop()
            raise

    def watch(self, ready: asyncio.Event) -> None:
        """This replica now leads: report ready once `ready` (the rebuild, on the main loop) is set.

        Read from the server's thread through is_set() alone, which only reads a flag.
        """
        self._ready = ready
        if self._server is not None:
            self._server.watch(ready)

    def set_liveness(self, check: Callable[[], str | None]) -> None:
        """/healthz answers 500 with the reason `check` gave at the main loop's last beat (it runs there)."""
        self.heartbeat.liveness = check

    async def stop(self) -> None:
        """Stop the server (bounded: server.SHUTDOWN_TIMEOUT), close the review client there, then the thread."""
        if self._loop is None or self._thread is None:
            return
        loop, thread, self._loop, self._thread = self._loop, self._thread, None, None
        with contextlib.suppress(Exception):
            await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(self._close(), loop))
        loop.call_soon_threadsafe(loop.stop)
        await asyncio.to_thread(thread.join)
        loop.close()

    async def _open(self) -> None:
        reviews = await self._stack.enter_async_context(self._open_reviews()) if self._open_reviews is not None else None
        self._server = HealthServer(
            self._bind_address,
            self._registry,
            serving=self._serving,
            reviews=reviews,
            refused=self._refused,
            collect=self._collect,
        )
        self._server.set_liveness(self._liveness)
        if self._ready is not None:
            self._server.watch(self._ready)
        await self._server.start()

    async def _close(self) -> None:
        if self._server is not None:
            await self._server.stop()
        await self._stack.aclose()

    def _liveness(self) -> str | None:
        """On the server's loop: the main loop's verdict at its last beat, unless that beat is too old."""
        return self.heartbeat.problem(self.stall_limit)

    async def _collect(self) -> bytes:
        """On the server's loop: the registry's text, once the main loop refreshed its views or `refresh_wait` passed."""
        assert self._main_loop is not None
        if self._refreshing is None or self._refreshing.done():  # one refresh queued at a time, however many scrape
            self._refreshing = asyncio.run_coroutine_threadsafe(_call(self._refresh), self._main_loop)
        try:
            await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(self._refreshing)), self.refresh_wait)
        except TimeoutError:
            pass  # the main loop is busy: its views of the last refresh serve, and the queued one is for the next
        except Exception:
            logger.exception("refreshing the main loop's views for /metrics failed; the last ones serve")
        return generate_latest(self._registry)

    def _run(self, work: Coroutine[Any, Any, T]) -> Awaitable[T]:
        """Run `work` on the server's loop; cancelling the returned awaitable cancels it there."""
        assert self._loop is not None
        future: concurrent.futures.Future[T] = asyncio.run_coroutine_threadsafe(work, self._loop)
        return asyncio.wrap_future(future)


async def _call(work: Callable[[], None]) -> None:
    work()
