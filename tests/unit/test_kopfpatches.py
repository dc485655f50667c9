"""The adjustments to kopf's private modules: how kopf decodes watch events, cancels its discovery reads, and what the
event loop reports at exit about kopf's watch streams; and that a kopf which moved a module leaves them not applied."""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
import logging
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import kopf
import kopf._cogs.clients.api as kopf_api
import msgspec
import pytest
from kopf._cogs.clients import watching

from controller import kopfpatches
from localcluster.nodebodies import realistic_node


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
        kopfpatches.quiet_closing_of_kopf_streams(loop)
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


@pytest.mark.parametrize(
    "pod_cidrs",
    [
        pytest.param(("10.244.7.0/24",), id="ipv4"),
        pytest.param(("fd00:10:244:7::/64",), id="ipv6"),
        pytest.param(("10.244.7.0/24", "fd00:10:244:7::/64"), id="dual-stack"),
    ],
)
def test_kopf_decodes_a_watch_event_with_msgspec_into_what_the_stdlib_gives(
    monkeypatch: pytest.MonkeyPatch, pod_cidrs: tuple[str, ...]
) -> None:
    monkeypatch.setattr(kopf_api, "json", json)  # restored after the test
    event = {"type": "MODIFIED", "object": realistic_node("node-7", 7, pod_cidrs)}
    event["object"]["metadata"]["annotations"] = {"note": "ünïcode ✓", "big": str(2**70)}
    line = json.dumps(event, ensure_ascii=False).encode("utf-8")

    assert kopfpatches.decode_kopf_watch_events_with_msgspec()

    assert kopf_api.json.loads is msgspec.json.decode
    decoded = kopf_api.json.loads(line.decode("utf-8"))  # as kopf's api.stream() calls it
    assert decoded == json.loads(line)
    assert decoded["object"]["spec"]["podCIDRs"] == list(pod_cidrs)
    assert kopfpatches.decode_kopf_watch_events_with_msgspec(), "a second call finds msgspec's decoder in place"
    assert kopf_api.json.loads is msgspec.json.decode


def test_a_kopf_that_no_longer_decodes_with_the_stdlibs_json_is_left_as_it_is(monkeypatch: pytest.MonkeyPatch) -> None:
    class OtherDecoder:
        loads = staticmethod(json.loads)

    monkeypatch.setattr(kopf_api, "json", OtherDecoder)

    assert not kopfpatches.decode_kopf_watch_events_with_msgspec()

    assert kopf_api.json is OtherDecoder


def discovery_reads_left(scanning: Any) -> list[asyncio.Task[Any]]:
    """Tasks still running a coroutine of kopf's discovery module."""
    return [
        task
        for task in asyncio.all_tasks()
        if not task.done() and task.get_coro().cr_code.co_filename == scanning.__file__  # type: ignore[union-attr]
    ]


@pytest.mark.parametrize(
    "waiting_at",
    [
        pytest.param("/apis", id="the-group-list"),
        pytest.param("/apis/admissionregistration.k8s.io/v1", id="a-group-version"),
    ],
)
def test_cancelling_kopfs_discovery_cancels_every_read_it_started(monkeypatch: pytest.MonkeyPatch, waiting_at: str) -> None:
    """A SIGTERM while kopf reads the API's discovery documents: no read of kopf's goes on after kopf stopped.

    Left running, those reads failed on the session kopf closed as it stopped, each an ERROR in the log.
    """
    from kopf._cogs.clients import scanning

    documents: dict[str, Any] = {
        "/api": {"versions": ["v1"]},
        "/api/v1": {"resources": []},
        "/apis": {
            "groups": [
                {"name": name, "versions": [{"version": "v1"}], "preferredVersion": {"version": "v1"}}
                for name in ("admissionregistration.k8s.io", "apps")
            ]
        },
        "/apis/apps/v1": {"resources": []},
    }

    async def go() -> list[asyncio.Task[Any]]:
        held = asyncio.Event()
        never = asyncio.Event()

        async def get(url: str, **_: Any) -> Any:
            if url == waiting_at:
                held.set()
                await never.wait()
            if url.startswith("/api/"):
                await never.wait()  # the core group's read is still under way too
            return documents[url]

        monkeypatch.setattr(scanning.api, "get", get)
        kopfpatches.cancel_kopfs_discovery_reads_with_it()
        scan = asyncio.ensure_future(
            scanning.scan_resources(groups=None, settings=kopf.OperatorSettings(), logger=logging.getLogger("test"))
        )
        await held.wait()
        assert discovery_reads_left(scanning), "reads under way when the scan is cancelled"
        scan.cancel()
        for _ in range(3):
            await asyncio.sleep(0)
        return discovery_reads_left(scanning)

    assert asyncio.run(go()) == []


