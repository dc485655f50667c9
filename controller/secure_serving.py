"""Serving /metrics the way kube-controller-manager serves its secure port, within bounds.

HTTPS, with a certificate from files or, without them, a self-signed one made in memory at start-up.
Paths outside the always-allowed list (health probes by default) need a bearer token that the API
server authenticates (TokenReview) and authorizes (SubjectAccessReview on the non-resource path), with
the controller's own credentials. Review answers are cached briefly so that scrapes do not load the API.

The port listens on the host network, so anyone who reaches the node can flood it. Connections are
accepted within ServingLimits, before their TLS handshake costs memory (controller.serving_connections);
reviews wait in a bounded queue where a token accepted lately goes first, identical tokens share one
review, and a review nobody waits for any more is called off (controller.serving_reviews). This module
holds what both share: the options, the limits, the certificate.

These modules import neither aiohttp nor the Kubernetes client: the HTTP protocol comes from their
caller, and the reviews go through any object with KubeClient's `request` method.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import os
import socket
import ssl
import tempfile
import time

logger = logging.getLogger("nodeipam.server")

DEFAULT_ALWAYS_ALLOW_PATHS = ("/healthz", "/readyz", "/livez")
#: How long a review's answer is cached: an accepted token and an allowed request for a minute (controller-runtime's
#: metrics filter caches authentication as long; the kubelet, two minutes), so a scraper every 15 s sends its reviews
#: once a minute, not to the API server at its busiest every 10 s; a rejected token and a denied request for 10 s,
#: so that a permission granted is seen soon.
REVIEW_CACHE_SECONDS = 60.0
REVIEW_REFUSAL_CACHE_SECONDS = 10.0
#: An accepted token or an allowed request read from the cache with less than this left is reviewed again in
#: the background, its new answer replacing the old before it expires: a scraper every 30 s or more often never
#: waits for a review after its first.
REVIEW_RENEW_SECONDS = REVIEW_CACHE_SECONDS / 2
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


def ignore_refusal(reason: str) -> None:
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
