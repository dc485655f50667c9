"""The metrics port: delegated authentication and authorization of /metrics, anonymous health, liveness,
and its limits: connections, handshakes, idle and slow clients, the review queue (a flood: test_server_flood.py).

A fake review API stands in for the API server here; tests/integration checks the same against a real one.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry, Counter, generate_latest

from controller.bounded import TTLCache
from controller.metrics import Metrics
from controller.secure_serving import (
    ACCESS_REVIEWS,
    CACHED_REJECTED_TOKENS,
    CLOSED_IDLE,
    DROPPED_HANDSHAKE,
    HANDSHAKE_TIMEOUT,
    REFUSAL_REASONS,
    REFUSED_CONNECTION_LIMIT,
    RETRY_AFTER_SECONDS,
    REVIEW_QUEUE_FULL,
    REVIEW_TIMEOUT,
    REVIEWS_IN_FLIGHT,
    TOKEN_REVIEWS,
    ServingLimits,
    ServingOptions,
    parse_always_allow_paths,
)
from controller.server import HealthServer, read_server_timing, server_timing
from controller.serving_reviews import Decision, DelegatingAuth
from localcluster.cluster import free_port

USERS = {"scraper-token": "system:serviceaccount:monitoring:prometheus", "nobody-token": "system:serviceaccount:x:nobody"}
ALLOWED = {("system:serviceaccount:monitoring:prometheus", "/metrics", "get")}


class FakeReviews:
    """TokenReview and SubjectAccessReview answers from two tables; counts the reviews it answers."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.broken = False
        self.users = dict(USERS)

    async def request(self, method: str, path: str, *, body: Any = None) -> Any:
        assert method == "POST"
        self.calls.append(path)
        if self.broken:
            raise ConnectionError("the API server is unreachable")
        if path == TOKEN_REVIEWS:
            user = self.users.get(body["spec"]["token"])
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


@pytest.mark.parametrize(
    ("token", "status", "reviews_sent"),
    [
        pytest.param("scraper-token", 200, (0, 0), id="accepted-and-allowed-kept-longer"),
        pytest.param("nobody-token", 403, (0, 1), id="denied-asked-again-soon"),
        pytest.param("forged-token", 401, (1, 0), id="rejected-asked-again-soon"),
    ],
)
def test_a_refusal_is_cached_for_less_time_than_an_acceptance(token: str, status: int, reviews_sent: tuple[int, int]) -> None:
    async def test(client: TestClient[Any, Any], server: HealthServer, reviews: FakeReviews) -> None:
        assert server.auth.refusal_ttl < server.auth.ttl
        now = [0.0]
        server.auth.clock = lambda: now[0]
        assert (await client.get("/metrics", headers=bearer(token))).status == status
        before = (reviews.calls.count(TOKEN_REVIEWS), reviews.calls.count(ACCESS_REVIEWS))
        now[0] = server.auth.refusal_ttl + 1  # a refusal expired; an acceptance not yet
        assert (await client.get("/metrics", headers=bearer(token))).status == status
        after = (reviews.calls.count(TOKEN_REVIEWS), reviews.calls.count(ACCESS_REVIEWS))
        assert (after[0] - before[0], after[1] - before[1]) == reviews_sent

    serve(test)


@pytest.mark.parametrize(
    ("header", "phases"),
    [
        pytest.param(server_timing(review=0.0125, collect=0.04), {"review": 0.0125, "collect": 0.04}, id="written-here"),
        pytest.param("collect;dur=3.0", {"collect": 0.003}, id="review-missing"),
        pytest.param("", {}, id="no-header"),
        pytest.param("review;dur=x, collect", {}, id="malformed"),
    ],
)
def test_a_server_timing_header_reads_back(header: str, phases: dict[str, float]) -> None:
    assert read_server_timing(header) == pytest.approx(phases)


def test_a_scrape_says_how_long_its_review_and_collection_took() -> None:
    """So that a slow scrape shows on the scraper's side whether the API server's review or the frame held it."""
    review_delay = 0.05

    class SlowReviews(FakeReviews):
        async def request(self, method: str, path: str, *, body: Any = None) -> Any:
            await asyncio.sleep(review_delay)  # the API server's round trip
            return await super().request(method, path, body=body)

    async def main() -> None:
        server = HealthServer("127.0.0.1:0", registry(), reviews=SlowReviews())
        async with TestClient(TestServer(server.application())) as client:
            reviewed = read_server_timing(
                (await client.get("/metrics", headers=bearer("scraper-token"))).headers["Server-Timing"]
            )
            cached = read_server_timing((await client.get("/metrics", headers=bearer("scraper-token"))).headers["Server-Timing"])
        assert set(reviewed) == set(cached) == {"review", "collect"}
        assert reviewed["review"] >= 2 * review_delay  # a TokenReview, then a SubjectAccessReview
        assert cached["review"] < review_delay  # both answers cached

    asyncio.run(main())


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


