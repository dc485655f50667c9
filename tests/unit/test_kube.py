"""Pure helpers of the I/O layer."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from controller.kubehttp import RateLimiter
from controller.kubewire import decode_node, node_of, peek_continue
from controller.model import NodeInfo


@pytest.mark.parametrize(
    ("raw", "token"),
    [
        pytest.param(
            b'{"kind":"NodeList","metadata":{"resourceVersion":"9","continue":"eyJ2IjoibWV0YS5rOHMuaW8vdjEifQ"},"items":[]}',
            "eyJ2IjoibWV0YS5rOHMuaW8vdjEifQ",
            id="token",
        ),
        pytest.param(b'{"kind":"NodeList","metadata":{"resourceVersion":"9"},"items":[]}', None, id="last-page"),
        pytest.param(
            b'{"kind":"NodeList","metadata":{},"items":[{"metadata":{"annotations":{"x":"\\"continue\\":\\"evil\\""}}}]}',
            None,
            id="not-inside-items",
        ),
        pytest.param(b'{"kind":"NodeList","metadata":{"continue":"abc=="}}', "abc==", id="no-items-key"),
    ],
)
def test_peek_continue_reads_only_the_list_metadata(raw: bytes, token: str | None) -> None:
    assert peek_continue(raw) == token


class FakeClock:
    """Monotonic time that moves only when the limiter sleeps."""

    def __init__(self) -> None:
        self.now = 100.0
        self.waits: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.now += seconds


def test_rate_limiter_gives_the_burst_at_once_then_qps() -> None:
    clock = FakeClock()
    limiter = RateLimiter(qps=4, burst=3, clock=clock, sleep=clock.sleep)

    async def acquire_all(count: int) -> list[float]:
        granted = []
        for _ in range(count):
            await limiter.acquire()
            granted.append(clock.now - 100.0)
        return granted

    granted = asyncio.run(acquire_all(7))
    assert granted == pytest.approx([0, 0, 0, 0.25, 0.5, 0.75, 1.0])
    clock.now += 10  # idle: the bucket refills to the burst, not beyond
    waits_before = len(clock.waits)
    asyncio.run(acquire_all(3))
    assert len(clock.waits) == waits_before
    asyncio.run(acquire_all(1))
    assert clock.waits[waits_before:] == [pytest.approx(0.25)]


def test_rate_limiter_off_never_waits() -> None:
    clock = FakeClock()
    limiter = RateLimiter(qps=0, burst=0, clock=clock, sleep=clock.sleep)

    async def go() -> None:
        for _ in range(10_000):
            await limiter.acquire()

    asyncio.run(go())
    assert clock.waits == []


@pytest.mark.parametrize(
    ("raw", "labels"),
    [
        pytest.param(
            b'{"metadata":{"name":"a","labels":{"gpu":"true","zone":"b"}},"spec":{"podCIDR":"10.0.0.0/24"}}',
            (("gpu", "true"), ("zone", "b")),
            id="ipv4-labelled",
        ),
        pytest.param(b'{"metadata":{"name":"a"},"spec":{"podCIDRs":["fd00::/64"]}}', (), id="ipv6-no-labels"),
    ],
)
def test_node_decoding_keeps_the_labels_whether_from_bytes_or_from_a_decoded_body(
    raw: bytes, labels: tuple[tuple[str, str], ...]
) -> None:
    decoded = decode_node(raw).info()
    assert decoded.labels == labels
    assert decoded == node_of(json.loads(raw))


def test_node_decoding_prefers_pod_cidrs_and_falls_back_to_pod_cidr() -> None:
    body: dict[str, Any] = {"metadata": {"name": "a", "uid": "u", "resourceVersion": "7"}, "spec": {"podCIDR": "10.0.0.0/24"}}
    assert node_of(body) == NodeInfo("a", "u", ("10.0.0.0/24",), "10.0.0.0/24")
    body["spec"] = {"podCIDR": "10.0.0.0/24", "podCIDRs": ["10.0.0.0/24", "fd00::/64"]}
    assert node_of(body).pod_cidrs == ("10.0.0.0/24", "fd00::/64")
    assert node_of({"metadata": {"name": "b"}}).pod_cidrs == ()
    assert decode_node(json.dumps(body).encode()).info() == node_of(body)
