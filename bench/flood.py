"""Flood the metrics port: idle TLS connections, then /metrics requests with random tokens, all held open.

    python -m bench.flood [--target health|controller] [--idle 1000] [--pending 2000] [--review-seconds 0.05]

Prints the server's memory (RSS) at rest, under the idle connections and under both, how long a valid
scrape and a /healthz probe take while the flood holds its connections, and how many TokenReviews are
sent for clients that have gone (LEAVING requests, their connections closed at once).

  health      the HealthServer alone, in a process of its own, with a fake review API that answers each
              review after --review-seconds, two at a time (the review client has two connections).
  controller  `nodeipam run` against a local control plane: real TokenReviews from a real kube-apiserver;
              the RSS is that of the process serving its metrics port (controller.metrics_server).

The flood's connections are plain blocking sockets, one TLS handshake after another, so that the
process flooding stays small. Nothing here asserts a limit (tests/unit/test_server.py and
tests/integration/test_controller.py do).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import re
import resource
import secrets
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
VALID_TOKEN = "flood-scraper-token"
VALID_USER = "system:serviceaccount:monitoring:prometheus"
TOKEN_REVIEWS = "/apis/authentication.k8s.io/v1/tokenreviews"
#: Reviews the fake review API answers at once: the review client's connections (controller.lifecycle).
REVIEWS_AT_ONCE = 2
#: How long the flood's client waits for one TLS handshake (a refused connection fails at once).
HANDSHAKE_SECONDS = 10.0
#: How long a valid scrape or a probe may take before the bench calls it failed.
ANSWER_SECONDS = 60.0
#: Requests with random tokens whose clients leave at once, and how long to count the TokenReviews sent after.
LEAVING = 500
AFTER_SECONDS = 5.0


def raise_open_files_limit() -> None:
    """Thousands of sockets on each side: the soft limit up to the hard one (children inherit it)."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def rss_mib(pid: int) -> tuple[float, float]:
    """(resident now, resident at its peak) of process `pid`, in MiB."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def metrics_server_pid(controller_pid: int) -> int | None:
    """The process serving the controller's metrics port: a child of any of its threads (the feed thread starts
    the replacements); None while there is none."""
    for task in Path(f"/proc/{controller_pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError):
            for child in (task / "children").read_text().split():
                if b"controller.metrics_server" in Path(f"/proc/{child}/cmdline").read_bytes():
                    return int(child)
    return None


def client_context() -> ssl.SSLContext:
    """TLS without verification: the port's certificate is self-signed."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def open_tls(port: int, context: ssl.SSLContext, timeout: float = HANDSHAKE_SECONDS) -> ssl.SSLSocket | None:
    """A TLS connection to 127.0.0.1:port, handshake done; None when the server refused or dropped it."""
    try:
        raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    except OSError:
        return None
    try:
        return context.wrap_socket(raw)
    except (OSError, ssl.SSLError):
        raw.close()
        return None


def request_head(path: str, token: str | None, close: bool = False) -> bytes:
    lines = [f"GET {path} HTTP/1.1", "Host: 127.0.0.1"]
    if token is not None:
        lines.append(f"Authorization: Bearer {token}")
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def timed_get(port: int, path: str, token: str | None, timeout: float = ANSWER_SECONDS) -> tuple[int, float]:
    """(HTTP status, seconds) of one GET on a new connection; status 0 when it got no answer in `timeout`."""
    started = time.monotonic()
    deadline = started + timeout
    while time.monotonic() < deadline:
        connection = open_tls(port, client_context(), timeout=max(deadline - time.monotonic(), 0.1))
        if connection is None:  # refused before its handshake: a real client tries again
            time.sleep(0.05)
            continue
        with connection:
            connection.settimeout(max(deadline - time.monotonic(), 0.1))
            try:
                connection.sendall(request_head(path, token, close=True))
                answer = b""
                while b"\r\n" not in answer:
                    chunk = connection.recv(4096)
                    if not chunk:
                        break
                    answer += chunk
            except OSError:
                continue
        match = re.match(rb"HTTP/1\.[01] (\d{3})", answer)
        if match:
            return int(match.group(1)), time.monotonic() - started
    return 0, time.monotonic() - started