# -- the review queue ----------------------------------------------------------------------------------------


class HeldReviews(FakeReviews):
    """FakeReviews whose answers wait for `gate`; records the tokens sent and the reviews called off."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.sent_tokens: list[str] = []
        self.in_flight = 0
        self.called_off = 0

    async def request(self, method: str, path: str, *, body: Any = None) -> Any:
        if path == TOKEN_REVIEWS:
            self.sent_tokens.append(body["spec"]["token"])
        self.in_flight += 1
        try:
            await self.gate.wait()
        except asyncio.CancelledError:
            self.called_off += 1
            raise
        finally:
            self.in_flight -= 1
        return await super().request(method, path, body=body)


async def eventually(condition: Callable[[], object], what: str, timeout: float = 5.0) -> None:
    """Poll `condition` on the running loop until it holds; fail after `timeout` seconds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        await asyncio.sleep(0.01)


def check(auth: DelegatingAuth, token: str) -> asyncio.Future[Decision]:
    return asyncio.ensure_future(auth.check(bearer(token), "/metrics", "GET"))


async def known_then_expired(auth: DelegatingAuth, reviews: HeldReviews, now: list[float]) -> None:
    """The scraper's token accepted once, then its cached answer expired: the token stays known."""
    reviews.gate.set()
    assert (await check(auth, "scraper-token")).status == 200
    reviews.gate.clear()
    now[0] += auth.ttl + 1


async def scraper_known_then_expired() -> tuple[DelegatingAuth, HeldReviews]:
    """Reviews held at the gate, and an auth on a clock of its own past the scraper's cached answers."""
    now = [0.0]
    reviews = HeldReviews()
    auth = DelegatingAuth(reviews, clock=lambda: now[0])
    await known_then_expired(auth, reviews, now)
    return auth, reviews


def test_identical_tokens_in_flight_share_one_review() -> None:
    async def main() -> None:
        reviews = HeldReviews()
        auth = DelegatingAuth(reviews)
        checks = [check(auth, "scraper-token") for _ in range(20)]
        await eventually(lambda: auth.waiting_for_review == 20, "the 20 requests to wait")
        reviews.gate.set()
        assert {decision.status for decision in await asyncio.gather(*checks)} == {200}
        assert reviews.calls.count(TOKEN_REVIEWS) == 1 and reviews.calls.count(ACCESS_REVIEWS) == 1

    asyncio.run(main())


@pytest.mark.parametrize(
    ("known", "limit"),
    [pytest.param(False, 3, id="tokens-not-seen-before"), pytest.param(True, 2, id="a-token-accepted-lately")],
)
def test_requests_past_the_waiting_limit_get_429_with_retry_after(known: bool, limit: int) -> None:
    async def main() -> None:
        now = [0.0]
        refused: list[str] = []
        reviews = HeldReviews()
        limits = ServingLimits(waiting_unknown=3, waiting_known=2)
        auth = DelegatingAuth(reviews, clock=lambda: now[0], limits=limits, refused=refused.append)
        if known:
            await known_then_expired(auth, reviews, now)

        def token() -> str:
            return "scraper-token" if known else secrets.token_hex(16)

        waiting = [check(auth, token()) for _ in range(limit)]
        await eventually(lambda: auth.waiting_for_review == limit, f"{limit} requests to wait")
        decision = await check(auth, token())
        assert (decision.status, decision.retry_after) == (429, RETRY_AFTER_SECONDS)
        assert refused == [REVIEW_QUEUE_FULL]
        reviews.gate.set()
        assert {d.status for d in await asyncio.gather(*waiting)} == {200 if known else 401}

    asyncio.run(main())


