"""KubeClient against an in-process fake API server: retries, Retry-After, watch framing, paged LISTs.

The waits between retries go to a recording `sleep`, so nothing here depends
on the wall clock.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from controller.kube import RETRY_AFTER_CAP, TRANSIENT_ATTEMPTS, ApiError, KubeClient
from tests.fakeapi import Answer, FakeApi, reply, reset, status, stream

NODE_PATH = "/api/v1/nodes/node-a"
NODES_PATH = "/api/v1/nodes"
NODE = {"metadata": {"name": "node-a", "uid": "uid-a", "resourceVersion": "7"}, "spec": {}}
FAMILY_CIDRS = [pytest.param("10.244.3.0/24", id="ipv4"), pytest.param("fd00:10:244:3::/64", id="ipv6")]


def run_with_client(
    test: Callable[[FakeApi, KubeClient, list[float]], Awaitable[None]], *, transient_attempts: int = TRANSIENT_ATTEMPTS
) -> list[float]:
    """Run `test` with a fake server and a client whose waits are only recorded; returns the waits."""
    waits: list[float] = []

    async def record(seconds: float) -> None:
        waits.append(seconds)

    async def go() -> None:
        async with FakeApi() as api, KubeClient(api.credentials, transient_attempts=transient_attempts, sleep=record) as kube:
            await test(api, kube, waits)

    asyncio.run(go())
    return waits


@pytest.mark.parametrize(
    ("answers", "waits"),
    [
        pytest.param([status(500), reply(200, NODE)], [0.2], id="5xx-then-ok"),
        pytest.param([reset(), reply(200, NODE)], [0.2], id="reset-then-ok"),
        pytest.param([status(502), status(504), reset(), reply(200, NODE)], [0.2, 0.4, 0.8], id="backoff-doubles"),
        pytest.param([status(429, headers={"Retry-After": "3"}), reply(200, NODE)], [3.0], id="429-retry-after"),
        pytest.param([status(503, headers={"Retry-After": "1"}), reply(200, NODE)], [1.0], id="503-retry-after"),
        pytest.param(
            [status(429, headers={"Retry-After": "3600"}), reply(200, NODE)], [RETRY_AFTER_CAP], id="retry-after-capped"
        ),
        pytest.param([status(429), reply(200, NODE)], [0.2], id="429-without-retry-after"),
        pytest.param([status(429, headers={"Retry-After": "soon"}), reply(200, NODE)], [0.2], id="retry-after-unreadable"),
        pytest.param([status(500, headers={"Retry-After": "5"}), reply(200, NODE)], [0.2], id="500-ignores-retry-after"),
    ],
)
def test_transient_failures_are_retried_with_backoff(answers: list[Answer], waits: list[float]) -> None:
    async def test(api: FakeApi, kube: KubeClient, _: list[float]) -> None:
        # A PATCH: aiohttp itself retries an idempotent GET once on a reset connection.
        api.script("PATCH", NODE_PATH, *answers)
        node = await kube.request("PATCH", NODE_PATH, body={}, content_type="application/merge-patch+json")
        assert node["metadata"]["uid"] == "uid-a"
        assert len(api.requests_to("PATCH", NODE_PATH)) == len(answers)

    assert run_with_client(test) == waits


@pytest.mark.parametrize(
    ("answer", "status_code", "attempts"),
    [
        pytest.param(reset(), 0, TRANSIENT_ATTEMPTS, id="resets-give-status-0"),
        pytest.param(status(503), 503, TRANSIENT_ATTEMPTS, id="5xx-gives-last-status"),
        pytest.param(status(422, "Invalid"), 422, 1, id="4xx-never-retried"),
        pytest.param(status(409, "Conflict"), 409, 1, id="conflict-never-retried"),
    ],
)
def test_gives_up_after_the_attempts(answer: Answer, status_code: int, attempts: int) -> None:
    async def test(api: FakeApi, kube: KubeClient, _: list[float]) -> None:
        api.script("PATCH", NODE_PATH, answer)
        with pytest.raises(ApiError) as raised:
            await kube.request("PATCH", NODE_PATH, body={}, content_type="application/merge-patch+json")
        assert raised.value.status == status_code
        assert raised.value.may_have_applied == (status_code == 0 or status_code >= 500)
        assert len(api.requests_to("PATCH", NODE_PATH)) == attempts

    assert len(run_with_client(test)) == attempts - 1


def test_one_attempt_means_no_retry() -> None:
    async def test(api: FakeApi, kube: KubeClient, _: list[float]) -> None:
        api.script("GET", NODE_PATH, status(500), reply(200, NODE))
        with pytest.raises(ApiError) as raised:
            await kube.get_node("node-a")
        assert raised.value.status == 500
        assert len(api.requests_to("GET", NODE_PATH)) == 1

    assert run_with_client(test, transient_attempts=1) == []


# -- watch ----------------------------------------------------------------------


def event_line(kind: str, name: str, cidr: str = "", **extra: Any) -> bytes:
    spec = {"podCIDR": cidr, "podCIDRs": [cidr]} if cidr else {}
    node = {"metadata": {"name": name, "uid": f"uid-{name}", "resourceVersion": "9", **extra}, "spec": spec}
    return json.dumps({"type": kind, "object": node}).encode() + b"\n"


def collect_watch(
    chunks: list[bytes | asyncio.Event], on_event: Callable[[int], None] = lambda _: None
) -> list[tuple[str, str, tuple[str, ...]]]:
    """Serve one watch answer of `chunks`; the (type, name, podCIDRs) it yields. `on_event(n)` runs after the n-th."""
    seen: list[tuple[str, str, tuple[str, ...]]] = []

    async def test(api: FakeApi, kube: KubeClient, _: list[float]) -> None:
        api.script("GET", NODES_PATH, stream(chunks))
        async for kind, node in kube.watch_nodes("5"):
            seen.append((kind, node.name, node.pod_cidrs))
            on_event(len(seen))
        (request,) = api.requests_to("GET", NODES_PATH)
        assert request.query == {"watch": "1", "resourceVersion": "5", "allowWatchBookmarks": "true"}

    run_with_client(test)
    return seen


@pytest.mark.parametrize("cidr", FAMILY_CIDRS)
def test_watch_joins_an_event_split_across_chunks(cidr: str) -> None:
    first, second = event_line("ADDED", "a", cidr), event_line("MODIFIED", "b", cidr)
    rest_sent = asyncio.Event()
    # The second event's first half goes out with the first event; its rest only after the client has
    # yielded the first event, so the client has certainly read the half line on its own.
    chunks: list[bytes | asyncio.Event] = [first + second[:20], rest_sent, second[20:]]
    seen = collect_watch(chunks, on_event=lambda count: rest_sent.set() if count == 1 else None)
    assert seen == [("ADDED", "a", (cidr,)), ("MODIFIED", "b", (cidr,))]


def test_watch_reads_a_line_longer_than_aiohttp_line_limit() -> None:
    huge = event_line("ADDED", "big", "10.244.9.0/24", annotations={"note": "x" * 200_000})
    assert len(huge) > 2**16 * 2
    seen = collect_watch([huge[:1000], huge[1000:150_000], huge[150_000:], event_line("DELETED", "c")])
    assert seen == [("ADDED", "big", ("10.244.9.0/24",)), ("DELETED", "c", ())]


def test_watch_skips_bookmarks_and_ends_at_an_error() -> None:
    bookmark = json.dumps({"type": "BOOKMARK", "object": {"kind": "Node", "metadata": {"resourceVersion": "12"}}}).encode()
    gone = json.dumps({"type": "ERROR", "object": {"kind": "Status", "code": 410, "reason": "Expired"}}).encode()
    chunks: list[bytes | asyncio.Event] = [
        event_line("ADDED", "a"),
        bookmark + b"\n\n",
        event_line("MODIFIED", "a"),
        gone + b"\n",
        event_line("ADDED", "after-the-error"),
    ]
    assert collect_watch(chunks) == [("ADDED", "a", ()), ("MODIFIED", "a", ())]


def test_watch_refused_raises() -> None:
    async def test(api: FakeApi, kube: KubeClient, _: list[float]) -> None:
        api.script("GET", NODES_PATH, status(403, "Forbidden"))
        with pytest.raises(ApiError) as raised:
            async for _event in kube.watch_nodes("5"):
                pass
        assert raised.value.status == 403

    run_with_client(test)


# -- paged LIST -----------------------------------------------------------------


def node_page(names: list[str], cidr: str, token: str = "", version: str = "", items_first: bool = False) -> bytes:
    items = [{"metadata": {"name": name, "uid": f"uid-{name}"}, "spec": {"podCIDR": cidr, "podCIDRs": [cidr]}} for name in names]
    metadata = {"resourceVersion": version, **({"continue": token} if token else {})}
    page = {"items": items, "metadata": metadata} if items_first else {"metadata": metadata, "items": items}
    return json.dumps({"kind": "NodeList", **page}).encode()


@pytest.mark.parametrize("cidr", FAMILY_CIDRS)
@pytest.mark.parametrize("items_first", [False, True], ids=["metadata-first", "items-first"])
def test_list_follows_continue_tokens(cidr: str, items_first: bool) -> None:
    pages = {
        "": node_page(["a", "b"], cidr, token="t1", items_first=items_first),
        "t1": node_page(["c", "d"], cidr, token="t2", items_first=items_first),
        "t2": node_page(["e"], cidr, version="42", items_first=items_first),
    }

    async def page_for(request: Any) -> Any:
        return await reply(200, pages[request.query.get("continue", "")])(request)

    async def test(api: FakeApi, kube: KubeClient, _: list[float]) -> None:
        api.script("GET", NODES_PATH, page_for)
        nodes, version = await kube.list_nodes(page_size=2)
        assert [node.name for node in nodes] == ["a", "b", "c", "d", "e"]
        assert all(node.pod_cidrs == (cidr,) for node in nodes)
        assert version == "42"
        asked = [(seen.query.get("continue"), seen.query["limit"]) for seen in api.requests_to("GET", NODES_PATH)]
        assert asked == [(None, "2"), ("t1", "2"), ("t2", "2")]

    run_with_client(test)


def test_list_with_an_expired_continue_token_raises_410() -> None:
    async def page_for(request: Any) -> Any:
        if request.query.get("continue"):
            return await status(410, "Expired")(request)
        return await reply(200, node_page(["a"], "10.244.0.0/24", token="old"))(request)

    async def test(api: FakeApi, kube: KubeClient, _: list[float]) -> None:
        api.script("GET", NODES_PATH, page_for)
        with pytest.raises(ApiError) as raised:
            await kube.list_nodes()
        assert raised.value.status == 410

    run_with_client(test)


@pytest.mark.parametrize(
    ("answer", "streams"),
    [
        pytest.param(reply(200, {"major": "1", "minor": "37"}), True, id="1.37"),
        pytest.param(reply(200, {"major": "1", "minor": "34"}), True, id="1.34"),
        pytest.param(reply(200, {"major": "1", "minor": "33+"}), False, id="1.33-with-suffix"),
        pytest.param(reply(200, {"major": "1", "minor": "eks"}), False, id="unreadable-minor"),
        pytest.param(status(403), False, id="forbidden"),
    ],
)
def test_the_watch_streams_its_listing_only_where_the_api_server_version_says_it_can(answer: Answer, streams: bool) -> None:
    async def test(api: FakeApi, kube: KubeClient, _: list[float]) -> None:
        api.script("GET", "/version", answer)
        assert await kube.streams_initial_events() is streams

    run_with_client(test)


def test_a_list_from_the_cache_asks_not_older_than_a_fresh_version() -> None:
    async def test(api: FakeApi, kube: KubeClient, _: list[float]) -> None:
        api.script(
            "GET",
            NODES_PATH,
            reply(200, {"metadata": {"resourceVersion": "42", "continue": "x"}, "items": [NODE]}),  # the version read
            reply(200, {"metadata": {"resourceVersion": "43"}, "items": [NODE]}),  # the LIST, in one page
        )
        nodes, _ = await kube.list_nodes(from_cache=True)
        version_read, first_page = api.requests_to("GET", NODES_PATH)[:2]
        assert version_read.query.get("limit") == "1" and "resourceVersion" not in version_read.query
        assert first_page.query.get("resourceVersion") == "42"
        assert first_page.query.get("resourceVersionMatch") == "NotOlderThan"
        assert [node.name for node in nodes] == ["node-a"]

    run_with_client(test)


# -- writes: a bound on how late they land, and the leadership fence -------------------------------------


@pytest.mark.parametrize(
    ("method", "timeout"),
    [pytest.param("PATCH", "10s", id="write-bounded"), pytest.param("GET", None, id="read-unbounded")],
)
def test_every_write_carries_the_api_servers_timeout(method: str, timeout: str | None) -> None:
    async def test(api: FakeApi, kube: KubeClient, _: list[float]) -> None:
        api.script(method, NODE_PATH, reply(200, NODE))
        await kube.request(method, NODE_PATH, body={} if method == "PATCH" else None)
        (seen,) = api.requests_to(method, NODE_PATH)
        assert seen.query.get("timeout") == timeout

    run_with_client(test)


@pytest.mark.parametrize(
    ("answers", "leading_for", "sent", "raised", "may_have_applied"),
    [
        pytest.param([reply(200, NODE)], 0, 0, "Fenced", False, id="fenced-before-the-first-attempt"),
        pytest.param(
            [status(503, "ServiceUnavailable"), reply(200, NODE)], 1, 1, "ServiceUnavailable", True, id="fenced-after-a-5xx"
        ),
        pytest.param([reset(), reply(200, NODE)], 1, 1, "ConnectionError", True, id="fenced-after-a-lost-answer"),
        pytest.param(
            [status(429, "TooManyRequests"), reply(200, NODE)], 1, 1, "TooManyRequests", False, id="fenced-after-a-refusal"
        ),
    ],
)
def test_no_attempt_of_a_write_is_sent_once_the_fence_says_no(
    answers: list[Answer], leading_for: int, sent: int, raised: str, may_have_applied: bool
) -> None:
    """The fence is asked before every attempt, retries too; what is raised says whether anything may have applied."""

    async def go() -> None:
        asked = 0

        def leading() -> bool:
            nonlocal asked
            asked += 1
            return asked <= leading_for

        async def no_wait(_: float) -> None:
            return None

        async with FakeApi() as api, KubeClient(api.credentials, sleep=no_wait, may_write=leading) as kube:
            api.script("PATCH", NODE_PATH, *answers)
            with pytest.raises(ApiError) as caught:
                await kube.request("PATCH", NODE_PATH, body={}, content_type="application/merge-patch+json")
            assert len(api.requests_to("PATCH", NODE_PATH)) == sent
            assert caught.value.reason == raised and caught.value.may_have_applied is may_have_applied
            api.script("GET", NODE_PATH, reply(200, NODE))
            assert await kube.request("GET", NODE_PATH), "reads are not fenced"

    asyncio.run(go())


def test_a_refused_retry_after_a_lost_answer_leaves_the_outcome_unknown() -> None:
    """The first attempt may have applied: a 409 to the retry proves nothing about it."""

    async def test(api: FakeApi, kube: KubeClient, _: list[float]) -> None:
        api.script("PATCH", NODE_PATH, reset(), status(409, "Conflict"))
        with pytest.raises(ApiError) as caught:
            await kube.request("PATCH", NODE_PATH, body={}, content_type="application/merge-patch+json")
        assert caught.value.status == 0 and caught.value.may_have_applied

    run_with_client(test)
