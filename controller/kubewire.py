"""What the API's bytes mean to the controller: the Node decoder, the API's errors, a List's continue token.

Kept apart from the requests (kubehttp.py) and the typed verbs (kube.py):
nothing here does I/O, so the decoding is tested on bytes alone.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

import msgspec

from controller.model import NodeInfo, labels_of


class _NodeMetadata(msgspec.Struct, frozen=True):
    name: str = ""
    uid: str = ""
    labels: dict[str, str] = {}  # they choose the pool of a Node without a range


class _NodeSpec(msgspec.Struct, frozen=True):
    podCIDR: str = ""
    podCIDRs: tuple[str, ...] = ()


class WireNode(msgspec.Struct, frozen=True):
    """The only fields of a Node this controller reads; msgspec skips the rest (~10 KB) unparsed.

    The one decoder of Nodes: the API's answers and watch events (bytes),
    and kopf's events (already decoded, through `node_of`) all read through it.
    """

    metadata: _NodeMetadata = _NodeMetadata()
    spec: _NodeSpec = _NodeSpec()

    def info(self) -> NodeInfo:
        spec = self.spec
        return NodeInfo(
            name=self.metadata.name,
            uid=self.metadata.uid,
            pod_cidrs=spec.podCIDRs or ((spec.podCIDR,) if spec.podCIDR else ()),
            pod_cidr=spec.podCIDR,
            labels=labels_of(self.metadata.labels),
        )


class _ListMetadata(msgspec.Struct, frozen=True):
    resourceVersion: str = ""
    continue_: str = msgspec.field(default="", name="continue")


class WireNodeList(msgspec.Struct, frozen=True):
    metadata: _ListMetadata = _ListMetadata()
    items: tuple[WireNode, ...] = ()


class WireWatchEvent(msgspec.Struct, frozen=True):
    type: str = ""
    object: WireNode = WireNode()


decode_node = msgspec.json.Decoder(WireNode).decode
decode_node_list = msgspec.json.Decoder(WireNodeList).decode
decode_watch_event = msgspec.json.Decoder(WireWatchEvent).decode


def node_of(body: Mapping[str, Any]) -> NodeInfo:
    """A Node already decoded into dicts and lists (a kopf event's body), read as the API's bytes are."""
    return msgspec.convert(body, WireNode).info()


class ApiError(Exception):
    """A request the API server answered with an error status (or could not answer)."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message

    @property
    def may_have_applied(self) -> bool:
        """Whether a write that ended in this error may have been applied all the same.

        A lost answer (status 0: connection cut, timeout) or a server error
        (5xx: the request may have been processed before the failure) leaves
        the outcome unknown. Any other 4xx, 429 included, is a refusal: the
        API server applied nothing.
        """
        return self.status == 0 or self.status >= 500


class FencedError(ApiError):
    """A write not sent because the fence said no (this process no longer leads): nothing of it was applied."""

    def __init__(self, method: str, path: str) -> None:
        super().__init__(0, "Fenced", f"{method} {path}: not sent: this process may no longer write")

    @property
    def may_have_applied(self) -> bool:
        return False


def api_error(status: int, payload: bytes) -> ApiError:
    """The error an answer with this status and body stands for (its Status object's reason and message)."""
    try:
        status_body = json.loads(payload)
        return ApiError(status, str(status_body.get("reason", "")), str(status_body.get("message", "")))
    except (ValueError, AttributeError):
        return ApiError(status, "", payload[:500].decode(errors="replace"))


_CONTINUE = re.compile(rb'"continue":"([^"]+)"')
_PEEK_BYTES = 4096  # a List's metadata comes before its items


def peek_continue(raw: bytes) -> str | None:
    """The continue token of a List response, read without parsing its items."""
    head = raw[:_PEEK_BYTES]
    items_at = head.find(b'"items"')
    match = _CONTINUE.search(head, 0, items_at if items_at >= 0 else len(head))
    return match.group(1).decode() if match else None