def test_a_review_that_takes_too_long_answers_503_and_is_called_off() -> None:
    async def main() -> None:
        refused: list[str] = []
        reviews = HeldReviews()
        auth = DelegatingAuth(reviews, limits=ServingLimits(review_wait=0.2), refused=refused.append)
        decision = await check(auth, "scraper-token")
        assert (decision.status, decision.retry_after) == (503, RETRY_AFTER_SECONDS)
        assert refused == [REVIEW_TIMEOUT]
        await eventually(lambda: reviews.called_off == 1 and auth.reviews_under_way == 0, "the review to be called off")

    asyncio.run(main())


@pytest.mark.parametrize(
    ("holding", "waiters", "sent", "called_off"),
    [
        pytest.param(REVIEWS_IN_FLIGHT, 1, False, 0, id="queued-never-sent"),
        pytest.param(0, 1, True, 1, id="sent-then-called-off"),
        pytest.param(0, 2, True, 0, id="sent-and-another-request-waits-for-it"),
    ],
)
def test_the_review_of_a_request_whose_client_left(holding: int, waiters: int, sent: bool, called_off: int) -> None:
    async def main() -> None:
        reviews = HeldReviews()
        auth = DelegatingAuth(reviews)
        holders = [check(auth, f"holder-{index}") for index in range(holding)]
        await eventually(lambda: reviews.in_flight == holding, "the review slots to be taken")
        leaving = [check(auth, "leaving-token") for _ in range(waiters)]
        await eventually(lambda: auth.waiting_for_review == holding + waiters, "the requests to wait")
        leaving[0].cancel()  # what aiohttp does to a handler whose client has gone
        await eventually(lambda: auth.waiting_for_review == holding + waiters - 1, "the cancelled request to leave")
        reviews.gate.set()
        assert {d.status for d in await asyncio.gather(*holders, *leaving[1:])} <= {401}
        assert ("leaving-token" in reviews.sent_tokens) == sent
        assert reviews.called_off == called_off
        assert auth.reviews_under_way == 0

    asyncio.run(main())


def test_a_token_accepted_lately_goes_ahead_of_unknown_ones() -> None:
    async def main() -> None:
        auth, reviews = await scraper_known_then_expired()
        flood = [check(auth, secrets.token_hex(16)) for _ in range(30)]
        await eventually(lambda: auth.waiting_for_review == 30, "the flood to wait")
        scrape = check(auth, "scraper-token")
        await eventually(lambda: auth.waiting_for_review == 31, "the scrape to wait")
        reviews.gate.set()
        assert (await scrape).status == 200
        # Only the reviews already at the API server went before it.
        assert reviews.sent_tokens[1:].index("scraper-token") == REVIEWS_IN_FLIGHT
        assert {d.status for d in await asyncio.gather(*flood)} == {401}

    asyncio.run(main())


def test_a_token_accepted_lately_has_both_its_reviews_sent_at_once() -> None:
    """Its answers expired, a scraper's request waits for one round trip to the API server, not two."""

    async def main() -> None:
        auth, reviews = await scraper_known_then_expired()
        reviews.calls.clear()
        scrape = check(auth, "scraper-token")
        await eventually(lambda: reviews.in_flight == 2, "the TokenReview and the SubjectAccessReview at once")
        reviews.gate.set()
        assert (await scrape).status == 200
        assert sorted(reviews.calls) == sorted([TOKEN_REVIEWS, ACCESS_REVIEWS])

    asyncio.run(main())


@pytest.mark.parametrize(
    ("renewal", "status", "reviews_sent"),
    [
        pytest.param("accepted", 200, 4, id="renewed-answers-serve-past-the-first-ones-expiry"),
        pytest.param("revoked", 401, 5, id="a-token-no-longer-accepted-is-refused-once-renewed"),
        pytest.param("failed", 200, 6, id="a-failed-renewal-leaves-the-old-answers-until-they-expire"),
    ],
)
def test_answers_in_the_second_half_of_their_life_are_renewed_without_a_scrape_waiting(
    renewal: str, status: int, reviews_sent: int
) -> None:
    """A scraper's request reads its cached answers and never waits for a review after its first."""

    async def main() -> None:
        now = [0.0]
        reviews = HeldReviews()
        auth = DelegatingAuth(reviews, clock=lambda: now[0])
        reviews.gate.set()
        assert (await check(auth, "scraper-token")).status == 200
        reviews.gate.clear()  # from here a request that waited for a review would not end
        now[0] = auth.ttl - auth.renew_within - 1
        assert (await asyncio.wait_for(check(auth, "scraper-token"), 5)).status == 200
        assert auth.reviews_under_way == 0, "renewed before the second half of the answers' life"
        now[0] = auth.ttl - auth.renew_within + 1
        assert (await asyncio.wait_for(check(auth, "scraper-token"), 5)).status == 200
        await eventually(lambda: reviews.in_flight == 2, "the TokenReview and the SubjectAccessReview renewed")
        reviews.users["scraper-token"] = USERS["scraper-token"] if renewal != "revoked" else None  # type: ignore[assignment]
        reviews.broken = renewal == "failed"
        reviews.gate.set()
        await eventually(lambda: auth.reviews_under_way == 0, "the renewals to land")
        reviews.broken = False
        now[0] += 1  # the renewals' answers, or the old ones where they failed
        assert (await check(auth, "scraper-token")).status == status
        now[0] = auth.ttl + 1  # the first answers would have expired (and a refusal too)
        assert (await check(auth, "scraper-token")).status == status
        assert len(reviews.calls) == reviews_sent

    asyncio.run(main())


