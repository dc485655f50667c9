"""Serving /metrics the way kube-controller-manager serves its secure port, within bounds.

HTTPS, with a certificate from files or, without them, a self-signed one made in memory at start-up.
Paths outside the always-allowed list (health probes by default) need a bearer token that the API
server authenticates (TokenReview) and authorizes (SubjectAccessReview on the non-resource path), with
the controller's own credentials. Review answers are cached briefly so that scrapes do not load the API.

The port listens on the host network, so anyone who reaches the node can flood it. Connections are
accepted here, within ServingLimits, before their TLS handshake costs memory; reviews wait in a bounded
queue where a token accepted lately goes first, identical tokens share one review, and a review nobody
waits for any more is called off.

This module imports neither aiohttp nor the Kubernetes client: the HTTP protocol comes from its caller,
and the reviews go through any object with KubeClient's `request` method.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import datetime
import functools
import hashlib
import logging
import os
import socket
import ssl
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Hashable, Iterator, Mapping
from typing import Any, Generic, Protocol, TypeVar, cast

logger = logging.getLogger("nodeipam.server")

DEFAULT_ALWAYS_ALLOW_PATHS = ("/healthz", "/readyz", "/livez")
REVIEW_CACHE_SECONDS = 10.0
TOKEN_REVIEWS = "/apis/authentication.k8s.io/v1/tokenreviews"
ACCESS_REVIEWS = "/apis/authorization.k8s.io/v1/subjectaccessreviews"

# -- Limits --------------------------------------------------------------------------

#: Connections open at once, handshakes included. asyncio gives every TLS connection a 256 KiB buffer,
#: about 0.3 MiB each with the rest, so 128 hold ~40 MiB, well inside the chart's memory limit; a
#: Prometheus or two and the kubelet's probes need a handful.
MAX_CONNECTIONS = 128
#: TLS handshakes in progress at once. Past it the oldest is dropped for the new one, so that connections
#: that never send a ClientHello cannot shut out a client whose handshake takes milliseconds.
MAX_HANDSHAKES = 32
#: A handshake not done by then is dropped (asyncio's default is a minute); a local one takes milliseconds.
HANDSHAKE_TIMEOUT_SECONDS = 5.0
#: How long a closing connection may wait for the client's TLS close_notify (asyncio's default: 30 s).
TLS_SHUTDOWN_TIMEOUT_SECONDS = 2.0
#: A connection with no request is closed after this long. It is also the time a request's head has to
#: arrive in (aiohttp's keep-alive timer runs until a whole head is read), so a client sending its headers
#: a byte at a time is cut off too. Prometheus scrapes every 15-60 s; a new connection then costs one handshake.
IDLE_TIMEOUT_SECONDS = 10.0
#: Headers in one request: a scrape or a probe sends fewer than ten; aiohttp's default, 128 of up to
#: 8 KiB, lets one request hold a MiB.
MAX_REQUEST_HEADERS = 32
#: Reviews at the API server at once; the review client has as many connections (controller.lifecycle).
REVIEWS_IN_FLIGHT = 2
#: Requests waiting for a review of a token not accepted lately; past it 429. A review takes a few
#: milliseconds, so a full queue drains in well under REVIEW_WAIT_SECONDS.
MAX_WAITING_UNKNOWN = 64
#: Requests waiting for a review of a token accepted lately (its cached answer expired); they go first.
#: Prometheus replicas and their retries are a few; more means a flood with a valid token.
MAX_WAITING_KNOWN = 16
#: The longest a request waits for its reviews, queue included, before 503: below Prometheus's default
#: scrape timeout (10 s), so that the scraper learns why.
REVIEW_WAIT_SECONDS = 5.0
#: Retry-After of a 429 or 503 from the review queue: about the time a full queue takes to drain.
RETRY_AFTER_SECONDS = 1
#: A token accepted within this time goes first in the queue. A projected ServiceAccount token (an hour by
#: default) is renewed after ~48 min, so a scraper's token stays known while it is used.
KNOWN_TOKEN_SECONDS = 3600.0
#: Cache sizes: about 300 bytes an entry. Rejected tokens have a cache of their own, so that random ones
#: cannot push accepted ones out.
CACHED_USERS = 1024
CACHED_REJECTED_TOKENS = 1024
CACHED_ACCESS_DECISIONS = 1024
KNOWN_TOKENS = 256
#: Connections waiting in the kernel for accept().
LISTEN_BACKLOG = 128
#: After accept() failed (out of file descriptors, say), as asyncio's own servers wait.
ACCEPT_RETRY_SECONDS = 1.0

# Why the port refused or cut short a connection or a request (metrics_port_refused_total{reason}).
REFUSED_CONNECTION_LIMIT = "connection_limit"  # every connection was serving a request: the new one closed
CLOSED_IDLE = "idle_closed"  # the connection idle longest closed for a new one
DROPPED_HANDSHAKE = "handshake_dropped"  # the oldest handshake in progress dropped for a new one
HANDSHAKE_TIMEOUT = "handshake_timeout"
REVIEW_QUEUE_FULL = "review_queue_full"  # 429
REVIEW_TIMEOUT = "review_timeout"  # 503
REFUSAL_REASONS = (
    REFUSED_CONNECTION_LIMIT,
    CLOSED_IDLE,
    DROPPED_HANDSHAKE,
    HANDSHAKE_TIMEOUT,
    REVIEW_QUEUE_FULL,
    REVIEW_TIMEOUT,
)


@dataclasses.dataclass(frozen=True)
class ServingLimits:
    """The bounds of the metrics port (defaults: the constants above; tests shorten the timeouts)."""

    connections: int = MAX_CONNECTIONS
    handshakes: int = MAX_HANDSHAKES
    handshake_timeout: float = HANDSHAKE_TIMEOUT_SECONDS
    tls_shutdown_timeout: float = TLS_SHUTDOWN_TIMEOUT_SECONDS
    idle_timeout: float = IDLE_TIMEOUT_SECONDS
    waiting_unknown: int = MAX_WAITING_UNKNOWN
    waiting_known: int = MAX_WAITING_KNOWN
    review_wait: float = REVIEW_WAIT_SECONDS


@dataclasses.dataclass(frozen=True)
class ServingOptions:
    """--tls-cert-file, --tls-private-key-file and --authorization-always-allow-paths, as KCM names them."""

    tls_cert_file: str | None = None
    tls_private_key_file: str | None = None
    always_allow_paths: tuple[str, ...] = DEFAULT_ALWAYS_ALLOW_PATHS
    limits: ServingLimits = dataclasses.field(default_factory=ServingLimits)


def parse_always_allow_paths(value: str) -> tuple[str, ...]:
    """Comma-separated absolute paths; a trailing "*" allows a prefix (as upstream). Raises ValueError."""
    paths = tuple(path.strip() for path in value.split(",") if path.strip())
    for path in paths:
        if not path.startswith("/") or "*" in path[:-1]:
            raise ValueError(f'{path!r} is not an absolute path (a "*" may only end it)')
    return paths


def is_always_allowed(path: str, allowed: tuple[str, ...]) -> bool:
    return any(path.startswith(rule[:-1]) if rule.endswith("*") else path == rule for rule in allowed)


def _ignore_refusal(reason: str) -> None:
    """What a refusal does when nobody counts them."""


# -- Certificates ------------------------------------------------------------------


def server_ssl_context(options: ServingOptions) -> ssl.SSLContext:
    """TLS from the files given, else from a fresh self-signed certificate (nothing written to disk survives)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if options.tls_cert_file and options.tls_private_key_file:
        context.load_cert_chain(options.tls_cert_file, options.tls_private_key_file)
        return context
    cert_pem, key_pem = self_signed_certificate(socket.gethostname())
    # ssl can only load a chain from files: write them to a private temporary directory, then delete it.
    with tempfile.TemporaryDirectory(prefix="nodeipam-tls-") as directory:
        cert_path, key_path = os.path.join(directory, "tls.crt"), os.path.join(directory, "tls.key")
        for path, pem in ((cert_path, cert_pem), (key_path, key_pem)):
            with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as file:
                file.write(pem)
        context.load_cert_chain(cert_path, key_path)
    return context


