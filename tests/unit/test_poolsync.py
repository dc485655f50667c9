"""A NodeCIDRPool's metadata, read once into a typed value (the pools' sync itself: test_reconciler, test_pool_usage)."""

from __future__ import annotations

from controller.poolsync import POOL_FINALIZER, PoolObject


def test_a_pool_object_reads_what_the_sync_needs_of_its_metadata() -> None:
    body = {
        "metadata": {
            "name": "p",
            "uid": "u1",
            "resourceVersion": "42",
            "finalizers": ["other", POOL_FINALIZER],
            "deletionTimestamp": "2026-01-01T00:00:00Z",
        },
        "status": {"conditions": []},
    }
    pool = PoolObject.from_body(body)
    assert (pool.name, pool.uid, pool.resource_version) == ("p", "u1", "42")
    assert pool.finalizers == ("other", POOL_FINALIZER)
    assert pool.deleting
    assert pool.status == {"conditions": []}
    assert pool.body is body


def test_a_pool_object_of_a_body_without_metadata_is_empty_not_an_error() -> None:
    pool = PoolObject.from_body({"metadata": None})
    assert (pool.name, pool.uid, pool.resource_version, pool.finalizers, pool.deleting) == ("", "", "", (), False)
    assert pool.status is None