@pytest.mark.parametrize(
    ("user_now", "status", "access_reviews"),
    [
        pytest.param(USERS["scraper-token"], 200, 1, id="the-same-user-uses-the-answer-sent-ahead"),
        pytest.param(USERS["nobody-token"], 403, 2, id="another-user-is-reviewed-on-its-own"),
        pytest.param(None, 401, 1, id="a-token-no-longer-accepted-is-refused"),
    ],
)
def test_the_access_review_sent_ahead_decides_only_for_the_user_foreseen(
    user_now: str | None, status: int, access_reviews: int
) -> None:
    """The SubjectAccessReview sent ahead is the foreseen user's: it must not let another user in."""

    class ChangedReviews(FakeReviews):
        def __init__(self) -> None:
            super().__init__()
            self.users = dict(USERS)

        async def request(self, method: str, path: str, *, body: Any = None) -> Any:
            if path != TOKEN_REVIEWS:
                return await super().request(method, path, body=body)
            self.calls.append(path)
            user = self.users.get(body["spec"]["token"])
            return {"status": {"authenticated": True, "user": {"username": user, "groups": ["g"]}} if user else {}}

    async def main() -> None:
        now = [0.0]
        reviews = ChangedReviews()
        auth = DelegatingAuth(reviews, clock=lambda: now[0])
        assert (await check(auth, "scraper-token")).status == 200
        now[0] += auth.ttl + 1
        reviews.users["scraper-token"] = user_now  # type: ignore[assignment]
        reviews.calls.clear()
        assert (await check(auth, "scraper-token")).status == status
        assert reviews.calls.count(TOKEN_REVIEWS) == 1
        assert reviews.calls.count(ACCESS_REVIEWS) == access_reviews
        await eventually(lambda: auth.reviews_under_way == 0, "no review left under way")

    asyncio.run(main())


@pytest.mark.parametrize(
    ("token", "asked_ahead"),
    [
        pytest.param("scraper-token", 1, id="a-token-accepted-lately"),
        pytest.param("forged-token", 0, id="a-token-never-accepted"),
    ],
)
def test_a_scrape_asks_for_its_frame_ahead_of_its_review_only_with_a_token_accepted_lately(token: str, asked_ahead: int) -> None:
    """So that the frame's wait and the review overlap; a token never accepted cannot make the controller collect."""

    async def main() -> None:
        now = [0.0]
        reviews = HeldReviews()
        asks: list[str] = []

        async def collect() -> bytes:
            return b"node_ipam_test_total 1.0\n"

        def ask_ahead() -> Callable[[], Awaitable[bytes]]:
            asks.append(token)
            return collect

        server = HealthServer("127.0.0.1:0", None, reviews=reviews, collect=collect, ask_ahead=ask_ahead)
        server.auth.clock = lambda: now[0]
        async with TestClient(TestServer(server.application())) as client:
            await known_then_expired(server.auth, reviews, now)
            asks.clear()
            scrape = asyncio.ensure_future(client.get("/metrics", headers=bearer(token)))
            await eventually(lambda: reviews.in_flight > 0, "the review under way")
            assert len(asks) == asked_ahead  # before the review ends
            reviews.gate.set()
            assert (await scrape).status == (200 if asked_ahead else 401)

    asyncio.run(main())


