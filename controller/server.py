"""The HTTPS endpoint for Prometheus and the kubelet's probes.

/metrics, /healthz (the process is alive, and its background work can run), /livez (the same) and
/readyz: a standby waiting for the lease is ready (so rolling updates and disruption budgets work); a
leader is ready once its sets are rebuilt, and not while it rebuilds. As on kube-controller-manager's
secure port, the health paths are anonymous and /metrics needs a token the API server authenticates
and authorizes (controller.secure_serving, which also bounds what a flood of connections or tokens costs:
aiohttp serves HTTP on the connections its GuardedListener accepts).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Awaitable, Callable, Sequence

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from controller.config import split_bind_address
from controller.secure_serving import MAX_REQUEST_HEADERS, ServingOptions, is_always_allowed, server_ssl_context
from controller.serving_connections import GuardedListener
from controller.serving_reviews import DelegatingAuth, ReviewAPI

logger = logging.getLogger("nodeipam.server")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: How long a stopping server waits for requests in flight before it cancels them. Probes answer at once;
#: a scrape waiting on a TokenReview from a slow API server must not hold a stopping process (aiohttp's
#: default is a minute, twice a Pod's grace period).
SHUTDOWN_TIMEOUT = 1.0
#: Where a request keeps how long its token review took, for the Server-Timing header of /metrics.
REVIEW_SECONDS = web.RequestKey("review_seconds", float)
#: Where a scrape whose frame was asked for ahead of its review keeps how to collect it.
COLLECT: web.RequestKey[Callable[[], Awaitable[bytes]]] = web.RequestKey("collect", Callable)  # type: ignore[arg-type]
METRICS_PATH = "/metrics"


class HealthServer:
    def __init__(
        self,
        bind_address: str,
        registry: CollectorRegistry | None,
        *,
        serving: ServingOptions | None = None,
        reviews: ReviewAPI | None = None,
        refused: Callable[[str], None] | None = None,
        collect: Callable[[], Awaitable[bytes]] | None = None,
        ask_ahead: Callable[[], Callable[[], Awaitable[bytes]]] | None = None,
    ) -> None:
        """`reviews`: the client that sends TokenReviews and SubjectAccessReviews (None: /metrics is refused).

        `refused` is told why each time the port refuses or cuts short a connection or a request. `collect`
        produces the text of /metrics (default: the registry's, on this loop); a TimeoutError from it is a 503.
        `registry` may be None when `collect` is given. `ask_ahead`, when given, is called as a scrape with a
        token accepted lately arrives, before its review ends, and returns how to collect for that scrape.
        """
        self.bind = split_bind_address(bind_address)
        self.registry = registry
        self.serving = serving or ServingOptions()
        self._refused = refused or (lambda reason: None)
        self.auth = DelegatingAuth(reviews, limits=self.serving.limits, refused=self._refused)
        self._ready: asyncio.Event | None = None  # set: leading and rebuilt; None: standby
        self._liveness: Callable[[], str | None] = lambda: None
        self._runner: web.AppRunner | None = None
        self._listener: GuardedListener | None = None
        self._collect = collect or self._generate
        self._ask_ahead = ask_ahead

    def watch(self, ready: asyncio.Event) -> None:
        """This replica now leads: report ready once `ready` (the rebuild) is set."""
        self._ready = ready

    def set_liveness(self, check: Callable[[], str | None]) -> None:
        """/healthz answers 500 with the reason while `check` returns one (None: healthy)."""
        self._liveness = check

    def application(self) -> web.Application:
        app = web.Application(middlewares=[self._authorize])
        app.router.add_get(METRICS_PATH, self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/livez", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        return app

    @property
    def ports(self) -> list[int]:
        """The ports listened on, once started (port 0 asks the system for one)."""
        return self._listener.ports if self._listener is not None else []

    @property
    def open_connections(self) -> int:
        """Connections held, TLS handshakes in progress included."""
        return self._listener.open_connections if self._listener is not None else 0

    async def start(self, sockets: Sequence[socket.socket] = ()) -> None:
        """Listen on the bind address, or on `sockets`, already listening there (passed on by another process)."""
        if self.bind is None:
            return
        limits = self.serving.limits
        self._runner = web.AppRunner(
            self.application(),
            access_log=None,
            shutdown_timeout=SHUTDOWN_TIMEOUT,
            handler_cancellation=True,  # a client gone: its request's handler (and its review) is cancelled
            keepalive_timeout=limits.idle_timeout,
            max_headers=MAX_REQUEST_HEADERS,
        )
        await self._runner.setup()
        assert self._runner.server is not None
        ssl_context = server_ssl_context(self.serving)
        self._listener = GuardedListener(self._runner.server, ssl_context, limits, self._refused)
        host, port = self.bind
        await self._listener.start(host, port, sockets)
        where = ", ".join(f"{host}:{listening}" for listening in self._listener.ports)
        logger.info("serving /metrics, /healthz and /readyz over https on %s", where)

    async def stop(self) -> None:
        if self._listener is not None:
            await self._listener.close()
            self._listener = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        self.auth.cancel_reviews()

    @web.middleware
    async def _authorize(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        serving = self._listener.serving(request.transport) if self._listener is not None else contextlib.nullcontext()
        with serving:
            if is_always_allowed(request.path, self.serving.always_allow_paths):
                return await handler(request)
            if self._ask_ahead is not None and request.path == METRICS_PATH and self.auth.knows(request.headers):
                # Only for a token accepted lately: an unknown one's requests cannot make the controller collect.
                request[COLLECT] = self._ask_ahead()
            reviewing = time.monotonic()
            decision = await self.auth.check(request.headers, request.path, request.method)
            request[REVIEW_SECONDS] = time.monotonic() - reviewing
            if decision.status == 200:
                return await handler(request)
            response = web.Response(status=decision.status, text=decision.reason)
            if decision.retry_after is not None:  # refused for load: the connection goes too
                response.headers["Retry-After"] = str(decision.retry_after)
                response.force_close()
            return response

    async def _metrics(self, request: web.Request) -> web.Response:
        collecting = time.monotonic()
        try:
            text = await request.get(COLLECT, self._collect)()
        except TimeoutError:
            return web.Response(status=503, text="service unavailable: the metrics were not collected in time")
        timing = server_timing(review=request.get(REVIEW_SECONDS, 0.0), collect=time.monotonic() - collecting)
        return web.Response(body=text, headers={"Content-Type": CONTENT_TYPE_LATEST, "Server-Timing": timing})

    async def _generate(self) -> bytes:
        if self.registry is None:
            raise TimeoutError("no registry to collect")
        return generate_latest(self.registry)

    async def _healthz(self, _: web.Request) -> web.Response:
        problem = self._liveness()
        if problem is not None:
            return web.Response(status=500, text=f"unhealthy: {problem}")
        return web.Response(text="ok")

    async def _readyz(self, _: web.Request) -> web.Response:
        if self._ready is None:
            return web.Response(text="ok: standby, waiting for the lease")
        if self._ready.is_set():
            return web.Response(text="ok: leading")
        return web.Response(status=503, text="not ready: rebuilding the sets from the Node list")


def server_timing(**phases: float) -> str:
    """A Server-Timing header (durations in ms): where a slow scrape spent its time on this side, its token
    review (a fraction of a ms when cached) and its collection (a fresh frame's wait included), as a scraper can see it."""
    return ", ".join(f"{name};dur={1000 * seconds:.1f}" for name, seconds in phases.items())


def read_server_timing(header: str) -> dict[str, float]:
    """The seconds of each phase a Server-Timing header names (what `server_timing` wrote); a malformed entry is skipped."""
    phases = {}
    for entry in header.split(","):
        name, _, duration = entry.strip().partition(";dur=")
        with contextlib.suppress(ValueError):
            phases[name] = float(duration) / 1000
    return phases
