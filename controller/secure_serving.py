"""Serving /metrics the way kube-controller-manager serves its secure port.

HTTPS, with a certificate from files or, without them, a self-signed one made in memory at start-up.
Paths outside the always-allowed list (health probes by default) need a bearer token that the API
server authenticates (TokenReview) and authorizes (SubjectAccessReview on the non-resource path), with
the controller's own credentials. Review answers are cached briefly so that scrapes do not load the API.

This module imports neither aiohttp nor the Kubernetes client: the reviews go through any object with
KubeClient's `request` method.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import logging
import os
import socket
import ssl
import tempfile
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

logger = logging.getLogger("nodeipam.server")

DEFAULT_ALWAYS_ALLOW_PATHS = ("/healthz", "/readyz", "/livez")
REVIEW_CACHE_SECONDS = 10.0
TOKEN_REVIEWS = "/apis/authentication.k8s.io/v1/tokenreviews"
ACCESS_REVIEWS = "/apis/authorization.k8s.io/v1/subjectaccessreviews"


@dataclasses.dataclass(frozen=True)
class ServingOptions:
    """--tls-cert-file, --tls-private-key-file and --authorization-always-allow-paths, as KCM names them."""

    tls_cert_file: str | None = None
    tls_private_key_file: str | None = None
    always_allow_paths: tuple[str, ...] = DEFAULT_ALWAYS_ALLOW_PATHS


def parse_always_allow_paths(value: str) -> tuple[str, ...]:
    """Comma-separated absolute paths; a trailing "*" allows a prefix (as upstream). Raises ValueError."""
    paths = tuple(path.strip() for path in value.split(",") if path.strip())
    for path in paths:
        if not path.startswith("/") or "*" in path[:-1]:
            raise ValueError(f'{path!r} is not an absolute path (a "*" may only end it)')
    return paths


def is_always_allowed(path: str, allowed: tuple[str, ...]) -> bool:
    return any(path.startswith(rule[:-1]) if rule.endswith("*") else path == rule for rule in allowed)


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


# -- Delegated authentication and authorization -----------------------------------------


class ReviewAPI(Protocol):
    """What the reviews need of controller.kube.KubeClient."""

    async def request(self, method: str, path: str, *, body: Any = None) -> Any: ...


@dataclasses.dataclass(frozen=True)
class Decision:
    """The HTTP status to answer (200: go on) and why."""

    status: int
    reason: str


@dataclasses.dataclass(frozen=True)
class _User:
    name: str
    uid: str
    groups: tuple[str, ...]
    extra: tuple[tuple[str, tuple[str, ...]], ...]


class DelegatingAuth:
    """TokenReview then SubjectAccessReview, each answer cached for `ttl` seconds (allowed and denied alike)."""

    def __init__(self, reviews: ReviewAPI | None, ttl: float = REVIEW_CACHE_SECONDS, clock: Callable[[], float] = time.monotonic):
        self.reviews = reviews
        self.ttl = ttl
        self.clock = clock
        self._users: dict[str, tuple[float, _User | None]] = {}  # token digest -> (expiry, user or None: rejected)
        self._access: dict[tuple[_User, str, str], tuple[float, bool]] = {}

    async def check(self, headers: Mapping[str, str], path: str, method: str) -> Decision:
        if self.reviews is None:
            return Decision(403, "forbidden: no API client to review tokens")
        scheme, _, token = headers.get("Authorization", "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return Decision(401, "unauthorized: a bearer token is required")
        try:
            user = await self._authenticate(token)
            if user is None:
                return Decision(401, "unauthorized: the token was not accepted")
            verb = method.lower()
            if not await self._authorize(user, path, verb):
                return Decision(403, f'forbidden: user "{user.name}" cannot {verb} path "{path}"')
        except Exception as error:  # the API server could not answer: refuse, and cache nothing
            logger.warning("could not review a request for %s: %s", path, error)
            return Decision(500, "internal error: the API server could not review the request")
        return Decision(200, "ok")

    def _expire(self) -> None:
        now = self.clock()
        self._users = {key: entry for key, entry in self._users.items() if entry[0] > now}
        self._access = {key: entry for key, entry in self._access.items() if entry[0] > now}

    async def _authenticate(self, token: str) -> _User | None:
        self._expire()
        # The cache is keyed by a digest, so that tokens are not kept in memory longer than a request.
        key = hashlib.sha256(token.encode()).hexdigest()
        if key in self._users:
            return self._users[key][1]
        assert self.reviews is not None
        review = await self.reviews.request(
            "POST",
            TOKEN_REVIEWS,
            body={"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": token}},
        )
        status = (review or {}).get("status") or {}
        user: _User | None = None
        if status.get("authenticated"):
            info = status.get("user") or {}
            extra = tuple(sorted((k, tuple(v)) for k, v in (info.get("extra") or {}).items()))
            user = _User(info.get("username", ""), info.get("uid", ""), tuple(info.get("groups") or ()), extra)
        self._users[key] = (self.clock() + self.ttl, user)
        return user

    async def _authorize(self, user: _User, path: str, verb: str) -> bool:
        key = (user, path, verb)
        if key in self._access:
            return self._access[key][1]
        assert self.reviews is not None
        spec: dict[str, Any] = {
            "user": user.name,
            "groups": list(user.groups),
            "nonResourceAttributes": {"path": path, "verb": verb},
        }
        if user.uid:
            spec["uid"] = user.uid
        if user.extra:
            spec["extra"] = {k: list(v) for k, v in user.extra}
        review = await self.reviews.request(
            "POST",
            ACCESS_REVIEWS,
            body={"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview", "spec": spec},
        )
        allowed = bool(((review or {}).get("status") or {}).get("allowed"))
        self._access[key] = (self.clock() + self.ttl, allowed)
        return allowed