def test_random_tokens_neither_grow_the_caches_nor_push_a_scrapers_answer_out() -> None:
    async def main() -> None:
        reviews = FakeReviews()
        auth = DelegatingAuth(reviews)
        assert (await check(auth, "scraper-token")).status == 200
        for _ in range(CACHED_REJECTED_TOKENS * 3):
            assert (await check(auth, secrets.token_hex(16))).status == 401
        assert auth.cached_entries <= CACHED_REJECTED_TOKENS + 3  # the flood's, the scraper's user, access, known
        reviews.calls.clear()
        assert (await check(auth, "scraper-token")).status == 200
        assert reviews.calls == []  # still cached

    asyncio.run(main())


@pytest.mark.parametrize(
    ("size", "steps", "left"),
    [
        pytest.param(4, [("put", "a", 0.0), ("get", "a", 9.9)], {"a"}, id="kept-within-its-ttl"),
        pytest.param(4, [("put", "a", 0.0), ("get", "a", 10.0)], set(), id="gone-at-its-ttl"),
        pytest.param(2, [("put", "a", 0.0), ("put", "b", 0.0), ("put", "c", 0.0)], {"b", "c"}, id="oldest-goes-past-the-size"),
        pytest.param(
            2,
            [("put", "a", 0.0), ("put", "b", 0.0), ("get", "a", 1.0), ("put", "c", 1.0)],
            {"a", "c"},
            id="least-recently-used-goes",
        ),
        pytest.param(2, [("put", "a", 0.0), ("put", "a", 5.0), ("get", "a", 12.0)], {"a"}, id="put-again-renews"),
    ],
)
def test_ttl_cache(size: int, steps: list[tuple[str, str, float]], left: set[str]) -> None:
    cache: TTLCache[str, bool] = TTLCache(size, ttl=10.0)
    for action, key, now in steps:
        if action == "put":
            cache.put(key, True, now)
        else:
            cache.get(key, now)
    last = steps[-1][2]
    assert {key for key in "abc" if cache.get(key, last)} == left
    assert len(cache) <= size


# -- connections -----------------------------------------------------------------------------------------------


def client_tls() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def head(path: str, token: str | None = None) -> bytes:
    authorization = f"Authorization: Bearer {token}\r\n" if token else ""
    return f"GET {path} HTTP/1.1\r\nHost: x\r\n{authorization}\r\n".encode()


async def status_line(reader: asyncio.StreamReader) -> str:
    """The response's status line, or "" when the server closed the connection instead."""
    try:
        return (await reader.readline()).decode().strip()
    except OSError:
        return ""


