"""The metrics port, served by a process of its own: /metrics, /healthz, /livez and /readyz over HTTPS.

In a burst the controller's main thread holds the interpreter through most of the time, and every thread
of that process waits for it: a scrape served there took 772-897 ms at p99 at 100,000 Nodes (BENCHMARKS.md,
"The probes from a process of their own, at 100,000 Nodes"). This process has an interpreter of its own.
It runs the same HealthServer as before (TLS, token reviews and SubjectAccessReviews with their caps and
caches, connection limits and their 429s), with an API client of its own for the reviews, on sockets the
controller bound and passed on.

What it answers comes from the controller over a socket pair (controller.metrics_frames): once, how to
serve and how to reach the API server; then, every second or so, a frame with the text of /metrics, the
main loop's verdict on its health, whether this replica leads and has rebuilt, and the bearer token to
send (the controller renews it, exec plugins and auth providers included, so that one process alone runs
them). A scrape asks for a frame and waits for it briefly (the controller's `fresh_wait`), then answers the
last frame's text; one with a token accepted lately asks as it arrives, so that the frame comes while its
token is reviewed. /healthz fails once no frame has come for the stall limit.
Each frame is acknowledged with the refusals of the port since the last one, which the controller counts.
This process exits once the controller closes its end (or its end closes because it died).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import functools
import logging
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from controller import metrics_frames
from controller.credentials import Credentials, CredentialsError, RenewingToken, Token
from controller.kube import KubeClient
from controller.secure_serving import REVIEWS_IN_FLIGHT, ServingLimits, ServingOptions
from controller.server import HealthServer

logger = logging.getLogger("nodeipam.server")

#: How long this process waits for the controller's SETUP before it gives up.
SETUP_TIMEOUT_SECONDS = 30.0


class Feed:
    """What the controller last sent, and when: the state the port answers from."""

    def __init__(
        self,
        stall_limit: float,
        clock: Callable[[], float] = time.monotonic,
        ask: Callable[[], None] | None = None,
        fresh_wait: float = 0.0,
    ) -> None:
        """`ask` asks the controller for a frame now (None: scrapes answer the last one at once)."""
        self.stall_limit = stall_limit
        self._clock = clock
        self._ask = ask
        self._fresh_wait = fresh_wait
        self._asked = False  # a frame is asked for and has not come yet
        self._updated = asyncio.Event()  # set by the next frame (a new one per frame)
        self.at = clock()  # the start counts as a frame: the first comes at once
        self.text: bytes | None = None
        self.problem: str | None = None
        self.leading = False
        self.ready = asyncio.Event()
        self.gone = False  # the controller closed its end

    def update(self, header: dict[str, Any], body: bytes) -> None:
        self._asked = False
        self._updated.set()
        self._updated = asyncio.Event()
        self.at = self._clock()
        self.problem = header.get("problem")
        self.leading = bool(header.get("leading"))
        if header.get("ready"):
            self.ready.set()
        if header.get("text", True):
            self.text = body

    def health(self) -> str | None:
        """Why the controller is not alive (None: it is)."""
        if self.gone:
            return "the controller process has stopped"
        quiet = self._clock() - self.at
        if quiet > self.stall_limit:
            return f"the controller has sent nothing for {quiet:.1f}s"
        return self.problem

    def ask_ahead(self) -> Callable[[], Awaitable[bytes]]:
        """Ask for a frame now, for a scrape whose token review is still under way; returns how to collect
        for it: at once if a frame has come by then, so that the review and the frame's wait overlap."""
        self._ask_once()
        return functools.partial(self.collect, next_frame=self._updated)

    async def collect(self, next_frame: asyncio.Event | None = None) -> bytes:
        """The text of the next frame, asked for now (or ahead: `next_frame` is the event it sets, handed out
        then), or of the last one if it does not come within `fresh_wait`."""
        updated = next_frame if next_frame is not None else self._updated
        if self._ask is not None and not self.gone and not updated.is_set():
            self._ask_once()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(updated.wait(), self._fresh_wait)
        if self.text is None:
            raise TimeoutError("no metrics from the controller yet")
        return self.text

    def _ask_once(self) -> None:
        """Ask the controller for a frame, unless one is asked for and has not come yet."""
        if self._ask is not None and not self._asked:
            self._asked = True
            self._ask()


def serving_options(given: dict[str, Any]) -> ServingOptions:
    """The controller's ServingOptions, from their JSON."""
    return ServingOptions(
        tls_cert_file=given.get("tls_cert_file"),
        tls_private_key_file=given.get("tls_private_key_file"),
        always_allow_paths=tuple(given["always_allow_paths"]),
        limits=ServingLimits(**given["limits"]),
    )


