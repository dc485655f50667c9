"""Pure helpers of the I/O layer."""

from __future__ import annotations

import pytest

from controller.kube import RateLimiter, _peek_continue


@pytest.mark.parametrize(
    ("raw", "token"),
    [
        pytest.param(
            b'{"kind":"NodeList","metadata":{"resourceVersion":"9","continue":"eyJ2IjoibWV0YS5rOHMuaW8vdjEifQ"},"items":[]}',
            "eyJ2IjoibWV0YS5rOHMuaW8vdjEifQ",
            id="token",
        ),
        pytest.param(b'{"kind":"NodeList","metadata":{"resourceVersion":"9"},"items":[]}', None, id="last-page"),
        pytest.param(
            b'{"kind":"NodeList","metadata":{},"items":[{"metadata":{"annotations":{"x":"\\"continue\\":\\"evil\\""}}}]}',
            None,
            id="not-inside-items",
        ),
        pytest.param(b'{"kind":"NodeList","metadata":{"continue":"abc=="}}', "abc==", id="no-items-key"),
    ],
)
def test_peek_continue_reads_only_the_list_metadata(raw: bytes, token: str | None) -> None:
    assert _peek_continue(raw) == token


def test_rate_limiter_off_by_default_never_waits() -> None:
    import asyncio

    async def go() -> None:
        limiter = RateLimiter(qps=0, burst=0)
        for _ in range(10_000):
            await limiter.acquire()
        assert limiter._tokens == 1.0  # untouched: no bucket when qps <= 0

    asyncio.run(go())