async def get(port: int, path: str, token: str | None = None) -> str:
    """The status line of GET path on a new TLS connection; "" when the connection was refused or dropped."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_tls())
    except OSError:
        return ""
    writer.write(head(path, token))
    line = await status_line(reader)
    writer.transport.abort()
    return line


async def closed_by_server(reader: asyncio.StreamReader) -> bool:
    """Read until the server closes the connection."""
    try:
        while await reader.read(4096):
            pass
    except OSError:
        pass
    return True


def serve_tls(test: Callable[[HealthServer, int, HeldReviews, list[str]], Awaitable[None]], limits: ServingLimits) -> None:
    """The HealthServer on a free loopback port with `limits`, HeldReviews, and the refusals it reports."""

    async def main() -> None:
        reviews = HeldReviews()
        refused: list[str] = []
        server = HealthServer(
            "127.0.0.1:0", registry(), serving=ServingOptions(limits=limits), reviews=reviews, refused=refused.append
        )
        await server.start()
        try:
            await test(server, server.ports[0], reviews, refused)
        finally:
            reviews.gate.set()
            await server.stop()

    asyncio.run(main())


@pytest.mark.parametrize(
    ("serving", "new_one", "reason"),
    [
        pytest.param(False, "HTTP/1.1 200 OK", CLOSED_IDLE, id="the-idle-one-makes-room"),
        pytest.param(True, "", REFUSED_CONNECTION_LIMIT, id="all-serving-the-new-one-is-refused"),
    ],
)
def test_past_the_connection_limit(serving: bool, new_one: str, reason: str) -> None:
    async def test(server: HealthServer, port: int, reviews: HeldReviews, refused: list[str]) -> None:
        held = [await asyncio.open_connection("127.0.0.1", port, ssl=client_tls()) for _ in range(3)]
        await eventually(lambda: server.open_connections == 3, "3 connections")
        if serving:
            for _, writer in held:
                writer.write(head("/metrics", secrets.token_hex(16)))
            await eventually(lambda: server.auth.waiting_for_review == 3, "3 requests waiting for reviews")
        assert await get(port, "/healthz") == new_one
        assert refused == [reason]
        assert server.open_connections <= 3
        for _, writer in held:
            writer.transport.abort()

    serve_tls(test, ServingLimits(connections=3))


@pytest.mark.parametrize("trickle", [False, True], ids=["idle", "head-a-byte-at-a-time"])
def test_idle_connections_and_slow_heads_are_closed(trickle: bool) -> None:
    async def test(server: HealthServer, port: int, _: HeldReviews, __: list[str]) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_tls())
        closed = asyncio.ensure_future(closed_by_server(reader))
        for byte in head("/healthz")[:-2] if trickle else b"":  # never the blank line that ends the head
            if closed.done():
                break
            writer.write(bytes([byte]))
            await asyncio.sleep(0.05)
        await asyncio.wait_for(closed, timeout=10)
        await eventually(lambda: server.open_connections == 0, "the server to let go of the connection")
        writer.transport.abort()

    serve_tls(test, ServingLimits(idle_timeout=0.3))


def test_a_connection_that_never_starts_its_handshake_is_dropped() -> None:
    async def test(server: HealthServer, port: int, _: HeldReviews, refused: list[str]) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)  # plain TCP, no ClientHello
        await asyncio.wait_for(closed_by_server(reader), timeout=10)
        await eventually(lambda: refused == [HANDSHAKE_TIMEOUT], "the handshake timeout to be counted")
        writer.transport.abort()

    serve_tls(test, ServingLimits(handshake_timeout=0.3))


def test_past_the_handshake_limit_the_oldest_handshake_is_dropped() -> None:
    async def test(server: HealthServer, port: int, _: HeldReviews, refused: list[str]) -> None:
        silent = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]  # no ClientHello
        await eventually(lambda: server.open_connections == 2, "2 handshakes in progress")
        assert await get(port, "/healthz") == "HTTP/1.1 200 OK"
        assert refused == [DROPPED_HANDSHAKE]
        oldest_reader, _ = silent[0]
        await asyncio.wait_for(closed_by_server(oldest_reader), timeout=10)
        for _, writer in silent:
            writer.transport.abort()

    serve_tls(test, ServingLimits(handshakes=2))


def test_429_from_the_review_queue_has_retry_after_and_closes_the_connection() -> None:
    async def test(server: HealthServer, port: int, _: HeldReviews, __: list[str]) -> None:
        waiting = asyncio.ensure_future(get(port, "/metrics", secrets.token_hex(16)))
        await eventually(lambda: server.auth.waiting_for_review == 1, "a request waiting for its review")
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_tls())
        writer.write(head("/metrics", secrets.token_hex(16)))
        answer = b""
        with contextlib.suppress(OSError):
            answer = await asyncio.wait_for(reader.read(), timeout=10)  # to the end: the server closes
        assert answer.startswith(b"HTTP/1.1 429 ")
        assert f"Retry-After: {RETRY_AFTER_SECONDS}\r\n".encode() in answer
        writer.transport.abort()
        waiting.cancel()

    serve_tls(test, ServingLimits(waiting_unknown=1))


def test_a_client_that_leaves_takes_its_review_with_it() -> None:
    async def test(server: HealthServer, port: int, reviews: HeldReviews, _: list[str]) -> None:
        _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_tls())
        writer.write(head("/metrics", "leaving-token"))
        await eventually(lambda: reviews.sent_tokens == ["leaving-token"], "its review to be sent")
        writer.transport.abort()
        await eventually(lambda: reviews.called_off == 1, "its review to be called off")
        assert server.auth.reviews_under_way == 0

    serve_tls(test, ServingLimits())


def test_refusals_are_counted_by_reason_each_reason_shown_from_the_start() -> None:
    async def main() -> None:
        metrics = Metrics()
        reviews = HeldReviews()
        auth = DelegatingAuth(reviews, limits=ServingLimits(waiting_unknown=1), refused=metrics.refused_on_metrics_port)
        waiting = check(auth, secrets.token_hex(16))
        await eventually(lambda: auth.waiting_for_review == 1, "a request waiting for its review")
        assert (await check(auth, secrets.token_hex(16))).status == 429
        text = generate_latest(metrics.registry).decode()
        for reason in REFUSAL_REASONS:
            count = 1.0 if reason == REVIEW_QUEUE_FULL else 0.0
            assert f'node_ipam_controller_metrics_port_refused_total{{reason="{reason}"}} {count}' in text
        reviews.gate.set()
        await waiting

    asyncio.run(main())
