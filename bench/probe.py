"""The bench's liveness probe and Prometheus scrape of the controller, in a process of its own.

As a kubelet probes and Prometheus scrapes: each request on a new HTTPS
connection, /healthz without a token every PROBE_INTERVAL, /metrics with a
bearer token every SCRAPE_INTERVAL, each with a timeout. A process of its
own, so that the bench's own load (64 creates in flight) does not delay the
requests and inflate what is measured. A module of its own so that a spawned
process can import its entry point.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import socket
import ssl
import threading
import time
from multiprocessing.connection import Connection

from controller.server import read_server_timing

PROBE_INTERVAL = 0.1  # seconds between /healthz requests (a kubelet probes every 10 s; this looks closer)
SCRAPE_INTERVAL = 1.0  # seconds between /metrics requests
TIMEOUT = 10.0  # a request that takes longer counts as this long, and failed

#: One request: (when it was sent, monotonic clock; how long it took, s; HTTP status, 0: no answer; of the time
#: it took: the TCP connect, the TLS handshake, and the probe thread's own wait for a CPU; and, as the server's
#: Server-Timing header says for a scrape, its token review and its collection, 0 without one), so that a slow
#: probe says where its time went.
Sample = tuple[float, float, int, float, float, float, float, float]


def probe(port: int, token: str, connection: Connection, probe_port: int | None = None) -> None:
    """The probe process: request until told to stop, then send back the samples of (/healthz on the probe port
    over http, as the kubelet probes; /healthz on the metrics port over https; /metrics). Without a probe port,
    the first list is empty."""
    os.setsid()  # a CPU share of its own where the kernel groups CPU time by session, as a kubelet has
    stop = threading.Event()
    probes: list[Sample] = []
    healthz: list[Sample] = []
    scrapes: list[Sample] = []
    threads = [
        threading.Thread(target=_loop, args=(port, "/healthz", None, PROBE_INTERVAL, stop, healthz), daemon=True),
        threading.Thread(target=_loop, args=(port, "/metrics", token, SCRAPE_INTERVAL, stop, scrapes), daemon=True),
    ]
    if probe_port:
        probing = (probe_port, "/healthz", None, PROBE_INTERVAL, stop, probes, False)
        threads.append(threading.Thread(target=_loop, args=probing, daemon=True))
    for thread in threads:
        thread.start()
    with contextlib.suppress(KeyboardInterrupt, EOFError):
        connection.recv()
    stop.set()
    for thread in threads:
        thread.join(TIMEOUT + 1)
    connection.send((probes, healthz, scrapes))


def _loop(
    port: int, path: str, token: str | None, interval: float, stop: threading.Event, samples: list[Sample], tls: bool = True
) -> None:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the controller's certificate is self-signed
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    tid = threading.get_native_id()
    while not stop.is_set():
        sent = time.monotonic()
        waited = _runqueue_wait(tid)
        status = 0
        connected = handshaken = sent
        server_phases = (0.0, 0.0)
        try:
            client = http.client.HTTPSConnection("127.0.0.1", port, timeout=TIMEOUT, context=context)
            try:
                client.sock = socket.create_connection(("127.0.0.1", port), TIMEOUT)
                connected = time.monotonic()
                if tls:
                    client.sock = context.wrap_socket(client.sock, server_hostname="127.0.0.1")
                handshaken = time.monotonic()
                client.request("GET", path, headers=headers)
                response = client.getresponse()
                response.read()
                status = response.status
                timing = read_server_timing(response.getheader("Server-Timing") or "")
                server_phases = (timing.get("review", 0.0), timing.get("collect", 0.0))
            finally:
                client.close()
        except (OSError, http.client.HTTPException):
            pass
        took = time.monotonic() - sent
        phases = (round(connected - sent, 4), round(max(0.0, handshaken - connected), 4), round(_runqueue_wait(tid) - waited, 4))
        samples.append((sent, min(took, TIMEOUT) if status else TIMEOUT, status, *phases, *server_phases))
        stop.wait(max(0.0, interval - took))


def _runqueue_wait(tid: int) -> float:
    """Seconds thread `tid` of this process has been runnable but waiting for a CPU, so far."""
    try:
        with open(f"/proc/self/task/{tid}/schedstat") as file:
            return int(file.read().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0
