"""The request loop under every call of kube.py: one pooled aiohttp session, the rate limit, retries, the write fence.

Apart from the typed verbs (kube.py) so that how a request is sent (its
token, its attempts, its timeouts, whether it may be sent at all) is one
class with its own state, and what is asked of the API is another.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from typing import Any

import aiohttp

from controller.backoff import Backoff
from controller.credentials import Credentials
from controller.kubewire import ApiError, FencedError, api_error

TRANSIENT_STATUSES = frozenset({429, 500, 502, 503, 504})
TRANSIENT_ATTEMPTS = 4
TRANSIENT_BACKOFF = Backoff(0.2)  # seconds before a transient failure is tried again
RETRY_AFTER_STATUSES = frozenset({429, 503})  # answers whose Retry-After header says how long to wait
RETRY_AFTER_CAP = 30.0  # seconds: never wait longer on the server's word
WATCH_IDLE_TIMEOUT = 90.0  # seconds without a byte (bookmarks come every minute)
#: Every write carries the API server's `timeout` parameter: a write still queued (priority and fairness) or in
#: its handler that long after it arrived fails instead of landing. Well under a lease duration (15 s by
#: default), so that what a leader sent cannot linger for a whole hand-over in the API server.
WRITE_TIMEOUT = 10.0
#: The client gives a write this long beyond the server's bound before it counts the answer as lost.
WRITE_ANSWER_GRACE = 5.0
READ_METHODS = frozenset({"GET", "HEAD"})


class RateLimiter:
    """A token bucket: `qps` requests per second on average, `burst` at once. qps <= 0: unlimited."""

    def __init__(
        self,
        qps: float,
        burst: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.qps = qps
        self.burst = max(burst, 1)
        self._clock = clock
        self._sleep = sleep
        self._tokens = float(self.burst)
        self._updated = clock()
        self._lock = asyncio.Lock()

    async def acquire(self) -> None:
        if self.qps <= 0:
            return
        async with self._lock:
            while True:
                now = self._clock()
                self._tokens = min(self.burst, self._tokens + (now - self._updated) * self.qps)
                self._updated = now
                if self._tokens >= 1:
                    self._tokens -= 1
                    return
                await self._sleep((1 - self._tokens) / self.qps)


class ApiTransport:
    """Sends requests to the API server: its session, token, rate limit, in-flight bound, retries and fence."""

    def __init__(
        self,
        credentials: Credentials,
        qps: float,
        burst: int,
        max_in_flight: int,
        *,
        transient_attempts: int,
        sleep: Callable[[float], Awaitable[None]],
        may_write: Callable[[], bool] | None,
    ) -> None:
        """See KubeClient, which passes its own arguments on."""
        self.credentials = credentials
        self._limiter = RateLimiter(qps, burst)
        self._in_flight = asyncio.Semaphore(max_in_flight)
        self._max_in_flight = max_in_flight
        self._attempts = max(transient_attempts, 1)
        self._sleep = sleep
        self._may_write = may_write
        self._session: aiohttp.ClientSession | None = None
        self._renewal: asyncio.Future[str] | None = None

    async def close(self) -> None:
        if self._renewal is not None:
            self._renewal.cancel()  # its thread finishes on its own; the next client finds the token renewed
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=self._max_in_flight, ssl=self.credentials.ssl_context())
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=60, connect=10),
                json_serialize=json.dumps,
            )
        return self._session

    async def _headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        token = await self._token()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return headers

    async def _token(self) -> str | None:
        """The bearer token; one due for renewal is renewed in a thread (an exec plugin is a process to wait for).

        Requests go on with the token at hand while it is renewed ahead of its
        expiry; only an expired one makes them wait for the renewal.
        """
        renewing = self.credentials.renewing
        if renewing is None or not renewing.due():
            return self.credentials.current_token()
        if self._renewal is None or self._renewal.done():
            self._renewal = asyncio.ensure_future(asyncio.to_thread(renewing.renewed))
        if renewing.expired():
            return await asyncio.shield(self._renewal)  # a request cancelled meanwhile leaves it to the others
        return renewing.value

    def _refused(self, headers: Mapping[str, str]) -> bool:
        """The API server answered 401 to these headers: whether the request is worth sending again with another
        token (an exec plugin's or an auth provider's; see RenewingToken.refused). A token file is read again
        for every request anyway."""
        renewing = self.credentials.renewing
        scheme, _, token = headers.get("Authorization", "").partition(" ")
        return renewing is not None and scheme == "Bearer" and renewing.refused(token)

    async def request_bytes(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        content_type: str = "application/json",
        params: Mapping[str, str] | None = None,
    ) -> bytes:
        """One API call with retries of transient failures; raises ApiError otherwise.

        A write carries the API server's `timeout` (WRITE_TIMEOUT), and the
        fence is asked before each of its attempts: after a transient failure
        that may have applied, a fenced retry raises that failure (the outcome
        stays unknown); before the first attempt, FencedError (nothing sent).
        """
        headers = await self._headers()
        data = None
        if body is not None:
            headers["Content-Type"] = content_type
            data = json.dumps(body)
        url = self.credentials.server + path
        write = method not in READ_METHODS
        timeout = None
        if write:
            params = {**(params or {}), "timeout": f"{WRITE_TIMEOUT:g}s"}
            timeout = aiohttp.ClientTimeout(total=WRITE_TIMEOUT + WRITE_ANSWER_GRACE, connect=10)
        failed: ApiError | None = None
        for attempt in range(1, self._attempts + 1):
            await self._limiter.acquire()
            if write and self._may_write is not None and not self._may_write():
                raise failed or FencedError(method, path)
            backoff = TRANSIENT_BACKOFF.after(attempt)
            try:
                session = self._get_session()
                async with (
                    self._in_flight,
                    session.request(method, url, data=data, headers=headers, params=params, timeout=timeout) as response,
                ):
                    payload = await response.read()
                    status = response.status
                    retry_after = response.headers.get("Retry-After")
            except (TimeoutError, aiohttp.ClientError, ConnectionError) as error:
                failed = ApiError(0, "ConnectionError", f"{method} {path}: {error!r}")
                if attempt == self._attempts:
                    raise failed from error
                await self._sleep(backoff)
                continue
            if status < 400:
                return payload
            if status == 401 and attempt < self._attempts and self._refused(headers):
                headers.update(await self._headers())  # the renewed token: a 401 applied nothing, so send it again
                continue
            if status in TRANSIENT_STATUSES and attempt < self._attempts:
                if status in RETRY_AFTER_STATUSES:
                    backoff = _retry_after_seconds(retry_after, backoff)
                failed = api_error(status, payload) if failed is None or not failed.may_have_applied else failed
                await self._sleep(backoff)
                continue
            answered = api_error(status, payload)
            if failed is not None and failed.may_have_applied and not answered.may_have_applied:
                # A refusal of a retry says nothing about an earlier attempt whose answer was lost.
                raise failed
            raise answered
        raise AssertionError("unreachable")

    async def watch_lines(self, path: str, params: Mapping[str, str], what: str) -> AsyncGenerator[bytes, None]:
        """The non-empty lines of a watch's stream, until the server ends it; `what` names it in errors.

        One attempt, no rate limit: a watch is long-lived, and its caller
        starts another (or resyncs) when it ends.
        """
        headers = await self._headers()
        timeout = aiohttp.ClientTimeout(total=None, sock_read=WATCH_IDLE_TIMEOUT)
        url = self.credentials.server + path
        try:
            async with self._get_session().get(url, params=params, headers=headers, timeout=timeout) as response:
                if response.status >= 400:
                    if response.status == 401:
                        self._refused(headers)  # the next watch goes with a renewed token
                    raise api_error(response.status, await response.read())
                pending = b""
                async for chunk in response.content.iter_any():  # lines can exceed aiohttp's line limit
                    pending += chunk
                    *lines, pending = pending.split(b"\n")
                    for line in lines:
                        if line.strip():
                            yield line
        except (aiohttp.ClientError, ConnectionError) as error:
            raise ApiError(0, "ConnectionError", f"watch of {what}: {error!r}") from error


def _retry_after_seconds(header: str | None, otherwise: float) -> float:
    """The wait a Retry-After header asks for (whole seconds, as the API server sends it), capped; else `otherwise`."""
    if header is None:
        return otherwise
    try:
        seconds = float(header.strip())
    except ValueError:  # an HTTP date: the API server never sends one
        return otherwise
    if not 0 <= seconds < float("inf"):
        return otherwise
    return min(seconds, RETRY_AFTER_CAP)
