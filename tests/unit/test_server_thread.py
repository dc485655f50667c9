"""The metrics port on a thread of its own: probes and scrapes answer while the main loop is held; probes fail once it is stuck.

The main loop is held the way a long callback holds it: the test itself sleeps on it, synchronously, while a
client on another thread sends its requests, each on a new HTTPS connection as the kubelet does.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import ssl
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from controller.loopwatch import Heartbeat, watch_loop
from controller.secure_serving import ACCESS_REVIEWS, TOKEN_REVIEWS
from controller.server import SHUTDOWN_TIMEOUT
from controller.server_thread import ServerThread
from controller.serving_reviews import ReviewAPI
from tests.conftest import wait_for

TOKEN = "scraper-token"
HOLD = 2.0  # seconds the main loop is held
PROMPT = 1.0  # a probe answered within this while the loop is held did not wait for it


class Reviews:
    """Accepts TOKEN for /metrics; with `hang` set, a review never answers (an API server gone quiet)."""

    def __init__(self, hang: bool = False) -> None:
        self.hang = hang
        self.reviews = 0

    async def request(self, method: str, path: str, *, body: Any = None) -> Any:
        self.reviews += 1
        if self.hang:
            await asyncio.Event().wait()
        if path == TOKEN_REVIEWS:
            accepted = body["spec"]["token"] == TOKEN
            return {"status": {"authenticated": accepted, "user": {"username": "prometheus"}}}
        assert path == ACCESS_REVIEWS
        return {"status": {"allowed": True}}


def get(port: int, path: str, token: str | None = None) -> tuple[int, str, float]:
    """(status, body, seconds) of GET path on a new HTTPS connection; status 0 when nothing answered."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    started = time.monotonic()
    client = http.client.HTTPSConnection("127.0.0.1", port, timeout=10, context=context)
    try:
        client.request("GET", path, headers={"Authorization": f"Bearer {token}"} if token else {})
        response = client.getresponse()
        return response.status, response.read().decode(), time.monotonic() - started
    except (OSError, http.client.HTTPException):
        return 0, "", time.monotonic() - started
    finally:
        client.close()


def in_thread(work: Callable[[], object]) -> threading.Thread:
    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    return thread


async def hold_the_loop_while(work: Callable[[], object], seconds: float = HOLD) -> None:
    """Run `work` on another thread while this thread, the main loop's, sleeps without yielding; then wait for it."""
    thread = in_thread(work)
    time.sleep(seconds)
    await asyncio.to_thread(thread.join, 10)


def serve(
    test: Callable[[ServerThread, int], Awaitable[None]],
    reviews: Reviews | None = None,
    registry: CollectorRegistry | None = None,
    **options: Any,
) -> None:
    """A ServerThread on a free loopback port, with the main loop's pulse beating its heartbeat."""

    @contextlib.asynccontextmanager
    async def open_reviews() -> AsyncIterator[ReviewAPI]:
        yield reviews or Reviews()

    async def main() -> None:
        registered = registry or CollectorRegistry()
        Counter("node_ipam_test", "a test counter", registry=registered).inc()
        heartbeat = Heartbeat()
        pulse = asyncio.ensure_future(watch_loop(heartbeat, lambda lag: None, interval=0.05))
        server = ServerThread("127.0.0.1:0", registered, heartbeat, open_reviews=open_reviews, **options)
        await server.start()
        try:
            await test(server, server.ports[0])
        finally:
            await server.stop()
            pulse.cancel()

    asyncio.run(main())


def test_probes_answer_at_once_while_the_main_loop_is_held() -> None:
    async def test(server: ServerThread, port: int) -> None:
        answers: dict[str, tuple[int, str, float]] = {}

        def probe() -> None:
            for path in ("/healthz", "/livez", "/readyz"):
                answers[path] = get(port, path)

        await hold_the_loop_while(probe)
        for path, (status, _, took) in answers.items():
            assert status == 200 and took < PROMPT, f"{path}: {status} after {took:.2f}s with the main loop held"

    serve(test)


