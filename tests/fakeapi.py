"""An in-process fake API server on 127.0.0.1, for deterministic unit tests of the I/O layer.

Each (method, path) answers from a script: a queue of answers, used in
order, the last one repeated. An answer is an async function of the request
(`reply`, `reset`, `stream`, `held` build the usual ones). Every request is
recorded. The real kube-apiserver stays the test of record; this only makes
failures that are hard to time against it (a reset, a split line) exact.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Awaitable, Callable, Sequence
from types import TracebackType
from typing import Any

from aiohttp import web

from controller.credentials import Credentials

Answer = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclasses.dataclass(frozen=True)
class Seen:
    """One request as the fake server received it."""

    method: str
    path: str
    query: dict[str, str]
    body: bytes


def reply(status: int = 200, body: Any = None, headers: dict[str, str] | None = None) -> Answer:
    """A whole answer: JSON `body` (bytes are sent as they are)."""

    async def answer(_: web.Request) -> web.StreamResponse:
        payload = body if isinstance(body, bytes) else json.dumps(body if body is not None else {}).encode()
        return web.Response(status=status, body=payload, headers=headers, content_type="application/json")

    return answer


def status(code: int, reason: str = "", headers: dict[str, str] | None = None) -> Answer:
    """An error answer with a Status body, as the API server sends it."""
    return reply(code, {"kind": "Status", "status": "Failure", "reason": reason, "code": code}, headers)


def reset() -> Answer:
    """Cut the connection without an answer."""

    async def answer(request: web.Request) -> web.StreamResponse:
        assert request.transport is not None
        request.transport.abort()
        return web.Response()

    return answer


def stream(chunks: Sequence[bytes | asyncio.Event]) -> Answer:
    """A chunked 200 answer written piece by piece; an Event in `chunks` holds the rest until it is set."""

    async def answer(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        for chunk in chunks:
            if isinstance(chunk, asyncio.Event):
                await chunk.wait()
            else:
                await response.write(chunk)
        await response.write_eof()
        return response

    return answer


def held(release: asyncio.Event, then: Answer) -> Answer:
    """Hold the request until `release` is set, then answer with `then`."""

    async def answer(request: web.Request) -> web.StreamResponse:
        await release.wait()
        return await then(request)

    return answer


class FakeApi:
    """`async with FakeApi() as api:` serves on a free loopback port; `api.credentials` point a KubeClient at it."""

    def __init__(self) -> None:
        self.seen: list[Seen] = []
        self._scripts: dict[tuple[str, str], list[Answer]] = {}
        self._runner: web.AppRunner | None = None
        self.url = ""

    def script(self, method: str, path: str, *answers: Answer) -> None:
        """Answer `method path` with `answers` in order; the last one for every request after."""
        self._scripts[(method, path)] = list(answers)

    def requests_to(self, method: str, path: str) -> list[Seen]:
        return [seen for seen in self.seen if (seen.method, seen.path) == (method, path)]

    @property
    def credentials(self) -> Credentials:
        return Credentials(server=self.url)

    async def __aenter__(self) -> FakeApi:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.seen.append(Seen(request.method, request.path, dict(request.query), await request.read()))
        answers = self._scripts.get((request.method, request.path))
        if not answers:
            return await status(404, "NotFound")(request)
        answer = answers.pop(0) if len(answers) > 1 else answers[0]
        return await answer(request)
