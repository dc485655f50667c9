"""Lease-based leader election (coordination.k8s.io/v1), as client-go does it.

Only the leader watches and allocates. Expiry is judged by this process's own
clock from when it last saw the lease change, never by comparing timestamps
written by another machine, so clock skew cannot hand the lease to two.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
import uuid
from typing import Any

from controller.config import LeaderElection
from controller.kube import ApiError, KubeClient, lease_time

logger = logging.getLogger("nodeipam.leader")


def default_identity() -> str:
    """hostname_uuid, like kube-controller-manager: unique even for two processes on one host."""
    return f"{socket.gethostname()}_{uuid.uuid4()}"


class LeaderElector:
    """Acquire, hold and release one Lease."""

    def __init__(self, kube: KubeClient, config: LeaderElection) -> None:
        self.kube = kube
        self.config = config
        self.identity = config.identity or default_identity()
        self._observed: tuple[str, str] | None = None  # (holder, renewTime) last seen
        self._observed_at = 0.0

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
        while not await self._try_acquire_or_renew():
            await asyncio.sleep(self.config.retry_period)
        logger.info("became the leader (%s)", self.identity)
        return True

    async def hold(self) -> None:
        """Renew until a renewal fails for longer than the renew deadline; then return."""
        if not self.config.enabled:
            await asyncio.Event().wait()
        last_renewed = time.monotonic()
        while True:
            await asyncio.sleep(self.config.retry_period)
            if await self._try_acquire_or_renew():
                last_renewed = time.monotonic()
            elif time.monotonic() - last_renewed > self.config.renew_deadline:
                logger.error("failed to renew the lease within %.0fs; leadership lost", self.config.renew_deadline)
                return

    async def release(self) -> None:
        """Hand the lease back on a clean shutdown, so a standby takes over at once."""
        if not self.config.enabled:
            return
        try:
            lease = await self.kube.get_lease(self.config.resource_namespace, self.config.resource_name)
            if lease is None or lease.get("spec", {}).get("holderIdentity") != self.identity:
                return
            lease["spec"].update({"holderIdentity": "", "leaseDurationSeconds": 1, "renewTime": lease_time()})
            await self.kube.replace_lease(self.config.resource_namespace, self.config.resource_name, lease)
            logger.info("released the lease")
        except ApiError as error:
            logger.warning("could not release the lease: %s", error)

    async def _try_acquire_or_renew(self) -> bool:
        namespace, name = self.config.resource_namespace, self.config.resource_name
        now = lease_time()
        try:
            lease = await self.kube.get_lease(namespace, name)
            if lease is None:
                await self.kube.create_lease(namespace, self._new_lease(now))
                return True
            spec: dict[str, Any] = lease.setdefault("spec", {})
            holder = spec.get("holderIdentity") or ""
            record = (holder, str(spec.get("renewTime", "")))
            if record != self._observed:
                self._observed, self._observed_at = record, time.monotonic()
            duration = float(spec.get("leaseDurationSeconds") or self.config.lease_duration)
            expired = time.monotonic() > self._observed_at + duration
            if holder and holder != self.identity and not expired:
                return False
            if holder != self.identity:
                spec["acquireTime"] = now
                spec["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + 1
            spec.update(
                holderIdentity=self.identity,
                leaseDurationSeconds=int(self.config.lease_duration),
                renewTime=now,
            )
            await self.kube.replace_lease(namespace, name, lease)
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