class Flood:
    """The flood's connections, held open until close()."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.context = client_context()
        self.sockets: list[ssl.SSLSocket] = []
        self.refused = 0

    def open_idle(self, count: int) -> None:
        """`count` TLS connections that send nothing."""
        for _ in range(count):
            self._open(None)

    def send_pending(self, count: int) -> None:
        """`count` GET /metrics, each with a random token on a connection of its own; answers left unread."""
        for _ in range(count):
            self._open(request_head("/metrics", secrets.token_urlsafe(32)))

    def _open(self, send: bytes | None) -> None:
        connection = open_tls(self.port, self.context)
        if connection is None:
            self.refused += 1
            return
        self.sockets.append(connection)
        if send is not None:
            with contextlib.suppress(OSError):  # dropped by the server meanwhile: counts as sent
                connection.sendall(send)

    def close(self) -> None:
        for connection in self.sockets:
            with contextlib.suppress(OSError):
                connection.close()
        self.sockets.clear()


# -- the HealthServer alone ----------------------------------------------------------------------------


class SlowReviews:
    """A review API answering after `seconds`, `in_flight` at a time; VALID_TOKEN may get /metrics."""

    def __init__(self, seconds: float, in_flight: int = REVIEWS_AT_ONCE) -> None:
        self.seconds = seconds
        self.slots = asyncio.Semaphore(in_flight)
        self.token_reviews_sent = 0

    async def request(self, method: str, path: str, *, body: Any = None) -> Any:
        async with self.slots:
            if path == TOKEN_REVIEWS:
                self.token_reviews_sent += 1
            await asyncio.sleep(self.seconds)
        if path == TOKEN_REVIEWS:
            if body["spec"]["token"] != VALID_TOKEN:
                return {"status": {"authenticated": False}}
            return {"status": {"authenticated": True, "user": {"username": VALID_USER, "groups": ["g"]}}}
        return {"status": {"allowed": body["spec"]["user"] == VALID_USER}}


def serve(port: int, review_seconds: float) -> None:
    """The HealthServer on 127.0.0.1:port with SlowReviews, until stdin closes.

    Each line read on stdin is answered on stdout with the number of TokenReviews sent so far.
    """
    from prometheus_client import CollectorRegistry

    from controller.server import HealthServer

    async def main() -> None:
        reviews = SlowReviews(review_seconds)
        server = HealthServer(f"127.0.0.1:{port}", CollectorRegistry(), reviews=reviews)
        await server.start()
        stdin_closed = asyncio.Event()
        loop = asyncio.get_running_loop()

        def answer_counts() -> None:
            for _ in sys.stdin:
                print(f"reviews {reviews.token_reviews_sent}", flush=True)
            loop.call_soon_threadsafe(stdin_closed.set)

        threading.Thread(target=answer_counts, daemon=True).start()
        print("serving", flush=True)
        await stdin_closed.wait()
        await server.stop()

    asyncio.run(main())


class HealthServerProcess:
    """`python -m bench.flood serve` as a child process."""

    def __init__(self, port: int, review_seconds: float) -> None:
        self.port = port
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.flood", "serve", "--port", str(port), "--review-seconds", str(review_seconds)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        assert line.strip() == "serving", f"the health server did not start: {line!r}"

    @property
    def pid(self) -> int:
        return self.process.pid

    def token_reviews_sent(self) -> int:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write("count\n")
        self.process.stdin.flush()
        return int(self.process.stdout.readline().split()[1])

    def stop(self) -> None:
        if self.process.stdin is not None:
            with contextlib.suppress(OSError):
                self.process.stdin.close()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@contextlib.contextmanager
def health_server(review_seconds: float) -> Iterator[HealthServerProcess]:
    from localcluster.cluster import free_port

    server = HealthServerProcess(free_port(), review_seconds)
    try:
        yield server
    finally:
        server.stop()


# -- the whole controller --------------------------------------------------------------------------------


def apiserver_token_reviews(server: str, admin_token: str) -> int:
    """TokenReviews the API server has answered, from its own /metrics."""
    request = urllib.request.Request(server + "/metrics", headers={"Authorization": f"Bearer {admin_token}"})
    with urllib.request.urlopen(request, timeout=30, context=client_context()) as response:
        text = response.read().decode()
    pattern = r'^apiserver_request_total\{[^}]*resource="tokenreviews"[^}]*\} (\S+)$'
    return int(sum(float(value) for value in re.findall(pattern, text, re.MULTILINE)))


def wait_for_port(port: int, timeout: float = 60.0) -> None:
    """Until /readyz on 127.0.0.1:port answers 200."""
    deadline = time.monotonic() + timeout
    while timed_get(port, "/readyz", None, timeout=2)[0] != 200:
        if time.monotonic() > deadline:
            raise TimeoutError(f"nothing answers on port {port}")
        time.sleep(0.2)


# -- the measurement ---------------------------------------------------------------------------------------


@dataclasses.dataclass
class Figures:
    idle: int
    pending: int
    rss_at_rest_mib: float = 0.0
    rss_idle_mib: float = 0.0
    rss_flood_mib: float = 0.0
    peak_rss_mib: float = 0.0
    refused_connections: int = 0
    scrape_status: int = 0
    scrape_seconds: float = 0.0
    probe_status: int = 0
    probe_seconds: float = 0.0
    token_reviews_after_clients_left: int = 0

    def lines(self) -> list[str]:
        rows = [
            ("RSS at rest (after one valid scrape)", f"{self.rss_at_rest_mib:.1f} MiB"),
            (f"RSS under {self.idle:,} idle TLS connections", f"{self.rss_idle_mib:.1f} MiB"),
            (f"RSS under those and {self.pending:,} pending random-token /metrics", f"{self.rss_flood_mib:.1f} MiB"),
            ("peak RSS", f"{self.peak_rss_mib:.1f} MiB"),
            ("flood connections refused or dropped in the handshake", f"{self.refused_connections:,}"),
            ("valid scrape during the flood", f"{self.scrape_status} in {self.scrape_seconds:.2f} s"),
            ("/healthz during the flood", f"{self.probe_status} in {self.probe_seconds:.2f} s"),
            (
                f"TokenReviews sent {AFTER_SECONDS:g} s after {LEAVING} random-token clients left",
                str(self.token_reviews_after_clients_left),
            ),
        ]
        width = max(len(label) for label, _ in rows)
        return [f"{label + ':':<{width + 1}} {value}" for label, value in rows]


def measure(port: int, pid: int, idle: int, pending: int, valid_token: str, reviews_sent: Any) -> Figures:
    """Flood the port of process `pid`; `reviews_sent()` counts the TokenReviews sent so far."""
    figures = Figures(idle, pending)
    status, _ = timed_get(port, "/metrics", valid_token)
    assert status == 200, f"the valid token was refused at rest: {status}"
    figures.rss_at_rest_mib = rss_mib(pid)[0]
    flood = Flood(port)
    try:
        flood.open_idle(idle)
        figures.rss_idle_mib = rss_mib(pid)[0]
        flood.send_pending(pending)
        figures.rss_flood_mib = rss_mib(pid)[0]
        figures.scrape_status, figures.scrape_seconds = timed_get(port, "/metrics", valid_token)
        figures.probe_status, figures.probe_seconds = timed_get(port, "/healthz", None)
        figures.refused_connections = flood.refused
    finally:
        flood.close()
    # Clients that leave at once: their reviews should not be sent.
    leaving = Flood(port)
    leaving.send_pending(LEAVING)
    leaving.close()
    time.sleep(0.5)  # the server notices the closed connections
    before = reviews_sent()
    time.sleep(AFTER_SECONDS)
    figures.token_reviews_after_clients_left = reviews_sent() - before
    figures.peak_rss_mib = rss_mib(pid)[1]
    return figures


def run_health(idle: int, pending: int, review_seconds: float) -> Figures:
    with health_server(review_seconds) as server:
        return measure(server.port, server.pid, idle, pending, VALID_TOKEN, server.token_reviews_sent)


def run_controller(idle: int, pending: int) -> Figures:
    from localcluster.cluster import ADMIN_TOKEN, LocalControlPlane, free_port

    with LocalControlPlane() as plane, tempfile.TemporaryFile() as log:
        port = free_port()
        argv = plane.controller_command(
            "10.244.0.0/16", "--leader-elect=false", f"--metrics-bind-address=127.0.0.1:{port}", "--health-probe-bind-address=0"
        )
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        try:
            wait_for_port(port)

            def reviews_sent() -> int:
                return apiserver_token_reviews(plane.server, ADMIN_TOKEN)

            server = metrics_server_pid(process.pid)  # the port's process holds the flood's connections
            assert server is not None, "no process serves the metrics port"
            return measure(port, server, idle, pending, ADMIN_TOKEN, reviews_sent)
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.flood", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command")
    serve_command = commands.add_parser("serve", help="(internal) run the HealthServer for the health target")
    serve_command.add_argument("--port", type=int, required=True)
    serve_command.add_argument("--review-seconds", type=float, default=0.05)
    parser.add_argument("--target", choices=["health", "controller"], default="health")
    parser.add_argument("--idle", type=int, default=1000, help="idle TLS connections (default 1000)")
    parser.add_argument("--pending", type=int, default=2000, help="/metrics requests with random tokens (default 2000)")
    parser.add_argument("--review-seconds", type=float, default=0.05, help="health target: time of one fake review")
    args = parser.parse_args(argv)
    raise_open_files_limit()
    if args.command == "serve":
        serve(args.port, args.review_seconds)
        return 0
    if args.target == "health":
        figures = run_health(args.idle, args.pending, args.review_seconds)
        print(f"HealthServer alone, fake reviews of {args.review_seconds:g} s, 2 at a time (pid RSS from /proc):")
    else:
        figures = run_controller(args.idle, args.pending)
        print("nodeipam run against a local kube-apiserver (pid RSS from /proc):")
    print("\n".join(figures.lines()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
