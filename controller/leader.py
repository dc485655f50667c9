"""Lease-based leader election (coordination.k8s.io/v1), as client-go does it.

Only the leader watches and allocates. Expiry is judged by this process's own
clock from when it last saw the lease change, never by comparing timestamps
written by another machine, so clock skew cannot hand the lease to two.

Two processes must never both believe they lead. A standby takes the lease
only after `lease_duration` without seeing it change; the leader counts its
leadership from the moment it *sent* its last successful renewal (any change
others saw came after that) and gives it up once that is `renew_deadline`
old, which is less than `lease_duration`. Every acquire or renew attempt is
cut off at that deadline, so a hanging request cannot stretch it.

`LeaseKeeper` runs the elector on an event loop of its own, in a thread of its
own: the Node work can keep the main loop busy for seconds (hundreds of
patches in flight on a loaded machine), and a renewal queued behind that would
miss its deadline and end a healthy leadership.

The Lease also carries what the holder may still have in flight
(`write_annotation`): every write of ours to it names the resourceVersion of
our own last write, so once another process has taken the Lease, no such
write of ours can land. A value stored that way is known to the next holder
(`taken_over_annotations`), whatever happens to our other requests in transit.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import copy
import logging
import socket
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import Any, Protocol, TypeVar

from controller.config import LeaderElection
from controller.kube import ApiError
from controller.model import lease_time

logger = logging.getLogger("nodeipam.leader")
T = TypeVar("T")


class LeaseApi(Protocol):
    """The Lease calls of KubeClient; a client of its own, so that Node traffic never delays a renewal."""

    async def get_lease(self, namespace: str, name: str) -> dict[str, Any] | None: ...

    async def create_lease(self, namespace: str, lease: Mapping[str, Any]) -> dict[str, Any]: ...

    async def replace_lease(self, namespace: str, name: str, lease: Mapping[str, Any]) -> dict[str, Any]: ...


def default_identity() -> str:
    """hostname_uuid, like kube-controller-manager: unique even for two processes on one host."""
    return f"{socket.gethostname()}_{uuid.uuid4()}"


class LeaderElector:
    """Acquire, hold and release one Lease; `is_leading()` says whether allocating is safe right now."""

    def __init__(self, kube: LeaseApi, config: LeaderElection, clock: Callable[[], float] = time.monotonic) -> None:
        self.kube = kube
        self.config = config
        self.identity = config.identity or default_identity()
        self._clock = clock
        self._observed: tuple[str, str] | None = None  # (holder, renewTime) last seen
        self._observed_at = 0.0
        self._renew_sent_at: float | None = None  # when the last successful acquire or renewal was sent
        self._lost = False
        self._lost_because = ""
        self._lease: dict[str, Any] | None = None  # the Lease as our last successful write left it
        self._writing = asyncio.Lock()  # one write to the Lease at a time: each names the version the last one left
        self.taken_over_annotations: dict[str, str] = {}  # the Lease's annotations when we took it from its last holder

    def is_leading(self) -> bool:
        """True only while leadership is certain; once False after leading, False for good.

        Certain means: the last successful renewal was sent less than
        `renew_deadline` ago. That holds even while the next renewal hangs,
        and it turns False on time without waiting for that request.
        """
        if not self.config.enabled:
            return True
        if self._lost or self._renew_sent_at is None:
            return False
        if self._clock() - self._renew_sent_at >= self.config.renew_deadline:
            self._lost, self._lost_because = True, f"was not renewed within {self.config.renew_deadline:g}s"
        return not self._lost

    async def acquire(self) -> bool:
        """Block until this process holds the lease (at once when election is off)."""
        if not self.config.enabled:
            return True
        logger.info(
            "waiting for the lease %s/%s as %s",
            self.config.resource_namespace,
            self.config.resource_name,
            self.identity,
        )
        while not await self.try_once():
            await asyncio.sleep(self.config.retry_period)
        logger.info("became the leader (%s)", self.identity)
        return True

    async def hold(self) -> None:
        """Renew every retry period; return as soon as leadership is no longer certain."""
        if not self.config.enabled:
            await asyncio.Event().wait()
        while self.is_leading():
            await asyncio.sleep(min(self.config.retry_period, self._time_left()))
            if self.is_leading():
                await self.try_once()
        logger.error(
            "leadership lost: the lease %s/%s %s", self.config.resource_namespace, self.config.resource_name, self._lost_because
        )

    async def try_once(self) -> bool:
        """One acquire-or-renew attempt, cut off when it could no longer give certain leadership."""
        sent_at = self._clock()
        # A standby's attempt gets the whole renew deadline; a leader's only what is left of its own.
        limit = self._time_left() if self._renew_sent_at is not None else self.config.renew_deadline
        try:
            async with asyncio.timeout(max(limit, 0.0)):
                acquired = await self._try_acquire_or_renew()
        except TimeoutError:
            # The write may still land; leadership is counted only from answered renewals.
            logger.warning(
                "lease %s/%s: no answer within %.1fs", self.config.resource_namespace, self.config.resource_name, limit
            )
            return False
        except Exception:  # a malformed answer must not end the renewals: the deadline decides
            logger.exception("lease %s/%s: unexpected failure", self.config.resource_namespace, self.config.resource_name)
            return False
        if acquired and not self._lost:
            self._renew_sent_at = sent_at
        return acquired

    async def write_annotation(self, key: str, value: str) -> bool:
        """Store `value` under `key` in the Lease's annotations, only while this process holds the Lease.

        The PUT names the resourceVersion our own last write left, so it is
        refused once anyone else has written the Lease. True once the API
        server applied it; False when not leading, when the Lease has another
        holder now, or when no answer came before the renew deadline (such a
        write may still apply, so nothing may rely on it having failed).
        """
        namespace, name = self.config.resource_namespace, self.config.resource_name
        async with self._writing:
            for _ in range(2):  # a second try only after a conflict with a write of our own
                if not self.is_leading() or self._lease is None:
                    return False
                lease = copy.deepcopy(self._lease)
                lease.setdefault("metadata", {}).setdefault("annotations", {})[key] = value
                try:
                    async with asyncio.timeout(self._time_left()):
                        self._lease = await self.kube.replace_lease(namespace, name, lease)
                    return True
                except TimeoutError:
                    logger.warning("lease %s/%s: writing %s got no answer in time", namespace, name, key)
                    return False
                except ApiError as error:
                    if error.status != 409:
                        logger.warning("lease %s/%s: writing %s failed: %s", namespace, name, key, error)
                        return False
                # Changed since our last write: by a write of ours whose answer was lost, or by a new holder.
                try:
                    async with asyncio.timeout(self._time_left()):
                        current = await self.kube.get_lease(namespace, name)
                except (TimeoutError, ApiError) as error:
                    logger.warning("lease %s/%s: re-reading it after a conflict failed: %r", namespace, name, error)
                    return False
                holder = str(((current or {}).get("spec") or {}).get("holderIdentity") or "")
                if holder != self.identity:
                    self._lost, self._lost_because = True, f"is now held by {holder or 'no one'}"
                    return False
                self._lease = current
        return False

    def _time_left(self) -> float:
        """Seconds until the renew deadline of the last successful renewal."""
        if self._renew_sent_at is None:
            return 0.0
        return max(self._renew_sent_at + self.config.renew_deadline - self._clock(), 0.0)

    async def release(self) -> None:
        """Hand the lease back on a clean shutdown, so a standby takes over at once."""
        if not self.config.enabled:
            return
        try:
            async with asyncio.timeout(self.config.renew_deadline), self._writing:
                # Nothing more is written as the holder, whether the release lands or not.
                self._lost, self._lost_because = True, "was released"
                lease = await self.kube.get_lease(self.config.resource_namespace, self.config.resource_name)
                if lease is None or lease.get("spec", {}).get("holderIdentity") != self.identity:
                    return
                # The PUT carries the resourceVersion read: it fails if anyone changed the lease meanwhile. The
                # annotations stay as they are: the next holder reads what may still be in flight from them.
                lease["spec"].update({"holderIdentity": "", "leaseDurationSeconds": 1, "renewTime": lease_time()})
                await self.kube.replace_lease(self.config.resource_namespace, self.config.resource_name, lease)
            logger.info("released the lease")
        except (ApiError, TimeoutError) as error:
            logger.warning("could not release the lease: %r", error)

    async def _try_acquire_or_renew(self) -> bool:
        async with self._writing:
            return await self._acquire_or_renew()

    async def _acquire_or_renew(self) -> bool:
        namespace, name = self.config.resource_namespace, self.config.resource_name
        now = lease_time()
        try:
            lease = await self.kube.get_lease(namespace, name)
            if lease is None:
                self._lease = await self.kube.create_lease(namespace, self._new_lease(now))
                return True
            spec: dict[str, Any] = lease.setdefault("spec", {})
            holder = spec.get("holderIdentity") or ""
            record = (holder, str(spec.get("renewTime", "")))
            if record != self._observed:
                self._observed, self._observed_at = record, self._clock()
            duration = float(spec.get("leaseDurationSeconds") or self.config.lease_duration)
            expired = self._clock() > self._observed_at + duration
            if holder and holder != self.identity and not expired:
                if self._renew_sent_at is not None and not self._lost:
                    # Someone else holds a valid lease: not leading, whatever our clock says.
                    self._lost, self._lost_because = True, f"is now held by {holder}"
                return False
            taking_over = holder != self.identity
            if taking_over:
                spec["acquireTime"] = now
                spec["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + 1
            spec.update(
                holderIdentity=self.identity,
                leaseDurationSeconds=int(self.config.lease_duration),
                renewTime=now,
            )
            # A PUT with the resourceVersion just read: if another candidate wrote first, this is a 409.
            self._lease = await self.kube.replace_lease(namespace, name, lease)
            if taking_over:
                # What the last holder left there: the annotations are carried on as they are, and read once here.
                annotations = (lease.get("metadata") or {}).get("annotations") or {}
                self.taken_over_annotations = {str(key): str(value) for key, value in annotations.items()}
            return True
        except ApiError as error:
            if error.status != 409:
                logger.warning("lease %s/%s: %s", namespace, name, error)
            return False

    def _new_lease(self, now: str) -> dict[str, Any]:
        return {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": self.config.resource_name, "namespace": self.config.resource_namespace},
            "spec": {
                "holderIdentity": self.identity,
                "leaseDurationSeconds": int(self.config.lease_duration),
                "acquireTime": now,
                "renewTime": now,
                "leaseTransitions": 0,
            },
        }


class LeaseKeeper:
    """A LeaderElector on its own thread and event loop; the calls are awaited from the main loop.

    `open_api` is entered on the keeper's loop (an HTTP client must live on the
    loop that uses it) and exited there by `close()`. `is_leading()` is read
    from any thread: it only compares the clock with the last sent renewal.
    """

    def __init__(
        self,
        open_api: Callable[[], contextlib.AbstractAsyncContextManager[LeaseApi]],
        config: LeaderElection,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._open_api = open_api
        self._config = config
        self._clock = clock
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="lease", daemon=True)
        self._stack = contextlib.AsyncExitStack()
        self._elector: LeaderElector | None = None
        self._renewing: asyncio.Future[None] | None = None  # the elector's hold(), on the keeper's loop

    async def __aenter__(self) -> LeaseKeeper:
        self._thread.start()
        await self._run(self._open())
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def elector(self) -> LeaderElector:
        assert self._elector is not None, "use LeaseKeeper as an async context manager"
        return self._elector

    @property
    def identity(self) -> str:
        return self.elector.identity

    def is_leading(self) -> bool:
        return self.elector.is_leading()

    async def acquire(self) -> bool:
        """Block until this process leads; renewals start at once on the keeper's loop."""
        return await self._run(self._acquire_then_renew())

    async def hold(self) -> None:
        """Return as soon as leadership is no longer certain; cancelling it stops the renewals."""
        await self._run(self._renewals())

    async def _acquire_then_renew(self) -> bool:
        acquired = await self.elector.acquire()
        # Started here, not by the caller: a busy main loop must not delay the first renewal either.
        self._renewing = asyncio.ensure_future(self.elector.hold())
        return acquired

    async def _renewals(self) -> None:
        assert self._renewing is not None, "hold() after acquire()"
        await self._renewing

    async def release(self) -> None:
        await self._run(self.elector.release())

    async def write_annotation(self, key: str, value: str) -> bool:
        """`LeaderElector.write_annotation`, on the keeper's loop."""
        return await self._run(self.elector.write_annotation(key, value))

    def taken_over_annotation(self, key: str) -> str:
        """The value under `key` the Lease held when this process took it over ("" if none)."""
        return self.elector.taken_over_annotations.get(key, "")

    async def close(self) -> None:
        """Stop renewing, close the client on the keeper's loop, then stop the loop and the thread."""
        if not self._thread.is_alive():
            return
        if self._renewing is not None:
            self._loop.call_soon_threadsafe(self._renewing.cancel)
        with contextlib.suppress(Exception):
            await self._run(self._stack.aclose())
        self._loop.call_soon_threadsafe(self._loop.stop)
        await asyncio.to_thread(self._thread.join)
        self._loop.close()

    async def _open(self) -> None:
        api = await self._stack.enter_async_context(self._open_api())
        self._elector = LeaderElector(api, self._config, clock=self._clock)

    def _run(self, work: Coroutine[Any, Any, T]) -> Awaitable[T]:
        """Run `work` on the keeper's loop; cancelling the returned awaitable cancels it there."""
        future: concurrent.futures.Future[T] = asyncio.run_coroutine_threadsafe(work, self._loop)
        return asyncio.wrap_future(future)
