"""The kubelet's probes, answered by a process of its own: /healthz, /livez and /readyz over plain HTTP.

In a burst the controller's main thread holds the interpreter for 50 to 300 ms at a time while it waits
for one of two CPUs the API server and etcd keep busy; a probe served by any thread of that process waits
for it (BENCHMARKS.md, "Probes under load"). This process has an interpreter of its own and nothing else
to do, so it answers as soon as the kernel gives it a CPU.

What it answers comes from the controller over a socket pair, one JSON line per beat of the main loop
(controller.probes): the loop's own verdict on its health and whether it leads and has rebuilt. A beat
older than the stall limit fails /healthz, as does a closed socket, after which this process exits: the
controller is gone, and with it what the probes report on.

The standard library alone, to start in a fraction of a second and stay small: three paths, GET only,
every connection bounded in number and in time (Connection: close after one answer, as the kubelet asks).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import socket
import sys
import time
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

logger = logging.getLogger("nodeipam.probes")

#: Connections served at once; past it a new one is closed unanswered. A kubelet opens one per probe.
MAX_CONNECTIONS = 32
#: Time a client has to send its request line and headers, and their size at most.
REQUEST_TIMEOUT_SECONDS = 2.0
MAX_REQUEST_BYTES = 8192
PATHS = ("/healthz", "/livez", "/readyz")


class Pulse:
    """What the controller last said, and when: the state the probes answer from."""

    def __init__(self, stall_limit: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.stall_limit = stall_limit
        self._clock = clock
        self.at = clock()  # the start counts as a beat: the first comes within a tenth of a second
        self.problem: str | None = None
        self.leading = False
        self.ready = False
        self.gone = False  # the controller closed its end

    def update(self, beat: dict[str, Any]) -> None:
        self.at = self._clock()
        self.problem = beat.get("problem")
        self.leading = bool(beat.get("leading"))
        self.ready = bool(beat.get("ready"))

    def health(self) -> str | None:
        """Why the controller is not alive (None: it is)."""
        if self.gone:
            return "the controller process has stopped"
        stalled = self._clock() - self.at
        if stalled > self.stall_limit:
            return f"the main event loop has not run for {stalled:.1f}s"
        return self.problem

    def answer(self, path: str) -> tuple[int, str]:
        """(status, body) for GET `path`."""
        if path in ("/healthz", "/livez"):
            problem = self.health()
            return (200, "ok") if problem is None else (500, f"unhealthy: {problem}")
        if not self.leading:
            return 200, "ok: standby, waiting for the lease"
        if self.ready:
            return 200, "ok: leading"
        return 503, "not ready: rebuilding the sets from the Node list"


def respond(pulse: Pulse, request: bytes) -> bytes:
    """The whole HTTP/1.1 response to `request` (its request line and headers)."""
    parts = request.split(b"\r\n", 1)[0].split()
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/"):
        status, body = 400, "bad request"
    elif parts[0] not in (b"GET", b"HEAD"):
        status, body = 405, "only GET"
    else:
        path = parts[1].decode("latin-1").split("?", 1)[0]
        status, body = pulse.answer(path) if path in PATHS else (404, "not found: /healthz, /livez or /readyz")
    content = (body + "\n").encode()
    head = (
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\nContent-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(content)}\r\nConnection: close\r\n\r\n"
    ).encode()
    return head if parts[:1] == [b"HEAD"] else head + content


class ProbeServer:
    """The listening side: each connection gets one answer from `pulse`, within the bounds above."""

    def __init__(self, pulse: Pulse, max_connections: int = MAX_CONNECTIONS) -> None:
        self.pulse = pulse
        self.max_connections = max_connections
        self.open_connections = 0
        self._server: asyncio.Server | None = None

    @property
    def ports(self) -> list[int]:
        return sorted({int(listening.getsockname()[1]) for listening in self._server.sockets} if self._server else set())

    async def start(self, host: str, port: int) -> None:
        self._server = await asyncio.start_server(self._serve, host or None, port, reuse_address=True, limit=MAX_REQUEST_BYTES)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.open_connections >= self.max_connections:
            writer.transport.abort()
            return
        self.open_connections += 1
        answered = False
        try:
            with contextlib.suppress(OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
                request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REQUEST_TIMEOUT_SECONDS)
                writer.write(respond(self.pulse, request))
                await asyncio.wait_for(writer.drain(), REQUEST_TIMEOUT_SECONDS)
                answered = True
        finally:
            self.open_connections -= 1
            if answered:
                writer.close()
            else:  # a client too slow, too big or gone: nothing of it is kept
                writer.transport.abort()


async def listen_to_the_controller(pulse: Pulse, reader: asyncio.StreamReader) -> None:
    """Apply each beat until the controller closes its end."""
    while line := await reader.readline():
        try:
            pulse.update(json.loads(line))
        except (ValueError, AttributeError):
            logger.warning("a beat that is not a JSON object: %r", line[:200])
    pulse.gone = True


async def serve(fd: int, host: str, port: int, stall_limit: float) -> int:
    """Listen, tell the controller the ports (or why not), answer until it closes its end; the exit status."""
    reader, writer = await asyncio.open_unix_connection(sock=socket.socket(fileno=fd))
    pulse = Pulse(stall_limit)
    server = ProbeServer(pulse)
    try:
        await server.start(host, port)
    except OSError as error:
        writer.write(json.dumps({"error": f"cannot listen on {host}:{port} ({error.strerror or error})"}).encode() + b"\n")
        await writer.drain()
        return 1
    writer.write(json.dumps({"ports": server.ports}).encode() + b"\n")
    await writer.drain()
    try:
        await listen_to_the_controller(pulse, reader)
    finally:
        await server.stop()
        writer.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m controller.probe_server", description=__doc__.splitlines()[0])
    parser.add_argument("--fd", type=int, required=True, help="the controller's end of the socket pair")
    parser.add_argument("--host", default="", help="address to listen on (empty: every address)")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--stall-limit", type=float, required=True, help="seconds without a beat before /healthz fails")
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    # The controller stops this process by closing its end, once it has stopped itself: a Ctrl-C on a
    # terminal, or a signal to the process group, must not end the probes first.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)
    return asyncio.run(serve(args.fd, args.host, args.port, args.stall_limit))


if __name__ == "__main__":
    sys.exit(main())
