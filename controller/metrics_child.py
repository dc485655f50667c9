"""One child serving the metrics port, as the feed thread reaches it: started, written to, read, judged stuck, ended.

controller.metrics_port decides what to send and when, and replaces a child that fails; here is what one
child is: its process, its end of the socket pair, the frames it has not acknowledged yet. Every wait here
also wakes on the Waker, so that a stopping controller never waits for a child.
"""

from __future__ import annotations

import collections
import contextlib
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

from controller import metrics_frames

#: How long a child may take to start (import, make its certificate) and listen.
START_TIMEOUT_SECONDS = 30.0
#: How long a stopping controller waits for the child to exit after closing its end, before it kills it.
STOP_TIMEOUT_SECONDS = 2.0

Messages = list[tuple[dict[str, Any], bytes]]


class MetricsServerError(RuntimeError):
    """The metrics port's process could not start; the message says why (e.g. a TLS file is unreadable)."""


class Stopping(Exception):
    """The controller is stopping: whatever waited on a child gives up."""


class Waker:
    """Wakes the feed thread from any thread: to stop, or to send a frame now (poked)."""

    def __init__(self) -> None:
        self.stopping = threading.Event()
        self.poked = threading.Event()
        self.reader, self._writer = socket.socketpair()
        self.reader.setblocking(False)

    def poke(self) -> None:
        self.poked.set()
        with contextlib.suppress(OSError):
            self._writer.send(b"p")

    def stop(self) -> None:
        self.stopping.set()
        with contextlib.suppress(OSError):
            self._writer.send(b"x")

    def take(self) -> None:
        """Take the wake-up bytes; Stopping if it was to stop (a poke is for the caller to see)."""
        with contextlib.suppress(BlockingIOError):
            self.reader.recv(4096)
        if self.stopping.is_set():
            raise Stopping

    def close(self) -> None:
        self.reader.close()
        self._writer.close()


class ChildLink:
    """A started child and its end of the socket pair; `sent` holds the frames it has not acknowledged."""

    def __init__(self, process: subprocess.Popen[bytes], sock: socket.socket, waker: Waker, stuck_after: float) -> None:
        self.process = process
        self.sock = sock
        self.waker = waker
        self.stuck_after = stuck_after
        self.decoder = metrics_frames.Decoder()
        self.sent: collections.deque[tuple[int, float]] = collections.deque()  # (seq, when sent), unacknowledged
        self.seq = 0
        self.token: str | None = None  # the last token it was sent

    @classmethod
    def start(
        cls,
        listening: Sequence[socket.socket],
        log_level: str,
        setup: dict[str, Any],
        waker: Waker,
        stuck_after: float,
        where: str,
    ) -> ChildLink:
        """A child serving `listening`, sent `setup`, once it says it listens; MetricsServerError otherwise."""
        ours, theirs = socket.socketpair()
        fds = [theirs.fileno(), *(sock.fileno() for sock in listening)]
        try:
            process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "controller.metrics_server",
                    f"--fd={theirs.fileno()}",
                    *(f"--listen-fd={sock.fileno()}" for sock in listening),
                    f"--log-level={log_level}",
                ],
                pass_fds=fds,
                stdin=subprocess.DEVNULL,
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()  # the child's now: its exit alone closes the pair
        ours.setblocking(False)
        child = cls(process, ours, waker, stuck_after)
        child.token = setup.get("token")
        try:
            child.send(metrics_frames.encode(setup), START_TIMEOUT_SECONDS)
            header = child._first_answer()
        except Stopping:
            child.end()
            raise MetricsServerError("stopping") from None
        except (OSError, metrics_frames.BrokenStream, TimeoutError) as error:
            header = {"kind": metrics_frames.ERROR, "error": f"no answer from it ({error!r})"}
        if header["kind"] != metrics_frames.LISTENING:
            child.end()
            raise MetricsServerError(f"the metrics port's server on {where} did not start: {header.get('error')}")
        return child

    @property
    def pid(self) -> int:
        return self.process.pid

    def _first_answer(self) -> dict[str, Any]:
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while True:
            messages = self.receive(deadline - time.monotonic())
            if messages is None:
                return {"kind": metrics_frames.ERROR, "error": f"it exited before it listened (status {self.process.poll()})"}
            for header, _ in messages:
                if header["kind"] in (metrics_frames.LISTENING, metrics_frames.ERROR):
                    return header
            if time.monotonic() >= deadline:
                raise TimeoutError(f"nothing in {START_TIMEOUT_SECONDS:g}s")

    def next_seq(self) -> int:
        """The number of a frame about to be sent, recorded as unacknowledged from now."""
        self.seq += 1
        self.sent.append((self.seq, time.monotonic()))
        return self.seq

    def acknowledged(self, seq: object) -> None:
        while self.sent and isinstance(seq, int) and self.sent[0][0] <= seq:
            self.sent.popleft()

    def stuck(self) -> bool:
        """A frame has waited for its acknowledgement longer than `stuck_after`."""
        return bool(self.sent) and time.monotonic() - self.sent[0][1] > self.stuck_after

    def send(self, data: bytes, timeout: float) -> None:
        """Write all of `data`; TimeoutError if the child reads none of it for `timeout`, Stopping if asked to stop."""
        view = memoryview(data)
        deadline = time.monotonic() + timeout
        while view:
            readable, writable, _ = select.select([self.waker.reader], [self.sock], [], max(deadline - time.monotonic(), 0))
            if readable:
                self.waker.take()
                continue
            if not writable:
                raise TimeoutError
            try:
                view = view[self.sock.send(view) :]
            except BlockingIOError:
                continue
            deadline = time.monotonic() + timeout

    def receive(self, timeout: float) -> Messages | None:
        """The messages that arrive within `timeout` (maybe none); None once the child's end closed."""
        readable, _, _ = select.select([self.waker.reader, self.sock], [], [], max(timeout, 0))
        if self.waker.reader in readable:
            self.waker.take()
            return []  # the caller looks at what woke it
        if not readable:
            return []
        try:
            data = self.sock.recv(1 << 16)
        except BlockingIOError:
            return []
        except OSError:
            return None
        return self.decoder.feed(data) if data else None

    def status(self) -> int | None:
        """Its exit status, waited for a second at most (None: still running)."""
        with contextlib.suppress(subprocess.TimeoutExpired):
            return self.process.wait(timeout=1)
        return None

    def end(self) -> None:
        """Close our end (a child that works exits), and kill it if it has not exited within STOP_TIMEOUT_SECONDS."""
        self.sock.close()
        try:
            self.process.wait(timeout=STOP_TIMEOUT_SECONDS if not self.stuck() else 0)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