def _renewed_by_the_controller() -> Token:
    raise CredentialsError("the controller renews this token and sends it on")


def api_credentials(given: dict[str, Any], token: str | None) -> Credentials:
    """Where the API server is, as the controller found it; the token as it last sent it (kept current by frames)."""
    renewing = RenewingToken(_renewed_by_the_controller, "the controller's token", Token(token)) if token else None
    return Credentials(
        server=given["server"],
        token=token,
        ca_file=given.get("ca_file"),
        cert_file=given.get("cert_file"),
        key_file=given.get("key_file"),
        insecure=bool(given.get("insecure")),
        renewing=renewing,
    )


async def read_message(reader: asyncio.StreamReader) -> tuple[dict[str, Any], bytes] | None:
    """The next message; None once the controller closed its end."""
    try:
        head_length, body_length = metrics_frames.lengths(await reader.readexactly(metrics_frames.PREFIX_BYTES))
        header = metrics_frames.decode_header(await reader.readexactly(head_length))
        body = await reader.readexactly(body_length) if body_length else b""
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    return header, body


async def serve(fd: int, listening_fds: list[int]) -> int:
    """Start from the controller's SETUP, tell it LISTENING (or ERROR), answer from its frames until it closes its end."""
    reader, writer = await asyncio.open_unix_connection(sock=socket.socket(fileno=fd))
    sockets = [socket.socket(fileno=listening) for listening in listening_fds]

    def tell(kind: str, **fields: Any) -> None:
        writer.write(metrics_frames.encode({"kind": kind, **fields}))

    try:
        first = await asyncio.wait_for(read_message(reader), SETUP_TIMEOUT_SECONDS)
    except TimeoutError:
        first = None
    if first is None or first[0]["kind"] != metrics_frames.SETUP:
        logger.error("the controller sent no setup; exiting")
        return 1
    setup = first[0]
    feed = Feed(float(setup["stall_limit"]), ask=lambda: tell(metrics_frames.WANT), fresh_wait=float(setup["fresh_wait"]))
    refusals: collections.Counter[str] = collections.Counter()
    api = setup.get("api")
    credentials = api_credentials(api, setup.get("token")) if api else None
    async with contextlib.AsyncExitStack() as stack:
        reviews = None
        if credentials is not None:
            reviews = await stack.enter_async_context(
                KubeClient(credentials, max_in_flight=REVIEWS_IN_FLIGHT, transient_attempts=1)
            )

        def refused(reason: str) -> None:
            refusals[reason] += 1

        server = HealthServer(
            setup["bind"],
            None,
            serving=serving_options(setup["serving"]),
            reviews=reviews,
            refused=refused,
            collect=feed.collect,
            ask_ahead=feed.ask_ahead,
        )
        server.set_liveness(feed.health)
        try:
            await server.start(sockets)
        except Exception as error:  # a TLS file unreadable, say: the controller says why and stops
            why = f"{type(error).__name__}: {error}"
            serving = server.serving
            if isinstance(error, OSError) and serving.tls_cert_file:  # ssl.SSLError is an OSError
                why += f" (--tls-cert-file={serving.tls_cert_file}, --tls-private-key-file={serving.tls_private_key_file})"
            tell(metrics_frames.ERROR, error=why)
            await writer.drain()
            return 1
        tell(metrics_frames.LISTENING, ports=server.ports)
        try:
            while message := await read_message(reader):
                header, body = message
                if header["kind"] != metrics_frames.FRAME:
                    continue
                feed.update(header, body)
                if feed.leading:
                    server.watch(feed.ready)
                token = header.get("token")
                if token and credentials is not None and credentials.renewing is not None:
                    credentials.renewing.take(Token(token))
                tell(metrics_frames.ACK, seq=header.get("seq"), refused=dict(refusals))
                refusals.clear()
        except metrics_frames.BrokenStream as error:
            logger.error("the controller sent something that is not a message (%s); exiting", error)
        finally:
            feed.gone = True
            await server.stop()
            writer.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m controller.metrics_server", description=__doc__.splitlines()[0])
    parser.add_argument("--fd", type=int, required=True, help="the controller's end of the socket pair")
    parser.add_argument("--listen-fd", type=int, action="append", default=[], help="a socket listening on the port")
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    if args.log_level.lower() != "debug":
        logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    # The controller stops this process by closing its end, once it has stopped itself: a Ctrl-C on a
    # terminal, or a signal to the process group, must not end the port first.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)
    return asyncio.run(serve(args.fd, args.listen_fd))


if __name__ == "__main__":
    sys.exit(main())