def test_healthz_fails_once_the_main_loop_has_not_ticked_for_the_stall_limit_then_recovers() -> None:
    async def test(server: ServerThread, port: int) -> None:
        seen: list[str | None] = []

        def unhealthy() -> str | None:
            status, text, _ = get(port, "/healthz")
            return text if status == 500 else None

        await hold_the_loop_while(lambda: seen.append(wait_for(unhealthy, timeout=HOLD - 0.5, what="/healthz to fail")))
        assert "the main event loop has not run for" in (seen[0] or "")
        await asyncio.sleep(0.2)  # the loop runs again, and beats
        assert (await asyncio.to_thread(get, port, "/healthz"))[0] == 200

    serve(test, stall_limit=0.3)


def test_healthz_reports_the_main_loops_liveness_check_and_readyz_its_rebuild() -> None:
    async def test(server: ServerThread, port: int) -> None:
        problem: list[str | None] = ["background loop resync failed 5 times in a row"]
        server.set_liveness(lambda: problem[0])
        await asyncio.sleep(0.2)  # a beat runs the check
        status, text, _ = await asyncio.to_thread(get, port, "/healthz")
        assert status == 500 and "background loop resync failed 5 times in a row" in text
        problem[0] = None
        await asyncio.sleep(0.2)
        assert (await asyncio.to_thread(get, port, "/healthz"))[0] == 200
        status, text, _ = await asyncio.to_thread(get, port, "/readyz")
        assert status == 200 and "standby" in text
        rebuilt = asyncio.Event()
        server.watch(rebuilt)
        assert (await asyncio.to_thread(get, port, "/readyz"))[0] == 503
        rebuilt.set()
        assert (await asyncio.to_thread(get, port, "/readyz"))[:2] == (200, "ok: leading")

    serve(test)


def test_a_scrape_never_waits_for_a_held_main_loop_and_shows_its_last_refresh() -> None:
    refreshes: list[float] = []
    registry = CollectorRegistry()
    Gauge("node_ipam_test_refreshes", "how many times the main loop refreshed its views", registry=registry).set_function(
        lambda: len(refreshes)
    )

    def refreshed_in(text: str) -> float:
        line = next(line for line in text.splitlines() if line.startswith("node_ipam_test_refreshes "))
        return float(line.split()[1])

    async def test(server: ServerThread, port: int) -> None:
        assert (await asyncio.to_thread(get, port, "/metrics"))[0] == 401
        status, text, _ = await asyncio.to_thread(get, port, "/metrics", TOKEN)
        assert status == 200 and "node_ipam_test_total 1.0" in text and refreshed_in(text) == 1  # refreshed first
        answers: list[tuple[int, str, float]] = []
        await hold_the_loop_while(lambda: answers.append(get(port, "/metrics", TOKEN)))
        status, text, took = answers[0]
        assert status == 200 and took < PROMPT, (status, took)  # answered while the main loop was held ...
        assert refreshed_in(text) == 1  # ... with the views of its last refresh
        await asyncio.sleep(0.1)  # the refresh queued meanwhile runs
        status, text, _ = await asyncio.to_thread(get, port, "/metrics", TOKEN)
        assert status == 200 and refreshed_in(text) >= 2

    serve(test, registry=registry, refresh=lambda: refreshes.append(time.monotonic()))


def test_stopping_with_a_scrape_hanging_on_its_review_is_bounded() -> None:
    async def test(server: ServerThread, port: int) -> None:
        scrape = in_thread(lambda: get(port, "/metrics", TOKEN))
        await asyncio.to_thread(wait_for, lambda: reviews.reviews >= 1, 10, 0.01, "the scrape's review to be sent")
        started = time.monotonic()
        await server.stop()
        assert time.monotonic() - started < SHUTDOWN_TIMEOUT + 2
        scrape.join(10)

    reviews = Reviews(hang=True)
    serve(test, reviews)


def test_a_disabled_port_starts_no_thread() -> None:
    async def main() -> None:
        server = ServerThread("0", CollectorRegistry(), Heartbeat())
        before = threading.active_count()
        await server.start()
        assert threading.active_count() == before and server.ports == []
        await server.stop()

    asyncio.run(main())
