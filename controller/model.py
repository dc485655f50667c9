"""The values the I/O layer and the decisions share: a Node as the allocator sees it, what is wrong with one, and
the API's times.

Plain frozen values, and the times written and read as the API does: `kube`
decodes Nodes into them (its one decoder serves reads, its own watch and
kopf's events alike), `nodes` decides on them, and neither has to import the
other for it.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Mapping
from typing import Any

#: Event reason for a podCIDR the controller cannot account for cleanly.
REASON_INVALID_POD_CIDR = "InvalidPodCIDR"
#: Event reason for a podCIDR that another Node holds too.
REASON_DUPLICATE_POD_CIDR = "DuplicatePodCIDR"


@dataclasses.dataclass(frozen=True)
class NodeInfo:
    """The few fields of a Node the allocator needs."""

    name: str
    uid: str
    pod_cidrs: tuple[str, ...] = ()
    pod_cidr: str = ""  # spec.podCIDR as written; must equal pod_cidrs[0]
    labels: tuple[tuple[str, str], ...] = ()  # sorted (key, value) pairs: they choose a pool for a Node without a range

    @property
    def label_map(self) -> dict[str, str]:
        return dict(self.labels)


def labels_of(labels: Mapping[str, Any] | None) -> tuple[tuple[str, str], ...]:
    """A Node's labels as sorted pairs, so that NodeInfo stays a frozen, comparable value."""
    return tuple(sorted((str(key), str(value)) for key, value in (labels or {}).items()))


@dataclasses.dataclass(frozen=True)
class Problem:
    """Something wrong with a Node's podCIDRs, worth a Warning event."""

    reason: str
    message: str


# -- the API's times -------------------------------------------------------------------------------


def api_timestamp() -> str:
    """Now, as the API writes a time to the second (RFC 3339, UTC)."""
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def lease_time() -> str:
    """MicroTime as Leases want it."""
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_api_time(value: Any) -> datetime.datetime | None:
    """A time the API wrote (RFC 3339, "Z" or an offset; none taken as UTC); None when empty or not a time."""
    if not value:
        return None
    try:
        when = datetime.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=datetime.UTC)
