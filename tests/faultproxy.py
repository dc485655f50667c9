"""A fault-injecting HTTP proxy in front of a real kube-apiserver, for tests.

The controller under test runs with `--master http://127.0.0.1:PORT`; the
proxy forwards every request to the API server's HTTPS (TLS not verified, the
client's Authorization header passed through) and streams every answer back
chunk by chunk, so watches work as they do without it.

Rules, switchable at runtime from the test's thread, decide what goes wrong:

- CUT_AFTER: forward, let the API server apply the request, then cut the
  client's connection before any answer: the write's outcome is unknown.
- STATUS: answer 500 / 503 / 429 (with Retry-After) without forwarding.
- LATENCY: wait, then go on (other rules still apply).
- CLOSE_WATCH: end a streaming answer after N lines (watch events) or N
  seconds; applies to watches already open when the rule is added (its
  probability is not used: it fires on every matching stream).
- GONE: answer `410 Gone` as the API server does: on a watch, a 200 whose
  only event is an ERROR with a 410 Status; on anything else, HTTP 410.
- STALL: hold matching requests until the rule is removed or expires, then
  forward them (also when their client has gone meanwhile).
- WATCH_ERROR: answer a watch as the API server does when its watch cache is
  behind etcd: a 200 whose only event is an ERROR with a `status` Status
  (504 "Too large resource version" by default).

It runs its own event loop in its own thread, so synchronous tests can use it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import json
import random
import re
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from types import TracebackType

import aiohttp
from aiohttp import web

# Headers that describe one hop, not the message: never copied across the proxy.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
        "accept-encoding",  # the backend answers uncompressed, so chunks can be counted and cut
        "content-encoding",
    }
)
POLL_INTERVAL = 0.05  # seconds between checks of stalls and of close rules on open streams
STOP_TIMEOUT = 10.0
FORWARDED_LOG_LIMIT = 200_000

Query = Callable[[Mapping[str, str]], bool]


class Action(enum.Enum):
    CUT_AFTER = "cut-after"
    STATUS = "status"
    LATENCY = "latency"
    CLOSE_WATCH = "close-watch"
    GONE = "gone"
    STALL = "stall"
    WATCH_ERROR = "watch-error"


def is_watch(query: Mapping[str, str]) -> bool:
    return query.get("watch", "") in ("1", "true", "True")


def is_resumed_watch(query: Mapping[str, str]) -> bool:
    """A watch resuming from a version it saw, not one that starts with a streamed listing (`sendInitialEvents`)."""
    return is_watch(query) and query.get("sendInitialEvents", "") != "true"


def is_list_continue(query: Mapping[str, str]) -> bool:
    return bool(query.get("continue"))


def not_watch(query: Mapping[str, str]) -> bool:
    return not is_watch(query)


@dataclasses.dataclass(eq=False)
class Rule:
    """One fault: which requests (method, path regex, query predicate), how often, and what happens.

    `probability` is drawn per matching request; `count` caps how many times the
    rule fires; `duration` (seconds from when it is added) makes it lapse.
    """

    action: Action
    path: str = ".*"
    methods: frozenset[str] = frozenset()  # empty: any method
    query: Query | None = None
    probability: float = 1.0
    count: int | None = None
    duration: float | None = None
    status: int = 503
    retry_after: int | None = None
    delay: float = 0.0
    after_events: int | None = None
    after_seconds: float | None = None
    name: str = ""
    fired: int = 0
    added_at: float = 0.0
    removed: bool = False

    def __post_init__(self) -> None:
        self._pattern = re.compile(self.path)
        self.methods = frozenset(method.upper() for method in self.methods)
        if not self.name:
            self.name = f"{self.action.value}:{'|'.join(sorted(self.methods)) or '*'} {self.path}"

    @property
    def active(self) -> bool:
        if self.removed or (self.count is not None and self.fired >= self.count):
            return False
        return self.duration is None or time.monotonic() < self.added_at + self.duration

    @property
    def holding(self) -> bool:
        """Whether a STALL rule still holds what it stalled: until removed or lapsed (its count caps only what it catches)."""
        return not self.removed and (self.duration is None or time.monotonic() < self.added_at + self.duration)

    def matches(self, method: str, path: str, query: Mapping[str, str]) -> bool:
        if self.methods and method.upper() not in self.methods:
            return False
        if not self._pattern.search(path):
            return False
        return self.query is None or self.query(query)


@dataclasses.dataclass(frozen=True)
class Forwarded:
    """A request the proxy sent on to the API server: when (wall clock), what, the answer's status (0: none), the query."""

    at: float
    method: str
    path: str
    status: int
    query: str = ""