def test_a_kopf_whose_discovery_changed_is_left_as_it_is(monkeypatch: pytest.MonkeyPatch) -> None:
    from kopf._cogs.clients import scanning

    monkeypatch.setattr(scanning, "scan_resources", "not a coroutine function")
    assert not kopfpatches.cancel_kopfs_discovery_reads_with_it()
    assert scanning.scan_resources == "not a coroutine function"


#: In a fresh interpreter: kopf imported, then one of its private modules made unimportable (as a kopf release
#: that moved it), then this controller's kopf adjustments imported and each adjustment tried.
KOPF_WITHOUT = """
import json, logging, sys
import kopf
logging.basicConfig(level=logging.INFO, format="%(message)s")
sys.modules[sys.argv[1]] = None  # importing it now raises ImportError
from controller import kopfpatches
print(json.dumps({
    "decoder": kopfpatches.decode_kopf_watch_events_with_msgspec(),
    "discovery": kopfpatches.cancel_kopfs_discovery_reads_with_it(),
    "watch_error": kopfpatches.kopf_watch_error() is not kopfpatches._NoSuchError,
}))
"""


@pytest.mark.parametrize(
    ("module", "not_applied", "logged"),
    [
        pytest.param("kopf._cogs.clients.api", "decoder", "its watch events are decoded by its own decoder", id="api"),
        pytest.param("kopf._cogs.clients.scanning", "discovery", "its discovery is left as it is", id="scanning"),
        pytest.param("kopf._cogs.clients.watching", "watch_error", "its watch errors are unknown here", id="watching"),
    ],
)
def test_a_kopf_that_moved_a_private_module_leaves_that_adjustment_not_applied(
    module: str, not_applied: str, logged: str
) -> None:
    done = subprocess.run(
        [sys.executable, "-c", KOPF_WITHOUT, module], capture_output=True, text=True, timeout=120, cwd=Path(__file__).parents[2]
    )
    assert done.returncode == 0, done.stderr
    applied = json.loads(done.stdout)
    assert applied == {name: name != not_applied for name in ("decoder", "discovery", "watch_error")}
    (line,) = done.stderr.splitlines()
    assert line.startswith(f"kopf {importlib.metadata.version('kopf')}: {logged}"), line


def test_a_stopped_watch_still_waiting_for_its_answer_ends(monkeypatch: pytest.MonkeyPatch) -> None:
    """The stopper cancels a request that has not been answered (kopf's own callback cannot: it looks for its task
    outside of any task); without that a watch waiting for credentials after kopf's run ended waited for good."""

    async def never_answers(**_: Any) -> Any:
        await asyncio.Event().wait()

    monkeypatch.setattr(kopf_api, "request", never_answers)
    monkeypatch.setattr(kopf_api, "stream", kopf_api.stream)  # put back as it was after the test
    assert kopfpatches.cancel_kopfs_stream_requests_on_their_stopper()

    async def main() -> bool:
        stopper: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        async def read() -> list[Any]:
            settings, log = kopf.OperatorSettings(), logging.getLogger("test")
            return [event async for event in kopf_api.stream("/api/v1/nodes", settings=settings, stopper=stopper, logger=log)]

        reading = asyncio.ensure_future(read())
        await asyncio.sleep(0.05)  # waiting for the answer
        stopper.set_result(None)
        await asyncio.wait({reading}, timeout=5)  # waits, and cancels nothing itself
        ended = reading.done() and not reading.cancelled() and reading.result() == []
        reading.cancel()
        return ended

    assert asyncio.run(main()), "the stopped watch goes on waiting for its answer"
