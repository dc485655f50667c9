"""The probe port: a child process that answers the kubelet's probes (controller.probe_server), fed from here.

A thread of the controller shares the interpreter with the main loop, and in a burst on two saturated
cores the main thread holds it for up to 300 ms at a time (BENCHMARKS.md, "Probes under load"). The child
has an interpreter of its own, and nothing else to do (the metrics port, which serves /healthz and /readyz
too, is another child: controller.metrics_port). At each
beat of the main loop (controller.loopwatch), a line goes to it with that loop's verdict on its health and
whether this replica leads and has rebuilt; a main loop that stops beating fails /healthz there after the
stall limit, as on the metrics port.

The child lives as long as this process: it exits once its end of the socket pair closes, whether this
process stopped or was killed. If the child stops first, the probes would fail with nobody to see why:
`on_exit` is told, and the controller stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import subprocess
import sys
from collections.abc import Callable
from typing import Any

from controller.config import split_bind_address
from controller.loopwatch import Heartbeat

logger = logging.getLogger("nodeipam.probes")

#: How long the child may take to import, bind and report its ports (a fresh interpreter: ~0.1 s idle).
START_TIMEOUT_SECONDS = 30.0
#: How long a stopping controller waits for the child to exit after closing its end, before it kills it.
STOP_TIMEOUT_SECONDS = 2.0
#: Beats written and not yet read by the child, in bytes, past which no more are written (~1,000 beats).
MAX_UNREAD_BYTES = 64 * 1024


class ProbeServerError(RuntimeError):
    """The probe server could not start; the message says why (e.g. the port is taken)."""


class ProbeProcess:
    """Starts the probe server, beats it from the main loop, and stops it; nothing at all when disabled."""

    def __init__(
        self,
        bind_address: str,
        heartbeat: Heartbeat,
        *,
        stall_limit: float,
        log_level: str = "info",
        on_exit: Callable[[str], None] = lambda why: None,
    ) -> None:
        self._bind = split_bind_address(bind_address)
        self._heartbeat = heartbeat
        self._stall_limit = stall_limit
        self._log_level = log_level
        self._on_exit = on_exit
        self._ready: asyncio.Event | None = None  # None: standby
        self._process: asyncio.subprocess.Process | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._stopping = False
        self.ports: list[int] = []

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    async def start(self) -> None:
        """Start the child and wait until it listens; ProbeServerError if it cannot."""
        if self._bind is None:
            return
        host, port = self._bind
        ours, theirs = socket.socketpair()
        try:
            self._process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "controller.probe_server",
                f"--fd={theirs.fileno()}",
                f"--host={host}",
                f"--port={port}",
                f"--stall-limit={self._stall_limit}",
                f"--log-level={self._log_level}",
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()  # the child's now: its exit alone closes the pair
        reader, self._writer = await asyncio.open_unix_connection(sock=ours)
        try:
            first = await asyncio.wait_for(reader.readline(), START_TIMEOUT_SECONDS)
            told: dict[str, Any] = json.loads(first) if first else {"error": "it exited before it listened"}
        except (TimeoutError, ValueError) as error:
            told = {"error": f"no answer from it ({error!r})"}
        if "ports" not in told:
            await self._end()
            raise ProbeServerError(f"the probe server on {host}:{port} did not start: {told.get('error')}")
        self.ports = [int(listening) for listening in told["ports"]]
        where = ", ".join(f"{host}:{listening}" for listening in self.ports)
        logger.info("serving /healthz, /livez and /readyz over http on %s (process %d)", where, self.pid)
        self._heartbeat.listeners.append(self._beat)
        self._watcher = asyncio.ensure_future(self._watch(reader))

    def watch(self, ready: asyncio.Event) -> None:
        """This replica now leads: the probes report ready once `ready` (the rebuild) is set."""
        self._ready = ready

    async def stop(self) -> None:
        """Close our end: the child stops serving and exits (killed past STOP_TIMEOUT_SECONDS)."""
        self._stopping = True
        with contextlib.suppress(ValueError):
            self._heartbeat.listeners.remove(self._beat)
        await self._end()
        if self._watcher is not None:
            self._watcher.cancel()
            await asyncio.gather(self._watcher, return_exceptions=True)

    def _beat(self, problem: str | None) -> None:
        """On the main loop, at each beat: what the probes answer until the next one."""
        writer, ready = self._writer, self._ready
        if writer is None or writer.is_closing() or writer.transport.get_write_buffer_size() > MAX_UNREAD_BYTES:
            return  # a child that stopped reading sees its last beat grow old: /healthz fails, as it should
        beat = {"problem": problem, "leading": ready is not None, "ready": ready is not None and ready.is_set()}
        writer.write(json.dumps(beat).encode() + b"\n")

    async def _watch(self, reader: asyncio.StreamReader) -> None:
        """Wait for the child's end to close: unless we are stopping, it died, and the controller must stop."""
        while await reader.read(4096):
            pass
        assert self._process is not None
        code = await self._process.wait()
        if not self._stopping:
            why = f"the probe server exited (status {code})"
            logger.error("%s; stopping, so that the probes do not fail with nobody to say why", why)
            self._on_exit(why)

    async def _end(self) -> None:
        if self._writer is not None:
            self._writer.close()
        if self._process is None or self._process.returncode is not None:
            return
        try:
            await asyncio.wait_for(self._process.wait(), STOP_TIMEOUT_SECONDS)
        except TimeoutError:
            self._process.kill()
            await self._process.wait()