class FaultProxy:
    """Loopback HTTP in front of `backend` (https://...); use as a context manager, or start()/stop()."""

    def __init__(self, backend: str, seed: int = 0) -> None:
        self.backend = backend.rstrip("/")
        self.port = 0
        self._random = random.Random(seed)
        self._rules: list[Rule] = []
        self._lock = threading.Lock()
        self._injected: dict[str, int] = {}
        self._forwarded: list[Forwarded] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._started = threading.Event()
        self._startup_error: BaseException | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- lifecycle ---------------------------------------------------------------

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    def start(self) -> FaultProxy:
        self._thread = threading.Thread(target=self._serve, name=f"faultproxy->{self.backend}", daemon=True)
        self._thread.start()
        self._started.wait(STOP_TIMEOUT)
        if self._startup_error is not None:
            raise RuntimeError("the fault proxy did not start") from self._startup_error
        if not self.port:
            raise RuntimeError("the fault proxy did not start in time")
        return self

    def stop(self) -> None:
        """Release stalled requests, close every connection, end the thread."""
        self.clear()
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        future = asyncio.run_coroutine_threadsafe(self._shutdown(), loop)
        future.result(STOP_TIMEOUT)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(STOP_TIMEOUT)
        self._loop = self._thread = None

    def _serve(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._startup())
        except BaseException as error:  # reported to start() in the test's thread
            self._startup_error = error
            self._started.set()
            return
        self._started.set()
        loop.run_forever()
        loop.close()

    async def _startup(self) -> None:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        connector = aiohttp.TCPConnector(ssl=context, limit=0)
        self._session = aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=None), auto_decompress=False
        )
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert isinstance(server, asyncio.base_events.Server)
        self.port = server.sockets[0].getsockname()[1]

    async def _shutdown(self) -> None:
        if self._session is not None:
            await self._session.close()
        if self._runner is not None:
            await self._runner.cleanup()

    # -- rules (called from the test's thread) -----------------------------------

    def add(self, rule: Rule) -> Rule:
        with self._lock:
            rule.added_at = time.monotonic()
            rule.removed = False
            self._rules.append(rule)
            self._injected.setdefault(rule.name, 0)
        return rule

    def remove(self, rule: Rule) -> None:
        """Switch a rule off; requests it stalls go on."""
        with self._lock:
            rule.removed = True
            if rule in self._rules:
                self._rules.remove(rule)

    def clear(self) -> None:
        with self._lock:
            for rule in self._rules:
                rule.removed = True
            self._rules.clear()

    @contextmanager
    def rule(self, rule: Rule) -> Iterator[Rule]:
        """The rule while the block runs."""
        self.add(rule)
        try:
            yield rule
        finally:
            self.remove(rule)

    def injected(self) -> dict[str, int]:
        """How many times each rule ever added has fired, by rule name."""
        with self._lock:
            return dict(self._injected)

    def total_injected(self) -> int:
        with self._lock:
            return sum(self._injected.values())

    def forwarded(self, method: str | None = None, path: str = "") -> list[Forwarded]:
        """Requests sent on to the API server, oldest first, filtered by method and path regex."""
        pattern = re.compile(path)
        with self._lock:
            log = list(self._forwarded)
        return [
            entry
            for entry in log
            if (method is None or entry.method == method.upper()) and (not path or pattern.search(entry.path))
        ]

    # -- the request path (in the proxy's loop) ----------------------------------

    def _draw(
        self, method: str, path: str, query: Mapping[str, str], actions: tuple[Action, ...], first_only: bool = False
    ) -> list[Rule]:
        """The active rules of these kinds that match and fire for this request, in the order added; counted.

        `first_only`: stop at the first that fires (one request gets one refusal).
        """
        fired = []
        with self._lock:
            for rule in self._rules:
                if rule.action not in actions or not rule.active or not rule.matches(method, path, query):
                    continue
                if rule.probability < 1.0 and self._random.random() >= rule.probability:
                    continue
                rule.fired += 1
                self._injected[rule.name] = self._injected.get(rule.name, 0) + 1
                fired.append(rule)
                if first_only:
                    break
        return fired

    def _log_forwarded(self, request: web.Request, status: int, at: float) -> None:
        with self._lock:
            if len(self._forwarded) < FORWARDED_LOG_LIMIT:
                self._forwarded.append(Forwarded(at, request.method, request.path, status, request.query_string))

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        method, path, query = request.method, request.path, request.query
        # The whole request is read first: a held request is in transit, and goes on even if its sender is gone.
        body = await request.read()
        for rule in self._draw(method, path, query, (Action.STALL,)):
            while rule.holding:
                await asyncio.sleep(POLL_INTERVAL)
        for rule in self._draw(method, path, query, (Action.LATENCY,)):
            await asyncio.sleep(rule.delay)
        refusals = self._draw(method, path, query, (Action.GONE, Action.STATUS, Action.WATCH_ERROR), first_only=True)
        if refusals:
            return self._refuse(refusals[0], is_watch(query))
        headers = {key: value for key, value in request.headers.items() if key.lower() not in HOP_BY_HOP}
        headers["Accept-Encoding"] = "identity"  # else aiohttp asks for gzip, and compressed chunks pass undecoded
        assert self._session is not None
        sent_at = time.time()
        try:
            backend = await self._session.request(
                method, self.backend + request.path_qs, headers=headers, data=body or None, allow_redirects=False
            )
        except (aiohttp.ClientError, OSError):
            self._log_forwarded(request, 0, sent_at)
            return self._cut(request)
        self._log_forwarded(request, backend.status, sent_at)
        try:
            if self._draw(method, path, query, (Action.CUT_AFTER,)):
                await backend.read()  # the API server has answered: the request was applied (or refused)
                return self._cut(request)
            return await self._stream(request, backend, method, path, query)
        finally:
            backend.release()

    @staticmethod
    def _refuse(rule: Rule, watch: bool) -> web.StreamResponse:
        if rule.action is Action.GONE:
            gone = {
                "kind": "Status",
                "apiVersion": "v1",
                "status": "Failure",
                "message": "too old resource version (injected)",
                "reason": "Expired",
                "code": 410,
            }
            if watch:
                event = json.dumps({"type": "ERROR", "object": gone}) + "\n"
                return web.Response(status=200, body=event.encode(), content_type="application/json")
            return web.json_response(gone, status=410)
        if rule.action is Action.WATCH_ERROR:
            behind = {
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Failure",
                "message": "Timeout: Too large resource version: 2, current: 1 (injected)",
                "reason": "Timeout",
                "details": {"causes": [{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}]},
                "code": rule.status,
            }
            event = json.dumps({"type": "ERROR", "object": behind}) + "\n"
            return web.Response(status=200, body=event.encode(), content_type="application/json")
        reason = {429: "TooManyRequests", 500: "InternalError", 503: "ServiceUnavailable"}.get(rule.status, "Injected")
        status_body = {
            "kind": "Status",
            "apiVersion": "v1",
            "status": "Failure",
            "message": f"injected {rule.status}",
            "reason": reason,
            "code": rule.status,
        }
        headers = {"Retry-After": str(rule.retry_after)} if rule.retry_after is not None else None
        return web.json_response(status_body, status=rule.status, headers=headers)

    @staticmethod
    def _cut(request: web.Request) -> web.StreamResponse:
        """Drop the client's connection without an answer."""
        if request.transport is not None:
            request.transport.abort()
        raise asyncio.CancelledError  # aiohttp ends the handler quietly; nothing is written

    async def _stream(
        self, request: web.Request, backend: aiohttp.ClientResponse, method: str, path: str, query: Mapping[str, str]
    ) -> web.StreamResponse:
        response = web.StreamResponse(status=backend.status, reason=backend.reason)
        for key, value in backend.headers.items():
            if key.lower() not in HOP_BY_HOP:
                response.headers.add(key, value)
        streaming = is_watch(query)
        started = time.monotonic()
        lines = 0
        pending = b""
        try:
            await response.prepare(request)
            while True:
                if streaming and self._close_now(method, path, query, lines, started):
                    break  # a partial event still pending is dropped
                try:
                    chunk = await asyncio.wait_for(backend.content.readany(), POLL_INTERVAL * 4)
                except TimeoutError:
                    continue
                if not chunk:
                    break
                if not streaming:
                    await response.write(chunk)
                    continue
                # Forward watch events line by line, so a close rule can end the stream between events.
                pending += chunk
                *complete, pending = pending.split(b"\n")
                for line in complete:
                    await response.write(line + b"\n")
                    lines += 1
                    if self._close_now(method, path, query, lines, started):
                        await response.write_eof()
                        return response
            await response.write_eof()
        except (ConnectionResetError, aiohttp.ClientError, RuntimeError):
            pass  # the client or the backend went away (RuntimeError: the proxy is stopping): nothing more to forward
        return response

    def _close_now(self, method: str, path: str, query: Mapping[str, str], lines: int, started: float) -> bool:
        """Whether a CLOSE_WATCH rule ends this stream now (counted once per stream)."""
        elapsed = time.monotonic() - started
        with self._lock:
            for rule in self._rules:
                if rule.action is not Action.CLOSE_WATCH or not rule.active or not rule.matches(method, path, query):
                    continue
                due_by_lines = rule.after_events is not None and lines >= rule.after_events
                due_by_time = rule.after_seconds is not None and elapsed >= rule.after_seconds
                if not (due_by_lines or due_by_time):
                    continue
                rule.fired += 1
                self._injected[rule.name] = self._injected.get(rule.name, 0) + 1
                return True
        return False
