"""The HTTPS endpoint for Prometheus and the kubelet's probes.

/metrics, /healthz (the process is alive, and its background work can run), /livez (the same) and
/readyz: a standby waiting for the lease is ready (so rolling updates and disruption budgets work); a
leader is ready once its sets are rebuilt, and not while it rebuilds. As on kube-controller-manager's
secure port, the health paths are anonymous and /metrics needs a token the API server authenticates
and authorizes (controller.secure_serving).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from controller.secure_serving import DelegatingAuth, ReviewAPI, ServingOptions, is_always_allowed, server_ssl_context

logger = logging.getLogger("nodeipam.server")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: How long a stopping server waits for requests in flight before it cancels them. Probes answer at once;
#: a scrape waiting on a TokenReview from a slow API server must not hold a stopping process (aiohttp's
#: default is a minute, twice a Pod's grace period).
SHUTDOWN_TIMEOUT = 1.0


def split_bind_address(address: str) -> tuple[str, int] | None:
    """ "host:port", ":port" or "[::]:port" -> (host, port); "0" or "" disables the server."""
    if address in ("", "0"):
        return None
    host, _, port = address.rpartition(":")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


class HealthServer:
    def __init__(
        self,
        bind_address: str,
        registry: CollectorRegistry,
        *,
        serving: ServingOptions | None = None,
        reviews: ReviewAPI | None = None,
    ) -> None:
        """`reviews`: the client that sends TokenReviews and SubjectAccessReviews (None: /metrics is refused)."""
        self.bind = split_bind_address(bind_address)
        self.registry = registry
        self.serving = serving or ServingOptions()
        self.auth = DelegatingAuth(reviews)
        self._ready: asyncio.Event | None = None  # set: leading and rebuilt; None: standby
        self._liveness: Callable[[], str | None] = lambda: None
        self._runner: web.AppRunner | None = None

    def watch(self, ready: asyncio.Event) -> None:
        """This replica now leads: report ready once `ready` (the rebuild) is set."""
        self._ready = ready

    def set_liveness(self, check: Callable[[], str | None]) -> None:
        """/healthz answers 500 with the reason while `check` returns one (None: healthy)."""
        self._liveness = check

    def application(self) -> web.Application:
        app = web.Application(middlewares=[self._authorize])
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/livez", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        return app

    async def start(self) -> None:
        if self.bind is None:
            return
        self._runner = web.AppRunner(self.application(), access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT)
        await self._runner.setup()
        host, port = self.bind
        await web.TCPSite(self._runner, host, port, ssl_context=server_ssl_context(self.serving)).start()
        logger.info("serving /metrics, /healthz and /readyz over https on %s:%d", host, port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @web.middleware
    async def _authorize(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if is_always_allowed(request.path, self.serving.always_allow_paths):
            return await handler(request)
        decision = await self.auth.check(request.headers, request.path, request.method)
        if decision.status != 200:
            return web.Response(status=decision.status, text=decision.reason)
        return await handler(request)

    async def _metrics(self, _: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

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