def self_signed_certificate(host: str) -> tuple[bytes, bytes]:
    """A one-year ECDSA P-256 certificate for host, localhost, 127.0.0.1 and ::1 (PEM cert, PEM key)."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{host}@{int(time.time())}")])
    now = datetime.datetime.now(datetime.UTC)
    names: list[x509.GeneralName] = [x509.DNSName(host), x509.DNSName("localhost")]
    names += [x509.IPAddress(ipaddress.ip_address(address)) for address in ("127.0.0.1", "::1")]
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return certificate.public_bytes(serialization.Encoding.PEM), key_pem


# -- Connections ---------------------------------------------------------------------


class GuardedListener:
    """Accepts the port's TLS connections within ServingLimits, for an HTTP protocol (aiohttp's, in server.py).

    Accepting here rather than through asyncio's server decides before the TLS handshake, which is what
    costs memory. Past `connections` the connection idle longest is closed for the new one; only when
    every connection is serving a request is the new one refused (reset, before any TLS). Past
    `handshakes` the oldest handshake in progress is dropped for the new one.
    """

    def __init__(
        self,
        protocol_factory: Callable[[], asyncio.Protocol],
        ssl_context: ssl.SSLContext,
        limits: ServingLimits,
        refused: Callable[[str], None] = _ignore_refusal,
    ) -> None:
        self._protocol_factory = protocol_factory
        self._ssl_context = ssl_context
        self.limits = limits
        self._refused = refused
        self._sockets: list[socket.socket] = []
        self._acceptors: list[asyncio.Task[None]] = []
        self._handshakes: dict[asyncio.Task[None], None] = {}  # oldest first
        self._connections: dict[asyncio.Transport, None] = {}  # least recently active first
        self._serving: set[asyncio.BaseTransport] = set()  # connections with a request in progress

    @property
    def ports(self) -> list[int]:
        """The ports listened on (the one asked for, or those the system chose for port 0)."""
        return [int(listening.getsockname()[1]) for listening in self._sockets]

    @property
    def open_connections(self) -> int:
        """Connections held, handshakes in progress included."""
        return len(self._handshakes) + len(self._connections)

    async def start(self, host: str, port: int) -> None:
        """Listen on every address `host` resolves to, as asyncio's create_server does (IPv6 only on IPv6)."""
        loop = asyncio.get_running_loop()
        found = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        try:
            for family, kind, protocol, _, address in dict.fromkeys(found):
                listening = socket.socket(family, kind, protocol)
                self._sockets.append(listening)
                listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    listening.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                listening.bind(address)
                listening.listen(LISTEN_BACKLOG)
                listening.setblocking(False)
        except OSError:
            await self.close()
            raise
        self._acceptors = [asyncio.ensure_future(self._accept(listening)) for listening in self._sockets]

    async def close(self) -> None:
        """Stop accepting and drop the handshakes in progress; open connections are the HTTP server's to close."""
        tasks = [*self._acceptors, *self._handshakes]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for listening in self._sockets:
            listening.close()
        self._sockets.clear()
        self._acceptors.clear()

    @contextlib.contextmanager
    def serving(self, transport: asyncio.BaseTransport | None) -> Iterator[None]:
        """While a request is served on `transport`: it is not closed to make room, then counts as the most recently active."""
        connection = cast(asyncio.Transport, transport)
        if connection not in self._connections:  # gone already, or not one of ours (a test server's)
            yield
            return
        self._serving.add(connection)
        try:
            yield
        finally:
            self._serving.discard(connection)
            if connection in self._connections:
                del self._connections[connection]
                self._connections[connection] = None

    async def _accept(self, listening: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                connection, _ = await loop.sock_accept(listening)
            except OSError as error:
                logger.warning("the metrics port could not accept a connection: %s", error)
                await asyncio.sleep(ACCEPT_RETRY_SECONDS)
                continue
            try:
                self._admit(connection)
            except Exception:  # whatever one connection does, the port keeps accepting
                logger.exception("could not take a connection on the metrics port")
                connection.close()

    def _admit(self, connection: socket.socket) -> None:
        """Start the handshake of a new connection, or refuse it: before any TLS, so it costs next to nothing."""
        if len(self._handshakes) >= self.limits.handshakes:
            oldest = next(iter(self._handshakes))
            del self._handshakes[oldest]
            oldest.cancel()
            self._refused(DROPPED_HANDSHAKE)
        elif self.open_connections >= self.limits.connections and not self._close_an_idle_connection():
            _reset(connection)
            self._refused(REFUSED_CONNECTION_LIMIT)
            return
        connection.setblocking(False)
        handshake = asyncio.ensure_future(self._handshake(connection))
        self._handshakes[handshake] = None
        handshake.add_done_callback(functools.partial(self._handshake_done, connection))

    async def _handshake(self, connection: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            await loop.connect_accepted_socket(
                lambda: _Tracked(self._protocol_factory(), self._opened, self._lost),
                connection,
                ssl=self._ssl_context,
                ssl_handshake_timeout=self.limits.handshake_timeout,
                ssl_shutdown_timeout=self.limits.tls_shutdown_timeout,
            )
        except OSError as error:  # a failed or timed-out handshake (ssl.SSLError is an OSError)
            connection.close()
            if loop.time() - started >= self.limits.handshake_timeout:
                self._refused(HANDSHAKE_TIMEOUT)
            logger.debug("TLS handshake on the metrics port failed: %s", error)

    def _handshake_done(self, connection: socket.socket, handshake: asyncio.Task[None]) -> None:
        self._handshakes.pop(handshake, None)
        if handshake.cancelled():  # dropped, perhaps before it began: the socket is still ours to close
            connection.close()
        elif handshake.exception() is not None:
            logger.error("TLS handshake on the metrics port: %r", handshake.exception())
            connection.close()

    def _opened(self, transport: asyncio.Transport) -> None:
        self._connections[transport] = None

    def _lost(self, transport: asyncio.Transport) -> None:
        self._connections.pop(transport, None)
        self._serving.discard(transport)

    def _close_an_idle_connection(self) -> bool:
        """Abort the connection idle longest, one already closing first; False when all are serving requests."""
        idle = [transport for transport in self._connections if transport not in self._serving]
        if not idle:
            return False
        chosen = next((transport for transport in idle if transport.is_closing()), idle[0])
        del self._connections[chosen]  # its connection_lost follows once the socket is closed
        chosen.abort()
        self._refused(CLOSED_IDLE)
        return True


def _reset(connection: socket.socket) -> None:
    """Close with a TCP reset: nothing kept for the refused client, no TIME_WAIT."""
    with contextlib.suppress(OSError):
        connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    connection.close()


class _Tracked(asyncio.Protocol):
    """The HTTP protocol of one connection, with the listener told when the connection opens and when it is gone."""

    def __init__(
        self,
        inner: asyncio.Protocol,
        opened: Callable[[asyncio.Transport], None],
        lost: Callable[[asyncio.Transport], None],
    ) -> None:
        self.inner = inner
        self._opened = opened
        self._lost = lost
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # a TLS stream: asyncio's _SSLProtocolTransport
        self._opened(self._transport)
        self.inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._transport is not None:
            self._lost(self._transport)
        self.inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()


# -- Delegated authentication and authorization -----------------------------------------


class ReviewAPI(Protocol):
    """What the reviews need of controller.kube.KubeClient."""

    async def request(self, method: str, path: str, *, body: Any = None) -> Any: ...


@dataclasses.dataclass(frozen=True)
class Decision:
    """The HTTP status to answer (200: go on), why, and for a 429 or 503 when to come back."""

    status: int
    reason: str
    retry_after: int | None = None


@dataclasses.dataclass(frozen=True)
class _User:
    name: str
    uid: str
    groups: tuple[str, ...]
    extra: tuple[tuple[str, tuple[str, ...]], ...]


K = TypeVar("K", bound=Hashable)
V = TypeVar("V")
T = TypeVar("T")


class TTLCache(Generic[K, V]):
    """At most `size` entries, each for `ttl` seconds; the least recently used goes first. O(1) a call."""

    def __init__(self, size: int, ttl: float) -> None:
        self.size = size
        self.ttl = ttl
        self._entries: collections.OrderedDict[K, tuple[float, V]] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: K, now: float) -> V | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        expiry, value = entry
        if expiry <= now:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return value

    def put(self, key: K, value: V, now: float) -> None:
        self._entries[key] = (now + self.ttl, value)
        self._entries.move_to_end(key)
        if len(self._entries) > self.size:
            self._entries.popitem(last=False)


class _ReviewSlots:
    """At most `size` reviews at the API server at once; when one is free, a known token's review goes first."""

    def __init__(self, size: int) -> None:
        self._free = size
        # Waiters, known tokens' first; there are waiters only while no slot is free.
        self._queues: tuple[collections.deque[asyncio.Future[None]], ...] = (collections.deque(), collections.deque())

    @contextlib.asynccontextmanager
    async def taken(self, known: bool) -> AsyncIterator[None]:
        await self._acquire(known)
        try:
            yield
        finally:
            self._release()

    async def _acquire(self, known: bool) -> None:
        if self._free > 0:
            self._free -= 1
            return
        queue = self._queues[0 if known else 1]
        waiter = asyncio.get_running_loop().create_future()
        queue.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._release()  # handed a slot as it was cancelled: pass it on
            else:
                with contextlib.suppress(ValueError):
                    queue.remove(waiter)
            raise

    def _release(self) -> None:
        for queue in self._queues:
            while queue:
                waiter = queue.popleft()
                if not waiter.done():
                    waiter.set_result(None)
                    return
        self._free += 1


@dataclasses.dataclass
class _Flight(Generic[T]):
    """One review under way, and how many requests wait for it."""

    task: asyncio.Task[T]
    waiters: int = 0


class DelegatingAuth:
    """TokenReview then SubjectAccessReview, each answer cached for `ttl` seconds (allowed and denied alike).

    Requests waiting for a review are bounded (429 past it) and wait REVIEW_WAIT_SECONDS at most (503).
    A token accepted within KNOWN_TOKEN_SECONDS goes ahead of the others, so that random tokens cannot
    hold a scraper's back. Requests with the same token share one review, which is called off, queued or
    sent, once none of them waits for it any more (their clients have gone, or they timed out).
    """

    def __init__(
        self,
        reviews: ReviewAPI | None,
        ttl: float = REVIEW_CACHE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        limits: ServingLimits | None = None,
        refused: Callable[[str], None] = _ignore_refusal,
    ):
        self.reviews = reviews
        self.ttl = ttl
        self.clock = clock
        self.limits = limits or ServingLimits()
        self._refused = refused
        # Keyed by a digest, so that tokens are not kept in memory longer than a request.
        self._users: TTLCache[bytes, _User] = TTLCache(CACHED_USERS, ttl)
        self._rejected: TTLCache[bytes, bool] = TTLCache(CACHED_REJECTED_TOKENS, ttl)
        self._access: TTLCache[tuple[_User, str, str], bool] = TTLCache(CACHED_ACCESS_DECISIONS, ttl)
        self._known: TTLCache[bytes, bool] = TTLCache(KNOWN_TOKENS, KNOWN_TOKEN_SECONDS)
        self._slots = _ReviewSlots(REVIEWS_IN_FLIGHT)
        self._token_flights: dict[bytes, _Flight[_User | None]] = {}
        self._access_flights: dict[tuple[_User, str, str], _Flight[bool]] = {}
        self._waiting = {True: 0, False: 0}  # requests waiting for a review, by token known or not

    @property
    def reviews_under_way(self) -> int:
        """Reviews queued or at the API server."""
        return len(self._token_flights) + len(self._access_flights)

    @property
    def waiting_for_review(self) -> int:
        """Requests waiting for a review, queued or sent."""
        return sum(self._waiting.values())

    @property
    def cached_entries(self) -> int:
        """Answers cached, and tokens remembered as accepted lately."""
        return len(self._users) + len(self._rejected) + len(self._access) + len(self._known)

    async def check(self, headers: Mapping[str, str], path: str, method: str) -> Decision:
        if self.reviews is None:
            return Decision(403, "forbidden: no API client to review tokens")
        scheme, _, token = headers.get("Authorization", "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return Decision(401, "unauthorized: a bearer token is required")
        digest = hashlib.sha256(token.encode()).digest()
        known = self._known.get(digest, self.clock()) is not None
        if self._waiting[known] >= (self.limits.waiting_known if known else self.limits.waiting_unknown):
            self._refused(REVIEW_QUEUE_FULL)
            return Decision(429, "too many requests: too many wait for a token review", RETRY_AFTER_SECONDS)
        self._waiting[known] += 1
        deadline = asyncio.timeout(self.limits.review_wait)
        try:
            async with deadline:
                return await self._decide(token, digest, known, path, method.lower())
        except Exception as error:
            if deadline.expired():
                self._refused(REVIEW_TIMEOUT)
                return Decision(503, "service unavailable: the token review did not finish in time", RETRY_AFTER_SECONDS)
            # The API server could not answer: refuse, and cache nothing.
            logger.warning("could not review a request for %s: %s", path, error)
            return Decision(500, "internal error: the API server could not review the request")
        finally:
            self._waiting[known] -= 1

    def cancel_reviews(self) -> None:
        """Call off every review under way (the server stops)."""
        tasks: list[asyncio.Task[Any]] = [flight.task for flight in self._token_flights.values()]
        tasks += [flight.task for flight in self._access_flights.values()]
        for task in tasks:
            task.cancel()

    async def _decide(self, token: str, digest: bytes, known: bool, path: str, verb: str) -> Decision:
        user = await self._authenticate(token, digest, known)
        if user is None:
            return Decision(401, "unauthorized: the token was not accepted")
        if not await self._authorize(user, path, verb):
            return Decision(403, f'forbidden: user "{user.name}" cannot {verb} path "{path}"')
        return Decision(200, "ok")

    async def _authenticate(self, token: str, digest: bytes, known: bool) -> _User | None:
        now = self.clock()
        if self._rejected.get(digest, now):
            return None
        user = self._users.get(digest, now)
        if user is not None:
            return user
        return await self._shared(self._token_flights, digest, lambda: self._review_token(token, digest, known))

    async def _review_token(self, token: str, digest: bytes, known: bool) -> _User | None:
        assert self.reviews is not None
        async with self._slots.taken(known):
            review = await self.reviews.request(
                "POST",
                TOKEN_REVIEWS,
                body={"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": token}},
            )
        status = (review or {}).get("status") or {}
        now = self.clock()
        if not status.get("authenticated"):
            self._rejected.put(digest, True, now)
            return None
        info = status.get("user") or {}
        extra = tuple(sorted((k, tuple(v)) for k, v in (info.get("extra") or {}).items()))
        user = _User(info.get("username", ""), info.get("uid", ""), tuple(info.get("groups") or ()), extra)
        self._users.put(digest, user, now)
        self._known.put(digest, True, now)
        return user

    async def _authorize(self, user: _User, path: str, verb: str) -> bool:
        key = (user, path, verb)
        allowed = self._access.get(key, self.clock())
        if allowed is not None:
            return allowed
        return await self._shared(self._access_flights, key, lambda: self._review_access(key))

    async def _review_access(self, key: tuple[_User, str, str]) -> bool:
        assert self.reviews is not None
        user, path, verb = key
        spec: dict[str, Any] = {
            "user": user.name,
            "groups": list(user.groups),
            "nonResourceAttributes": {"path": path, "verb": verb},
        }
        if user.uid:
            spec["uid"] = user.uid
        if user.extra:
            spec["extra"] = {k: list(v) for k, v in user.extra}
        async with self._slots.taken(known=True):  # an authenticated user: goes first
            review = await self.reviews.request(
                "POST",
                ACCESS_REVIEWS,
                body={"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview", "spec": spec},
            )
        allowed = bool(((review or {}).get("status") or {}).get("allowed"))
        self._access.put(key, allowed, self.clock())
        return allowed

    async def _shared(self, flights: dict[K, _Flight[T]], key: K, review: Callable[[], Coroutine[Any, Any, T]]) -> T:
        """The answer of the review under way for `key`, or of a new one (single flight).

        A review that no request waits for any more is cancelled: still queued, it is never sent.
        """
        flight = flights.get(key)
        if flight is None:
            flight = _Flight(asyncio.ensure_future(review()))
            flights[key] = flight
            flight.task.add_done_callback(functools.partial(_landed, flights, key, flight))
        flight.waiters += 1
        try:
            return await asyncio.shield(flight.task)
        finally:
            flight.waiters -= 1
            if flight.waiters == 0 and not flight.task.done():
                flight.task.cancel()
                if flights.get(key) is flight:
                    del flights[key]


def _landed(flights: dict[K, _Flight[T]], key: K, flight: _Flight[T], task: asyncio.Task[T]) -> None:
    """A review ended: forget it; its error, if any, went to the requests that waited for it."""
    if flights.get(key) is flight:
        del flights[key]
    if not task.cancelled():
        task.exception()  # retrieved: asyncio would log it otherwise when nobody was left to wait
