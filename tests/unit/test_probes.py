"""The probe port: a child process answers the kubelet's probes from the main loop's beats.

The interpreter is held the way a busy main thread holds it: a C call that keeps the GIL (libc's sleep
through ctypes.PyDLL). No thread of this process can answer then; the probe process does.
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import socket
import subprocess
import sys
import textwrap
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from controller.loopwatch import Heartbeat, watch_loop
from controller.probe_server import ProbeServer, Pulse, respond
from controller.probes import ProbeProcess, ProbeServerError
from tests.conftest import wait_for

HOLD_SECONDS = 2


def get(port: int, path: str, host: str = "127.0.0.1") -> tuple[int, str]:
    """(status, body) of GET path; (0, "") when nothing answered."""
    try:
        with urllib.request.urlopen(f"http://{host}:{port}{path}", timeout=5) as response:
            return int(response.status), response.read().decode().strip()
    except urllib.error.HTTPError as error:
        return int(error.code), error.read().decode().strip()
    except OSError:
        return 0, ""


def serve(
    test: Callable[[ProbeProcess, Heartbeat, list[str]], Awaitable[None]], bind: str = "127.0.0.1:0", **options: Any
) -> list[str]:
    """A ProbeProcess on a free port, beaten by the main loop's pulse; what on_exit was told, once stopped."""
    exits: list[str] = []

    async def main() -> None:
        heartbeat = Heartbeat()
        pulse = asyncio.ensure_future(watch_loop(heartbeat, lambda lag: None, interval=0.05))
        probes = ProbeProcess(bind, heartbeat, stall_limit=options.pop("stall_limit", 10.0), on_exit=exits.append, **options)
        await probes.start()
        try:
            await test(probes, heartbeat, exits)
        finally:
            await probes.stop()
            pulse.cancel()

    asyncio.run(main())
    return exits


# -- The answers ---------------------------------------------------------------------------------------


def pulse_with(problem: str | None = None, leading: bool = False, ready: bool = False, age: float = 0.0) -> Pulse:
    now = [100.0]
    pulse = Pulse(stall_limit=10.0, clock=lambda: now[0])
    pulse.update({"problem": problem, "leading": leading, "ready": ready})
    now[0] += age
    return pulse


@pytest.mark.parametrize(
    ("pulse", "request_line", "status", "body"),
    [
        pytest.param(pulse_with(), b"GET /healthz HTTP/1.1", 200, "ok", id="healthy"),
        pytest.param(pulse_with(), b"GET /livez?verbose HTTP/1.1", 200, "ok", id="livez-query"),
        pytest.param(pulse_with(age=10.5), b"GET /healthz HTTP/1.1", 500, "main event loop has not run for 10.5s", id="stalled"),
        pytest.param(pulse_with(problem="resync failed"), b"GET /healthz HTTP/1.1", 500, "unhealthy: resync failed", id="check"),
        pytest.param(pulse_with(), b"GET /readyz HTTP/1.1", 200, "standby", id="standby-ready"),
        pytest.param(pulse_with(leading=True), b"GET /readyz HTTP/1.1", 503, "rebuilding", id="rebuilding"),
        pytest.param(pulse_with(leading=True, ready=True), b"GET /readyz HTTP/1.1", 200, "ok: leading", id="leading"),
        pytest.param(pulse_with(), b"GET /metrics HTTP/1.1", 404, "not found", id="metrics-elsewhere"),
        pytest.param(pulse_with(), b"POST /healthz HTTP/1.1", 405, "only GET", id="post"),
        pytest.param(pulse_with(), b"\x16\x03\x01\x02\x00", 400, "bad request", id="tls-hello"),
    ],
)
def test_each_request_gets_the_answer_of_the_last_beat(pulse: Pulse, request_line: bytes, status: int, body: str) -> None:
    response = respond(pulse, request_line + b"\r\nHost: x\r\n\r\n").decode("latin-1")
    head, _, text = response.partition("\r\n\r\n")
    assert head.startswith(f"HTTP/1.1 {status} ") and "Connection: close" in head
    assert body in text


def test_a_closed_controller_fails_healthz() -> None:
    pulse = pulse_with()
    pulse.gone = True
    assert pulse.answer("/healthz") == (500, "unhealthy: the controller process has stopped")


# -- The process ---------------------------------------------------------------------------------------

CLIENT = textwrap.dedent(
    """
    import json, sys, time, urllib.request
    port, until = int(sys.argv[1]), time.monotonic() + float(sys.argv[2])
    answers = []
    while time.monotonic() < until:
        sent = time.monotonic()
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as response:
                answers.append((sent, time.monotonic(), response.status))
        except OSError:
            answers.append((sent, time.monotonic(), 0))
        time.sleep(0.05)
    print(json.dumps(answers))
    """
)


def test_probes_answer_while_this_process_holds_the_interpreter() -> None:
    async def test(probes: ProbeProcess, heartbeat: Heartbeat, exits: list[str]) -> None:
        client = subprocess.Popen(
            [sys.executable, "-c", CLIENT, str(probes.ports[0]), str(HOLD_SECONDS + 2)], stdout=subprocess.PIPE
        )
        await asyncio.sleep(1.0)  # the client is up and probing
        held_from = time.monotonic()
        ctypes.PyDLL(None).sleep(HOLD_SECONDS)  # libc's sleep, with the GIL held throughout: no thread of ours runs
        held_until = time.monotonic()
        out, _ = await asyncio.to_thread(client.communicate, timeout=30)
        answered_while_held = [
            (sent, answered)
            for sent, answered, status in json.loads(out)
            if status == 200 and held_from + 0.2 < sent and answered < held_until
        ]
        assert answered_while_held, f"no probe sent and answered while the interpreter was held: {out.decode()}"

    serve(test)


