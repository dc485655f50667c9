"""The metrics port: a child process serves it from the frames this process sends, and is replaced when it fails.

No API server here: /metrics is made an always-allowed path, so that its text can be read without a token
review (tests/integration/test_metrics_port.py scrapes with real reviews). The interpreter is held the way a
busy main thread holds it: a C call that keeps the GIL (libc's sleep through ctypes.PyDLL).
"""

from __future__ import annotations

import asyncio
import ctypes
import http.client
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from controller import metrics_frames
from controller.backoff import Backoff
from controller.loopwatch import Heartbeat, watch_loop
from controller.metrics_port import MetricsProcess, MetricsServerError
from controller.metrics_server import Feed
from controller.secure_serving import DEFAULT_ALWAYS_ALLOW_PATHS, HANDSHAKE_TIMEOUT, ServingLimits, ServingOptions
from tests.conftest import wait_for

HOLD_SECONDS = 2
OPEN_METRICS = ServingOptions(always_allow_paths=(*DEFAULT_ALWAYS_ALLOW_PATHS, "/metrics"))
FAST = Backoff(0.1, cap=0.5)


def get(port: int, path: str) -> tuple[int, str]:
    """(status, body) of GET path on a new HTTPS connection; (0, "") when nothing answered."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    client = http.client.HTTPSConnection("127.0.0.1", port, timeout=5, context=context)
    try:
        client.request("GET", path)
        response = client.getresponse()
        return response.status, response.read().decode()
    except (OSError, http.client.HTTPException):
        return 0, ""
    finally:
        client.close()


def alive(pid: int) -> bool:
    """Whether process `pid` still runs (a zombie has stopped)."""
    try:
        return "\nState:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False


class Gate(Collector):
    """A collector that, while closed, blocks whoever collects the registry: frames stop."""

    def __init__(self) -> None:
        self.open = threading.Event()
        self.open.set()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        self.open.wait()
        yield GaugeMetricFamily("node_ipam_test_gate", "a test gauge", value=1)


def serve(
    test: Callable[[MetricsProcess, CollectorRegistry], Awaitable[None]],
    refusals: list[tuple[str, int]] | None = None,
    **options: Any,
) -> None:
    """A MetricsProcess on a free loopback port, fed from a registry with one counter; `refusals` gets what it counted."""
    counted = refusals if refusals is not None else []

    async def main() -> None:
        registry = CollectorRegistry()
        Counter("node_ipam_test", "a test counter", registry=registry).inc()
        heartbeat = Heartbeat()
        pulse = asyncio.ensure_future(watch_loop(heartbeat, lambda lag: None, interval=0.05))
        options.setdefault("serving", OPEN_METRICS)
        options.setdefault("feed_interval", 0.1)
        port = MetricsProcess(
            "127.0.0.1:0",
            lambda: generate_latest(registry),
            heartbeat,
            refused=lambda reason, count: counted.append((reason, count)),
            **options,
        )
        await port.start()
        try:
            await test(port, registry)
        finally:
            await port.stop()
            pulse.cancel()

    asyncio.run(main())


# -- The messages and the state they carry -------------------------------------------------------------


def test_messages_arrive_whole_in_whatever_chunks() -> None:
    stream = metrics_frames.encode({"kind": "frame", "seq": 1}, b"text 1\n") + metrics_frames.encode({"kind": "ack", "seq": 1})
    decoder = metrics_frames.Decoder()
    got = [message for byte in range(len(stream)) for message in decoder.feed(stream[byte : byte + 1])]
    assert got == [({"kind": "frame", "seq": 1}, b"text 1\n"), ({"kind": "ack", "seq": 1}, b"")]


@pytest.mark.parametrize(
    "data", [b"\xff\xff\xff\xff\x00\x00\x00\x00", b"\x00\x00\x00\x02\x00\x00\x00\x00[]", b"\x00\x00\x00\x01\x00\x00\x00\x00{"]
)
def test_bytes_that_are_no_message_break_the_stream(data: bytes) -> None:
    with pytest.raises(metrics_frames.BrokenStream):
        metrics_frames.Decoder().feed(data)


@pytest.mark.parametrize(
    ("frame_during_review", "answer"),
    [
        pytest.param(True, b"text 2\n", id="a-frame-came-during-the-review-is-answered-at-once"),
        pytest.param(False, b"text 2\n", id="none-yet-the-scrape-waits-for-the-frame-asked-ahead"),
    ],
)
def test_a_frame_asked_for_ahead_of_the_review(frame_during_review: bool, answer: bytes) -> None:
    """A scrape asks for its frame as it arrives: one ask, and no second wait once that frame has come."""

    async def main() -> None:
        asks: list[int] = []
        feed = Feed(stall_limit=10.0, ask=lambda: asks.append(1), fresh_wait=30.0)
        feed.update({"kind": "frame"}, b"text 1\n")
        collect = feed.ask_ahead()  # the scrape arrives; its review is under way
        if frame_during_review:
            feed.update({"kind": "frame"}, b"text 2\n")
            assert await asyncio.wait_for(collect(), 5.0) == answer  # a second wait would be 30 s
        else:
            scrape = asyncio.ensure_future(collect())
            await asyncio.sleep(0)
            assert not scrape.done()
            feed.update({"kind": "frame"}, b"text 2\n")
            assert await asyncio.wait_for(scrape, 5.0) == answer
        assert len(asks) == 1

    asyncio.run(main())


def test_the_feed_answers_from_the_last_frame_and_fails_once_it_is_old() -> None:
    now = [100.0]
    feed = Feed(stall_limit=10.0, clock=lambda: now[0])
    with pytest.raises(TimeoutError):  # no text yet: a 503
        asyncio.run(feed.collect())
    feed.update({"kind": "frame", "problem": None}, b"text 1\n")
    assert feed.health() is None and asyncio.run(feed.collect()) == b"text 1\n"
    feed.update({"kind": "frame", "problem": "resync failed", "text": False}, b"")
    assert feed.health() == "resync failed" and asyncio.run(feed.collect()) == b"text 1\n"  # a frame without text keeps it
    now[0] += 10.5
    assert feed.health() == "the controller has sent nothing for 10.5s"
    feed.gone = True
    assert feed.health() == "the controller process has stopped"


# -- The process -----------------------------------------------------------------------------------------

CLIENT = textwrap.dedent(
    """
    import http.client, json, ssl, sys, time
    port, until = int(sys.argv[1]), time.monotonic() + float(sys.argv[2])
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    answers = []
    while time.monotonic() < until:
        for path in ("/healthz", "/metrics"):
            sent = time.monotonic()
            try:
                client = http.client.HTTPSConnection("127.0.0.1", port, timeout=10, context=context)
                client.request("GET", path)
                response = client.getresponse()
                answers.append((path, sent, time.monotonic(), response.status, "node_ipam_test_total" in response.read().decode()))
                client.close()
            except OSError:
                answers.append((path, sent, time.monotonic(), 0, False))
        time.sleep(0.05)
    print(json.dumps(answers))
    """
)


def test_the_port_answers_while_this_process_holds_the_interpreter() -> None:
    async def test(port: MetricsProcess, registry: CollectorRegistry) -> None:
        client = subprocess.Popen(
            [sys.executable, "-c", CLIENT, str(port.ports[0]), str(HOLD_SECONDS + 2)], stdout=subprocess.PIPE
        )
        await asyncio.sleep(1.0)  # the client is up and requesting
        held_from = time.monotonic()
        ctypes.PyDLL(None).sleep(HOLD_SECONDS)  # libc's sleep, with the GIL held throughout: no thread of ours runs
        held_until = time.monotonic()
        out, _ = await asyncio.to_thread(client.communicate, timeout=30)
        answered = {
            path
            for path, sent, done, status, has_text in json.loads(out)
            if status == 200 and held_from + 0.2 < sent and done < held_until and (has_text or path == "/healthz")
        }
        assert answered == {"/healthz", "/metrics"}, f"not answered while the interpreter was held: {out.decode()}"

    serve(test)


def test_metrics_show_this_process_registry_and_refusals_are_counted_here() -> None:
    refusals: list[tuple[str, int]] = []

    async def test(port: MetricsProcess, registry: CollectorRegistry) -> None:
        Counter("node_ipam_test_later", "a counter made after the start", registry=registry).inc(7)
        await asyncio.to_thread(
            wait_for, lambda: "node_ipam_test_later_total 7.0" in get(port.ports[0], "/metrics")[1], 10, 0.05, "the new counter"
        )
        silent = socket.create_connection(("127.0.0.1", port.ports[0]))  # no ClientHello: its handshake times out
        try:
            await asyncio.to_thread(wait_for, lambda: (HANDSHAKE_TIMEOUT, 1) in refusals, 10, 0.05, "the refusal counted here")
        finally:
            silent.close()

    serve(
        test,
        refusals,
        serving=ServingOptions(always_allow_paths=OPEN_METRICS.always_allow_paths, limits=ServingLimits(handshake_timeout=0.3)),
    )


def test_a_scrape_asks_for_a_frame_and_shows_the_registry_of_the_moment() -> None:
    async def test(port: MetricsProcess, registry: CollectorRegistry) -> None:
        counter = Counter("node_ipam_test_now", "a counter incremented just before each scrape", registry=registry)
        for value in range(1, 4):
            counter.inc()
            status, text = await asyncio.to_thread(get, port.ports[0], "/metrics")  # the periodic frame is 60 s away
            assert status == 200 and f"node_ipam_test_now_total {value}.0" in text, text

    serve(test, feed_interval=60.0, fresh_wait=5.0)  # however busy the machine running the tests


def test_healthz_fails_once_frames_stop_and_recovers_when_they_come_again() -> None:
    gate = Gate()

    async def test(port: MetricsProcess, registry: CollectorRegistry) -> None:
        registry.register(gate)
        assert (await asyncio.to_thread(get, port.ports[0], "/healthz"))[0] == 200
        gate.open.clear()  # the feed thread blocks in its next collection: no frame goes out
        try:
            _, text = await asyncio.to_thread(
                wait_for, lambda: (answer := get(port.ports[0], "/healthz"))[0] == 500 and answer, 10, 0.05, "/healthz to fail"
            )
            assert "the controller has sent nothing for" in text
            assert port.restarts == 0  # the child is fine: nothing came to acknowledge
        finally:
            gate.open.set()
        await asyncio.to_thread(wait_for, lambda: get(port.ports[0], "/healthz")[0] == 200, 10, 0.05, "/healthz to recover")

    serve(test, stall_limit=1.0, stuck_after=1.0)


def test_healthz_carries_the_main_loops_stall() -> None:
    async def test(port: MetricsProcess, registry: CollectorRegistry) -> None:
        seen: list[tuple[int, str]] = []

        def unhealthy() -> tuple[int, str] | None:
            answer = get(port.ports[0], "/healthz")
            return answer if answer[0] == 500 else None

        prober = threading.Thread(
            target=lambda: seen.append(wait_for(unhealthy, timeout=5, interval=0.05, what="/healthz to fail"))
        )
        prober.start()
        time.sleep(2.0)  # the main loop, held: no beat, while the feed thread goes on
        await asyncio.to_thread(prober.join, 10)
        assert seen and "the main event loop has not run for" in seen[0][1]
        await asyncio.to_thread(wait_for, lambda: get(port.ports[0], "/healthz")[0] == 200, 5, 0.05, "/healthz to recover")

    serve(test, stall_limit=0.5)


def test_readyz_follows_leading_and_the_rebuild_without_waiting_for_the_next_frame() -> None:
    async def test(port: MetricsProcess, registry: CollectorRegistry) -> None:
        assert (await asyncio.to_thread(get, port.ports[0], "/readyz"))[1] == "ok: standby, waiting for the lease"
        rebuilt = asyncio.Event()
        port.watch(rebuilt)
        await asyncio.to_thread(
            wait_for, lambda: get(port.ports[0], "/readyz")[0] == 503, 2, 0.05, "/readyz to wait for the rebuild"
        )
        rebuilt.set()
        await asyncio.to_thread(wait_for, lambda: get(port.ports[0], "/readyz") == (200, "ok: leading"), 2, 0.05, "/readyz")

    serve(test, feed_interval=60.0)  # the periodic frame is a minute away


@pytest.mark.parametrize("failure", [signal.SIGKILL, signal.SIGSTOP], ids=["dies", "stuck"])
def test_a_child_that_dies_or_is_stuck_is_killed_and_replaced_on_the_same_port(failure: signal.Signals) -> None:
    restarts: list[None] = []

    async def test(port: MetricsProcess, registry: CollectorRegistry) -> None:
        first = port.pid
        assert first is not None and (await asyncio.to_thread(get, port.ports[0], "/healthz"))[0] == 200
        os.kill(first, failure)
        failed = time.monotonic()
        second = await asyncio.to_thread(wait_for, lambda: port.pid not in (None, first) and port.pid, 20, 0.05, "another child")
        # Told by its exit, or by a frame unacknowledged for stuck_after (1 s), long before the frames fill the socket.
        assert time.monotonic() - failed < 8.0
        assert not alive(first) and restarts == [None] and port.restarts == 1
        await asyncio.to_thread(
            wait_for, lambda: "node_ipam_test_total 1.0" in get(port.ports[0], "/metrics")[1], 10, 0.05, "a scrape"
        )
        assert port.pid == second

    serve(test, stuck_after=1.0, backoff=FAST, on_restart=lambda: restarts.append(None), feed_interval=0.5)


PARENT = textwrap.dedent(
    """
    import asyncio, sys
    from controller.loopwatch import Heartbeat
    from controller.metrics_port import MetricsProcess

    async def main():
        port = MetricsProcess("127.0.0.1:0", lambda: b"", Heartbeat())
        await port.start()
        print(port.pid, port.ports[0], flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())
    """
)


def test_no_child_outlives_its_parent() -> None:
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parents[2])
    try:
        assert parent.stdout is not None
        child, port = (int(field) for field in parent.stdout.readline().split())
        assert alive(child) and get(port, "/healthz")[0] == 200
        parent.kill()  # no cleanup at all: the child sees its end of the socket pair close
        parent.wait()
        wait_for(lambda: not alive(child), 10, 0.05, "the child to exit")
        assert get(port, "/healthz")[0] == 0
    finally:
        parent.kill()
        parent.wait()


def test_stop_ends_the_child_and_closes_the_port() -> None:
    ended: list[tuple[int, int]] = []

    async def test(port: MetricsProcess, registry: CollectorRegistry) -> None:
        assert port.pid is not None
        ended.append((port.pid, port.ports[0]))

    serve(test)
    child, port = ended[0]
    assert not alive(child) and get(port, "/healthz")[0] == 0


def test_a_port_taken_or_an_unreadable_certificate_fails_the_start() -> None:
    async def main() -> None:
        taken = socket.socket()
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        try:
            with pytest.raises(OSError):
                await MetricsProcess(f"127.0.0.1:{taken.getsockname()[1]}", lambda: b"", Heartbeat()).start()
        finally:
            taken.close()
        serving = ServingOptions(tls_cert_file="/nonexistent/tls.crt", tls_private_key_file="/nonexistent/tls.key")
        with pytest.raises(MetricsServerError, match=r"did not start: FileNotFoundError.*--tls-cert-file=/nonexistent/tls\.crt"):
            await MetricsProcess("127.0.0.1:0", lambda: b"", Heartbeat(), serving=serving).start()

    asyncio.run(main())


def test_a_disabled_port_starts_no_process() -> None:
    async def main() -> None:
        port = MetricsProcess("0", lambda: b"", Heartbeat())
        threads = threading.active_count()
        await port.start()
        assert port.pid is None and port.ports == [] and threading.active_count() == threads
        await port.stop()

    asyncio.run(main())
