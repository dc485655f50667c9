"""Read and write etcd keys directly, through etcd's v3 JSON gateway, for tests.

Tests use it to put values into storage that today's API server would refuse
on create or update (data written by older API servers). It only makes sense
against an API server started with `--storage-media-type=application/json`,
so that the stored objects are JSON rather than protobuf.
"""

from __future__ import annotations

import base64
import json
import urllib.request
from collections.abc import Callable
from typing import Any

TIMEOUT = 10.0


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _post(etcd_url: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(
        f"{etcd_url}{path}", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
        answer: dict[str, Any] = json.loads(response.read())
    return answer


def get(etcd_url: str, key: str) -> bytes | None:
    """The value stored under `key`, or None when there is none."""
    answer = _post(etcd_url, "/v3/kv/range", {"key": _b64(key.encode())})
    kvs = answer.get("kvs") or []
    return base64.b64decode(kvs[0]["value"]) if kvs else None


def put(etcd_url: str, key: str, value: bytes) -> None:
    _post(etcd_url, "/v3/kv/put", {"key": _b64(key.encode()), "value": _b64(value)})


def rewrite_json(etcd_url: str, key: str, change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """Read the JSON object under `key`, let `change` edit it in place, write it back; returns what was written."""
    stored = get(etcd_url, key)
    if stored is None:
        raise KeyError(f"etcd has no key {key}")
    if not stored.startswith(b"{"):
        raise ValueError(f"{key} is not stored as JSON (start the API server with --storage-media-type=application/json)")
    document: dict[str, Any] = json.loads(stored)
    change(document)
    put(etcd_url, key, json.dumps(document).encode())
    return document


def node_key(name: str, prefix: str = "/registry") -> str:
    """Where kube-apiserver keeps a Node (its historical resource name is "minions")."""
    return f"{prefix}/minions/{name}"
