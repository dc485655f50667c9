"""kopf wiring: what the event loop reports at exit about kopf's watch streams."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import kopf
import pytest
from kopf._cogs.clients import watching

from controller import handlers


async def our_stream() -> AsyncIterator[int]:
    yield 1


def kopf_stream() -> Any:
    return watching.infinite_watch(settings=kopf.OperatorSettings(), resource=None, namespace=None)


@pytest.mark.parametrize(
    ("make_stream", "error_logged"),
    [
        pytest.param(kopf_stream, False, id="kopf-watch-stream"),
        pytest.param(our_stream, True, id="any-other-generator"),
    ],
)
def test_a_kopf_stream_failing_to_close_at_exit_is_no_error_anything_else_still_is(
    caplog: pytest.LogCaptureFixture, make_stream: Callable[[], Any], error_logged: bool
) -> None:
    async def go() -> None:
        loop = asyncio.get_running_loop()
        handlers.quiet_closing_of_kopf_streams(loop)
        stream = make_stream()
        # What asyncio's shutdown_asyncgens reports when closing a generator fails.
        loop.call_exception_handler(
            {
                "message": f"an error occurred during closing of asynchronous generator {stream!r}",
                "exception": RuntimeError("generator didn't stop after athrow()"),
                "asyncgen": stream,
            }
        )
        await stream.aclose()

    with caplog.at_level(logging.DEBUG):
        asyncio.run(go())
    errors = [record for record in caplog.records if record.levelno >= logging.ERROR]
    assert bool(errors) == error_logged, [record.getMessage() for record in errors]
