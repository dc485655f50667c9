"""Delegated authentication and authorization of /metrics: TokenReview, SubjectAccessReview, within bounds.

Reviews wait in a bounded queue where a token accepted lately goes first; identical tokens share one
review; a review nobody waits for any more is called off; answers are cached, in caches of bounded size.
A token accepted lately whose answers expired has both its reviews sent at once, and answers read from the
cache in the second half of their life are renewed in the background: the round trips to a busy API server,
not their work, are what a scrape waits for.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import logging
import time
from collections.abc import Callable, Hashable, Mapping
from typing import Any, Protocol, TypeVar

from controller.bounded import PrioritySlots, SingleFlights, TTLCache
from controller.secure_serving import (
    ACCESS_REVIEWS,
    CACHED_ACCESS_DECISIONS,
    CACHED_REJECTED_TOKENS,
    CACHED_USERS,
    KNOWN_TOKEN_SECONDS,
    KNOWN_TOKENS,
    RETRY_AFTER_SECONDS,
    REVIEW_CACHE_SECONDS,
    REVIEW_QUEUE_FULL,
    REVIEW_REFUSAL_CACHE_SECONDS,
    REVIEW_RENEW_SECONDS,
    REVIEW_TIMEOUT,
    REVIEWS_IN_FLIGHT,
    TOKEN_REVIEWS,
    ServingLimits,
    ignore_refusal,
)

logger = logging.getLogger("nodeipam.server")


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


class DelegatingAuth:
    """TokenReview then SubjectAccessReview, each answer cached: `ttl` seconds when accepted or allowed,
    `refusal_ttl` when rejected or denied.

    An accepted or allowed answer read with less than `renew_within` seconds left is reviewed again in the
    background (one review a key at a time, nobody waiting for it); a refusal then takes effect at once.
    Requests waiting for a review are bounded (429 past it) and wait REVIEW_WAIT_SECONDS at most (503).
    A token accepted within KNOWN_TOKEN_SECONDS goes ahead of the others, so that random tokens cannot
    hold a scraper's back. Requests with the same token share one review, which is called off, queued or
    sent, once none of them waits for it any more (their clients have gone, or they timed out).
    """

    def __init__(
        self,
        reviews: ReviewAPI | None,
        ttl: float = REVIEW_CACHE_SECONDS,
        refusal_ttl: float = REVIEW_REFUSAL_CACHE_SECONDS,
        renew_within: float = REVIEW_RENEW_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        limits: ServingLimits | None = None,
        refused: Callable[[str], None] = ignore_refusal,
    ):
        self.reviews = reviews
        self.ttl = ttl
        self.refusal_ttl = refusal_ttl
        self.renew_within = renew_within
        self.clock = clock
        self.limits = limits or ServingLimits()
        self._refused = refused
        # Keyed by a digest, so that tokens are not kept in memory longer than a request.
        self._users: TTLCache[bytes, _User] = TTLCache(CACHED_USERS, ttl)
        self._rejected: TTLCache[bytes, bool] = TTLCache(CACHED_REJECTED_TOKENS, refusal_ttl)
        self._access: TTLCache[tuple[_User, str, str], bool] = TTLCache(CACHED_ACCESS_DECISIONS, ttl)
        # Tokens accepted lately, and whose they were: no secret, only what foresees their next review.
        self._known: TTLCache[bytes, _User] = TTLCache(KNOWN_TOKENS, KNOWN_TOKEN_SECONDS)
        self._slots = PrioritySlots(REVIEWS_IN_FLIGHT)
        self._token_flights: SingleFlights[bytes, _User | None] = SingleFlights()
        self._access_flights: SingleFlights[tuple[_User, str, str], bool] = SingleFlights()
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

    def knows(self, headers: Mapping[str, str]) -> bool:
        """Whether the request's token was accepted lately (its review may still be due)."""
        token = _bearer_token(headers)
        return bool(token) and self._known.get(hashlib.sha256(token.encode()).digest(), self.clock()) is not None

    async def check(self, headers: Mapping[str, str], path: str, method: str) -> Decision:
        if self.reviews is None:
            return Decision(403, "forbidden: no API client to review tokens")
        token = _bearer_token(headers)
        if not token:
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
        self._token_flights.cancel_all()
        self._access_flights.cancel_all()

    async def _decide(self, token: str, digest: bytes, known: bool, path: str, verb: str) -> Decision:
        ahead = self._review_access_ahead(digest, path, verb)
        try:
            user = await self._authenticate(token, digest, known)
            if user is None:
                return Decision(401, "unauthorized: the token was not accepted")
            # The same user as foreseen: this joins the review sent ahead (or reads its cached answer).
            if not await self._authorize(user, path, verb):
                return Decision(403, f'forbidden: user "{user.name}" cannot {verb} path "{path}"')
            return Decision(200, "ok")
        finally:
            if ahead is not None:
                ahead.cancel()  # not needed (another user, or rejected), or done: nothing is left waiting for it

    def _review_access_ahead(self, digest: bytes, path: str, verb: str) -> asyncio.Task[None] | None:
        """When the token's TokenReview is due and it was accepted lately, send the SubjectAccessReview of
        its user then alongside it, so that a scrape waits for one round trip, not two.

        Its answer decides only if the TokenReview names the same user again (the single flight is keyed
        by user); for another user it is an answer nobody reads, and it is called off when the request ends.
        """
        now = self.clock()
        foreseen = self._known.get(digest, now)
        if foreseen is None or self._users.get(digest, now) is not None or self._rejected.get(digest, now):
            return None
        if self._access.get((foreseen, path, verb), now) is not None:
            return None

        async def review() -> None:
            with contextlib.suppress(Exception):  # its error, if any, reaches the request that waits for it
                await self._authorize(foreseen, path, verb)

        return asyncio.ensure_future(review())

    async def _authenticate(self, token: str, digest: bytes, known: bool) -> _User | None:
        now = self.clock()
        if self._rejected.get(digest, now):
            return None
        user = self._users.get(digest, now)
        if user is not None:
            if self._due(self._users, digest, now):
                # renewed in the background: its answer replaces this one, a refusal takes effect at once
                self._token_flights.start(digest, lambda: self._review_token(token, digest, known=True))
            return user
        return await self._token_flights.join(digest, lambda: self._review_token(token, digest, known))

    async def _review_token(self, token: str, digest: bytes, known: bool) -> _User | None:
        assert self.reviews is not None
        async with self._slots.taken(first=known):
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
        self._known.put(digest, user, now)
        return user

    async def _authorize(self, user: _User, path: str, verb: str) -> bool:
        key = (user, path, verb)
        now = self.clock()
        allowed = self._access.get(key, now)
        if allowed is not None:
            if allowed and self._due(self._access, key, now):
                self._access_flights.start(key, lambda: self._review_access(key))
            return allowed
        return await self._access_flights.join(key, lambda: self._review_access(key))

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
        async with self._slots.taken(first=True):  # an authenticated user: goes first
            review = await self.reviews.request(
                "POST",
                ACCESS_REVIEWS,
                body={"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview", "spec": spec},
            )
        allowed = bool(((review or {}).get("status") or {}).get("allowed"))
        self._access.put(key, allowed, self.clock(), ttl=None if allowed else self.refusal_ttl)
        return allowed

    def _due(self, cache: TTLCache[K, Any], key: K, now: float) -> bool:
        """Whether a cached answer is in the last `renew_within` seconds of its life."""
        expiry = cache.expiry(key)
        return expiry is not None and expiry - now < self.renew_within


def _bearer_token(headers: Mapping[str, str]) -> str:
    """The request's bearer token ("" without one)."""
    scheme, _, token = headers.get("Authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""