def test_healthz_fails_once_the_main_loop_has_not_beaten_for_the_stall_limit_then_recovers() -> None:
    async def test(probes: ProbeProcess, heartbeat: Heartbeat, exits: list[str]) -> None:
        port = probes.ports[0]
        seen: list[tuple[int, str]] = []

        def unhealthy() -> tuple[int, str] | None:
            answer = get(port, "/healthz")
            return answer if answer[0] == 500 else None

        prober = threading.Thread(
            target=lambda: seen.append(wait_for(unhealthy, timeout=5, interval=0.05, what="/healthz to fail"))
        )
        prober.start()
        time.sleep(2.0)  # the main loop, held: no beat goes out
        await asyncio.to_thread(prober.join, 10)
        assert seen and "the main event loop has not run for" in seen[0][1]
        await asyncio.to_thread(wait_for, lambda: get(port, "/healthz")[0] == 200, 5, 0.05, "/healthz to recover")

    serve(test, stall_limit=0.3)


def test_the_probes_report_the_main_loops_check_and_its_rebuild() -> None:
    async def test(probes: ProbeProcess, heartbeat: Heartbeat, exits: list[str]) -> None:
        port = probes.ports[0]

        async def answer(path: str, expected: int) -> str:
            def seen() -> str | None:
                status, text = get(port, path)
                return text if status == expected else None

            return await asyncio.to_thread(wait_for, seen, 5, 0.05, f"{path} to answer {expected}")

        problem: list[str | None] = ["background loop resync failed 5 times in a row"]
        heartbeat.liveness = lambda: problem[0]
        assert "resync failed 5 times" in await answer("/healthz", 500)
        problem[0] = None
        assert await answer("/livez", 200) == "ok"
        assert "standby" in await answer("/readyz", 200)
        rebuilt = asyncio.Event()
        probes.watch(rebuilt)
        assert "rebuilding" in await answer("/readyz", 503)
        rebuilt.set()
        assert await answer("/readyz", 200) == "ok: leading"

    serve(test)


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"], ids=["ipv4", "ipv6"])
def test_the_probe_server_listens_where_told_and_stops_with_the_controller(host: str) -> None:
    bind = f"[{host}]:0" if ":" in host else f"{host}:0"
    seen: dict[str, Any] = {}

    async def test(probes: ProbeProcess, heartbeat: Heartbeat, exits: list[str]) -> None:
        seen["port"], seen["process"] = probes.ports[0], probes._process
        assert (await asyncio.to_thread(get, probes.ports[0], "/healthz", f"[{host}]" if ":" in host else host))[0] == 200

    assert serve(test, bind=bind) == []  # a stop is no death: the controller is not told to stop
    assert seen["process"].returncode == 0  # it exited by itself once our end closed
    assert get(seen["port"], "/healthz", f"[{host}]" if ":" in host else host) == (0, "")


def test_a_probe_server_that_dies_stops_the_controller() -> None:
    async def test(probes: ProbeProcess, heartbeat: Heartbeat, exits: list[str]) -> None:
        assert probes._process is not None
        probes._process.kill()
        await asyncio.to_thread(wait_for, lambda: exits, 10, 0.05, "on_exit to be told")
        assert exits[0].startswith("the probe server exited (status -9)")

    serve(test)


def test_a_port_taken_fails_the_start_naming_the_address() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]

        async def main() -> None:
            probes = ProbeProcess(f"127.0.0.1:{port}", Heartbeat(), stall_limit=10.0)
            with pytest.raises(ProbeServerError, match=f"127.0.0.1:{port} did not start: cannot listen"):
                await probes.start()
            assert probes._process is not None and probes._process.returncode is not None

        asyncio.run(main())


def test_a_disabled_probe_port_starts_no_process() -> None:
    async def main() -> None:
        probes = ProbeProcess("0", Heartbeat(), stall_limit=10.0)
        await probes.start()
        assert probes.pid is None and probes.ports == []
        await probes.stop()

    asyncio.run(main())


# -- The bounds ------------------------------------------------------------------------------------------


def test_connections_past_the_limit_and_silent_clients_are_cut_off() -> None:
    async def main() -> None:
        server = ProbeServer(pulse_with(), max_connections=2)
        await server.start("127.0.0.1", 0)
        port = server.ports[0]
        try:
            silent = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
            await asyncio.sleep(0.1)
            extra_reader, _ = await asyncio.open_connection("127.0.0.1", port)
            assert await asyncio.wait_for(extra_reader.read(), 1.0) == b""  # closed unanswered, at once
            for reader, _ in silent:  # cut off after REQUEST_TIMEOUT_SECONDS without a request
                assert await asyncio.wait_for(reader.read(), 5.0) == b""
            assert server.open_connections == 0
            assert (await asyncio.to_thread(get, port, "/healthz"))[0] == 200
        finally:
            await server.stop()

    asyncio.run(main())
