"""The fault proxy against a tiny in-process backend: it forwards faithfully and injects exactly what its rules say."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from aiohttp import web

from tests.conftest import wait_for
from tests.faultproxy import Action, FaultProxy, Rule, is_list_continue, is_watch, not_watch

WATCH_EVENTS = 5


class Backend:
    """An aiohttp server in its own thread: echoes requests, records writes, streams watch events."""

    def __init__(self) -> None:
        self.writes: list[tuple[str, str, bytes]] = []
        self.requests: list[tuple[str, str]] = []
        self.release_stream = threading.Event()
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()
        self._ready.wait(10)

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, shutdown_timeout=0.5)
        self._loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        self._loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._ready.set()
        self._loop.run_forever()

    def stop(self) -> None:
        self.release_stream.set()
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.requests.append((request.method, request.path_qs))
        if request.method != "GET":
            self.writes.append((request.method, request.path, body))
        if is_watch(request.query):
            return await self._watch(request)
        echo = {
            "method": request.method,
            "path": request.path,
            "query": dict(request.query),
            "authorization": request.headers.get("Authorization", ""),
            "body": body.decode(),
        }
        response = web.json_response(echo, status=201 if request.method == "POST" else 200, headers={"X-Backend": "yes"})
        if "gzip" in request.headers.get("Accept-Encoding", ""):
            response.enable_compression()  # as kube-apiserver does when asked
        return response

    async def _watch(self, request: web.Request) -> web.StreamResponse:
        """WATCH_EVENTS events at once, then hold the stream open until released."""
        response = web.StreamResponse()
        await response.prepare(request)
        for index in range(WATCH_EVENTS):
            await response.write(json.dumps({"type": "ADDED", "object": {"metadata": {"name": f"n{index}"}}}).encode() + b"\n")
        while not self.release_stream.is_set():
            await asyncio.sleep(0.02)
        with contextlib.suppress(ConnectionError):  # the proxy may have closed it
            await response.write_eof()
        return response


@pytest.fixture(scope="module")
def backend() -> Iterator[Backend]:
    server = Backend()
    yield server
    server.stop()


@pytest.fixture
def proxy(backend: Backend) -> Iterator[FaultProxy]:
    backend.writes.clear()
    backend.requests.clear()
    backend.release_stream.clear()
    with FaultProxy(backend.url, seed=7) as the_proxy:
        yield the_proxy
    backend.release_stream.set()


def call(
    proxy: FaultProxy, method: str, path: str, body: bytes | None = None, token: str = "t0k3n"
) -> tuple[int, Any, dict[str, str]]:
    """(status, parsed body, headers); status 0 when the connection was cut without an answer."""
    request = urllib.request.Request(proxy.url + path, data=body, method=method, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read()), dict(response.headers)
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read()), dict(error.headers)
    except (ConnectionError, http.client.RemoteDisconnected, urllib.error.URLError):
        return 0, None, {}


def open_watch(proxy: FaultProxy, path: str = "/api/v1/nodes?watch=1&resourceVersion=5") -> http.client.HTTPResponse:
    connection = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
    connection.request("GET", path)
    return connection.getresponse()


def read_events(response: http.client.HTTPResponse) -> list[dict[str, Any]]:
    """Events until the stream ends."""
    return [json.loads(line) for line in response.read().splitlines() if line.strip()]


def test_forwards_method_path_query_body_and_authorization(proxy: FaultProxy, backend: Backend) -> None:
    status, echo, headers = call(proxy, "POST", "/api/v1/namespaces/default/events?dryRun=All", b'{"a": 1}')
    assert status == 201
    assert echo == {
        "method": "POST",
        "path": "/api/v1/namespaces/default/events",
        "query": {"dryRun": "All"},
        "authorization": "Bearer t0k3n",
        "body": '{"a": 1}',
    }
    assert headers["X-Backend"] == "yes"
    assert [(f.method, f.path, f.status, f.query) for f in proxy.forwarded()] == [
        ("POST", "/api/v1/namespaces/default/events", 201, "dryRun=All")
    ]
    assert proxy.total_injected() == 0


def test_cut_after_forwarding_applies_the_write_and_loses_the_answer(proxy: FaultProxy, backend: Backend) -> None:
    proxy.add(Rule(Action.CUT_AFTER, path=r"^/api/v1/nodes/a$", methods=frozenset({"PATCH"}), count=1, name="cut"))
    assert call(proxy, "PATCH", "/api/v1/nodes/a", b'{"spec": 1}')[0] == 0
    assert backend.writes == [("PATCH", "/api/v1/nodes/a", b'{"spec": 1}')], "applied although unanswered"
    assert call(proxy, "PATCH", "/api/v1/nodes/a", b'{"spec": 2}')[0] == 200, "count=1: the second one is answered"
    assert call(proxy, "GET", "/api/v1/nodes/a")[0] == 200, "other methods pass"
    assert proxy.injected() == {"cut": 1}


@pytest.mark.parametrize(
    ("status", "retry_after", "reason"),
    [
        pytest.param(500, None, "InternalError", id="500"),
        pytest.param(503, None, "ServiceUnavailable", id="503"),
        pytest.param(429, 3, "TooManyRequests", id="429-retry-after"),
    ],
)
def test_status_is_answered_before_forwarding(
    proxy: FaultProxy, backend: Backend, status: int, retry_after: int | None, reason: str
) -> None:
    proxy.add(Rule(Action.STATUS, path="^/api/v1/nodes/b$", status=status, retry_after=retry_after))
    got, body, headers = call(proxy, "PATCH", "/api/v1/nodes/b", b"{}")
    assert (got, body["kind"], body["code"], body["reason"]) == (status, "Status", status, reason)
    assert headers.get("Retry-After") == (str(retry_after) if retry_after else None)
    assert backend.writes == [], "never forwarded"
    assert proxy.forwarded() == []


def test_latency_delays_then_forwards(proxy: FaultProxy, backend: Backend) -> None:
    proxy.add(Rule(Action.LATENCY, path="^/slow", delay=0.5))
    started = time.monotonic()
    assert call(proxy, "GET", "/slow")[0] == 200
    assert time.monotonic() - started >= 0.5
    assert call(proxy, "GET", "/fast")[0] == 200
    assert proxy.total_injected() == 1


def test_watch_events_stream_through_before_the_backend_ends(proxy: FaultProxy, backend: Backend) -> None:
    response = open_watch(proxy)
    # The backend holds the stream open: these lines can only come chunk by chunk.
    lines = [json.loads(response.readline()) for _ in range(WATCH_EVENTS)]
    assert [event["object"]["metadata"]["name"] for event in lines] == [f"n{i}" for i in range(WATCH_EVENTS)]
    backend.release_stream.set()
    assert read_events(response) == []


@pytest.mark.parametrize("after_events", [0, 2, 4])
def test_close_watch_after_n_events(proxy: FaultProxy, backend: Backend, after_events: int) -> None:
    proxy.add(Rule(Action.CLOSE_WATCH, path="^/api/v1/nodes$", query=is_watch, after_events=after_events))
    assert len(read_events(open_watch(proxy))) == after_events
    assert proxy.total_injected() == 1


def test_close_watch_ends_a_stream_already_open(proxy: FaultProxy, backend: Backend) -> None:
    response = open_watch(proxy)
    assert json.loads(response.readline())["type"] == "ADDED"
    proxy.add(Rule(Action.CLOSE_WATCH, path="^/api/v1/nodes$", after_seconds=0))
    # Ends (read() returns) although the backend holds the stream open; some events may have passed meanwhile.
    assert len(read_events(response)) <= WATCH_EVENTS - 1
    assert proxy.total_injected() == 1


def test_gone_on_a_watch_resume_is_an_error_event(proxy: FaultProxy, backend: Backend) -> None:
    proxy.add(Rule(Action.GONE, path="^/api/v1/nodes$", query=is_watch))
    response = open_watch(proxy)
    assert response.status == 200
    (event,) = read_events(response)
    assert (event["type"], event["object"]["code"], event["object"]["reason"]) == ("ERROR", 410, "Expired")
    assert call(proxy, "GET", "/api/v1/nodes?limit=500")[0] == 200, "a LIST is not a watch"
    assert backend.requests == [("GET", "/api/v1/nodes?limit=500")]


def test_gone_on_a_list_continue_only(proxy: FaultProxy, backend: Backend) -> None:
    proxy.add(Rule(Action.GONE, path="^/api/v1/nodes$", query=is_list_continue))
    assert call(proxy, "GET", "/api/v1/nodes?limit=500")[0] == 200
    status, body, _ = call(proxy, "GET", "/api/v1/nodes?limit=500&continue=abc")
    assert (status, body["reason"]) == (410, "Expired")


def test_stall_holds_requests_until_removed(proxy: FaultProxy, backend: Backend) -> None:
    lease = "/apis/coordination.k8s.io/v1/namespaces/default/leases/x"
    stall = proxy.add(Rule(Action.STALL, path=f"^{lease}$", methods=frozenset({"GET", "PUT"})))
    results: list[int] = []
    caller = threading.Thread(target=lambda: results.append(call(proxy, "PUT", lease, b"{}")[0]))
    caller.start()
    wait_for(lambda: stall.fired == 1, timeout=5, what="the PUT to be stalled")
    assert call(proxy, "GET", "/api/v1/nodes")[0] == 200, "other requests pass"
    caller.join(0.5)
    assert caller.is_alive() and backend.writes == [], "held, not forwarded"
    proxy.remove(stall)
    caller.join(5)
    assert results == [200]
    assert backend.writes == [("PUT", lease, b"{}")]


def test_stall_with_a_duration_lapses(proxy: FaultProxy, backend: Backend) -> None:
    proxy.add(Rule(Action.STALL, path="^/held$", duration=0.3))
    assert call(proxy, "GET", "/held")[0] == 200


def test_refusing_everything_for_a_period(proxy: FaultProxy, backend: Backend) -> None:
    proxy.add(Rule(Action.STATUS, status=503, duration=0.5))
    assert call(proxy, "GET", "/api/v1/nodes")[0] == 503
    wait_for(lambda: call(proxy, "GET", "/api/v1/nodes")[0] == 200, timeout=5, what="the refusal to lapse")


def test_probability_and_counters(proxy: FaultProxy, backend: Backend) -> None:
    proxy.add(Rule(Action.STATUS, methods=frozenset({"PATCH"}), status=500, probability=0.3, name="flaky"))
    statuses = [call(proxy, "PATCH", f"/api/v1/nodes/n{i}", b"{}")[0] for i in range(100)]
    failed = statuses.count(500)
    assert 10 <= failed <= 60, failed
    assert statuses.count(200) == 100 - failed
    assert proxy.injected() == {"flaky": failed}
    assert len(backend.writes) == 100 - failed


def test_query_predicate_and_method_filter(proxy: FaultProxy, backend: Backend) -> None:
    proxy.add(Rule(Action.STATUS, methods=frozenset({"get"}), path="^/api/v1/nodes$", query=not_watch, status=500))
    assert call(proxy, "GET", "/api/v1/nodes")[0] == 500
    assert call(proxy, "POST", "/api/v1/nodes", b"{}")[0] == 201
    assert open_watch(proxy).status == 200


def test_rule_context_manager_and_clear(proxy: FaultProxy, backend: Backend) -> None:
    with proxy.rule(Rule(Action.STATUS, status=500)):
        assert call(proxy, "GET", "/x")[0] == 500
    assert call(proxy, "GET", "/x")[0] == 200
    proxy.add(Rule(Action.STATUS, status=500))
    assert call(proxy, "GET", "/x")[0] == 500
    proxy.clear()
    assert call(proxy, "GET", "/x")[0] == 200
    assert proxy.total_injected() == 2, "counters outlive their rules"
