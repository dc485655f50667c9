"""The metrics port: delegated authentication and authorization of /metrics, anonymous health, liveness.

A fake review API stands in for the API server here; tests/integration checks the same against a real one.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry, Counter

from controller.localcluster.cluster import free_port
from controller.secure_serving import ACCESS_REVIEWS, TOKEN_REVIEWS, ServingOptions, parse_always_allow_paths
from controller.server import HealthServer

USERS = {"scraper-token": "system:serviceaccount:monitoring:prometheus", "nobody-token": "system:serviceaccount:x:nobody"}
ALLOWED = {("system:serviceaccount:monitoring:prometheus", "/metrics", "get")}


class FakeReviews:
    """TokenReview and SubjectAccessReview answers from two tables; counts the reviews it answers."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.broken = False

    async def request(self, method: str, path: str, *, body: Any = None) -> Any:
        assert method == "POST"
        self.calls.append(path)
        if self.broken:
            raise ConnectionError("the API server is unreachable")
        if path == TOKEN_REVIEWS:
            user = USERS.get(body["spec"]["token"])
            return {"status": {"authenticated": True, "user": {"username": user, "groups": ["g"]}} if user else {}}
        assert path == ACCESS_REVIEWS
        spec = body["spec"]
        attributes = spec["nonResourceAttributes"]
        return {"status": {"allowed": (spec["user"], attributes["path"], attributes["verb"]) in ALLOWED}}


def registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    Counter("node_ipam_test_total", "a test counter", registry=registry).inc()
    return registry


def serve(test: Callable[[TestClient[Any, Any], HealthServer, FakeReviews], Awaitable[None]]) -> None:
    async def main() -> None:
        reviews = FakeReviews()
        server = HealthServer("127.0.0.1:0", registry(), reviews=reviews)
        async with TestClient(TestServer(server.application())) as client:
            await test(client, server, reviews)

    asyncio.run(main())


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        pytest.param({}, 401, id="no-token"),
        pytest.param({"Authorization": "Basic YWRtaW46YWRtaW4="}, 401, id="not-a-bearer-token"),
        pytest.param(bearer("forged-token"), 401, id="token-not-authenticated"),
        pytest.param(bearer("nobody-token"), 403, id="authenticated-not-authorized"),
        pytest.param(bearer("scraper-token"), 200, id="authorized"),
    ],
)
def test_metrics_need_an_authorized_token(headers: dict[str, str], status: int) -> None:
    async def test(client: TestClient[Any, Any], _: HealthServer, __: FakeReviews) -> None:
        response = await client.get("/metrics", headers=headers)
        assert response.status == status, await response.text()
        if status == 200:
            assert "node_ipam_test_total 1.0" in await response.text()

    serve(test)


@pytest.mark.parametrize("path", ["/healthz", "/livez", "/readyz"])
def test_health_is_anonymous_and_sends_no_review(path: str) -> None:
    async def test(client: TestClient[Any, Any], _: HealthServer, reviews: FakeReviews) -> None:
        assert (await client.get(path)).status == 200
        assert reviews.calls == []

    serve(test)


def test_review_answers_are_cached_allowed_and_denied_alike() -> None:
    async def test(client: TestClient[Any, Any], server: HealthServer, reviews: FakeReviews) -> None:
        now = [0.0]
        server.auth.clock = lambda: now[0]
        for token, status in (("scraper-token", 200), ("nobody-token", 403), ("forged-token", 401)):
            for _ in range(3):
                assert (await client.get("/metrics", headers=bearer(token))).status == status
        # One TokenReview per token, one SubjectAccessReview per authenticated user.
        assert reviews.calls.count(TOKEN_REVIEWS) == 3 and reviews.calls.count(ACCESS_REVIEWS) == 2
        now[0] = server.auth.ttl + 1  # the answers expire: asked again
        assert (await client.get("/metrics", headers=bearer("scraper-token"))).status == 200
        assert reviews.calls.count(TOKEN_REVIEWS) == 4 and reviews.calls.count(ACCESS_REVIEWS) == 3

    serve(test)


def test_an_unreachable_api_server_refuses_and_caches_nothing() -> None:
    async def test(client: TestClient[Any, Any], _: HealthServer, reviews: FakeReviews) -> None:
        reviews.broken = True
        assert (await client.get("/metrics", headers=bearer("scraper-token"))).status == 500
        reviews.broken = False
        assert (await client.get("/metrics", headers=bearer("scraper-token"))).status == 200

    serve(test)


def test_liveness_reports_the_reason() -> None:
    async def test(client: TestClient[Any, Any], server: HealthServer, _: FakeReviews) -> None:
        problem: list[str | None] = ["the resync loop cannot run: boom"]
        server.set_liveness(lambda: problem[0])
        response = await client.get("/healthz")
        assert response.status == 500 and "the resync loop cannot run: boom" in await response.text()
        assert (await client.get("/readyz")).status == 200  # readiness is not liveness
        problem[0] = None
        assert (await client.get("/healthz")).status == 200

    serve(test)


def test_serves_https_with_a_self_signed_certificate_by_default() -> None:
    async def main() -> None:
        port = free_port()
        server = HealthServer(f"127.0.0.1:{port}", registry(), serving=ServingOptions(), reviews=FakeReviews())
        await server.start()
        try:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            async with aiohttp.ClientSession() as session:
                async with session.get(f"https://127.0.0.1:{port}/healthz", ssl=context) as response:
                    assert response.status == 200
                with pytest.raises(aiohttp.ClientError):  # plain http is not served
                    async with session.get(f"http://127.0.0.1:{port}/healthz") as response:
                        await response.read()
        finally:
            await server.stop()

    asyncio.run(main())


@pytest.mark.parametrize(("value", "paths"), [("/healthz,/readyz", ("/healthz", "/readyz")), ("/debug/*", ("/debug/*",))])
def test_always_allow_paths_parse(value: str, paths: tuple[str, ...]) -> None:
    assert parse_always_allow_paths(value) == paths


@pytest.mark.parametrize("value", ["healthz", "/a*b"])
def test_always_allow_paths_refuse_relative_or_inner_wildcards(value: str) -> None:
    with pytest.raises(ValueError):
        parse_always_allow_paths(value)
