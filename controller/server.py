"""The HTTP endpoint for Prometheus and the kubelet's probes.

/metrics, /healthz (the process is alive) and /readyz: a standby waiting for
the lease is ready (so rolling updates and disruption budgets work); a leader
is ready once its sets are rebuilt, and not while it rebuilds.
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

logger = logging.getLogger("nodeipam.server")


def split_bind_address(address: str) -> tuple[str, int] | None:
    """ "host:port", ":port" or "[::]:port" -> (host, port); "0" or "" disables the server."""
    if address in ("", "0"):
        return None
    host, _, port = address.rpartition(":")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


class HealthServer:
    def __init__(self, bind_address: str, registry: CollectorRegistry) -> None:
        self.bind = split_bind_address(bind_address)
        self.registry = registry
        self._ready: asyncio.Event | None = None  # set: leading and rebuilt; None: standby
        self._runner: web.AppRunner | None = None

    def watch(self, ready: asyncio.Event) -> None:
        """This replica now leads: report ready once `ready` (the rebuild) is set."""
        self._ready = ready

    async def start(self) -> None:
        if self.bind is None:
            return
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        host, port = self.bind
        await web.TCPSite(self._runner, host, port).start()
        logger.info("serving /metrics, /healthz and /readyz on %s:%d", host, port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _metrics(self, _: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, _: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def _readyz(self, _: web.Request) -> web.Response:
        if self._ready is None:
            return web.Response(text="ok: standby, waiting for the lease")
        if self._ready.is_set():
            return web.Response(text="ok: leading")
        return web.Response(status=503, text="not ready: rebuilding the sets from the Node list")
