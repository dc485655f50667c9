"""The record of podCIDR patches in flight: its encoding, and announcements sharing one Lease write."""

from __future__ import annotations

import asyncio

import pytest

from controller.inflight import ANNOTATION, MAX_RECORD_BYTES, InFlight, InFlightLog, decode, encode

ENTRIES = [
    pytest.param([InFlight("node-b", "uid-b", ("10.244.1.0/24",)), InFlight("node-a", "uid-a", ("10.244.0.0/24",))], id="ipv4"),
    pytest.param([InFlight("node-a", "uid-a", ("fd00:10:244::/64",))], id="ipv6"),
    pytest.param([InFlight("node-a", "uid-a", ("10.244.0.0/24", "fd00:10:244::/64"))], id="dual-stack"),
    pytest.param([], id="empty"),
]


@pytest.mark.parametrize("entries", ENTRIES)
def test_a_record_decodes_to_what_was_encoded(entries: list[InFlight]) -> None:
    decoded, problem = decode(encode(entries))
    assert (decoded, problem) == (sorted(entries, key=lambda entry: entry.name), "")


@pytest.mark.parametrize(
    ("text", "kept", "problem"),
    [
        pytest.param("", 0, "", id="absent"),
        pytest.param("{not json", 0, "not JSON", id="not-json"),
        pytest.param('{"a": 1}', 0, "not a list but dict", id="not-a-list"),
        pytest.param('[["a", "u", ["10.0.0.0/24"]], ["b", 7, []], "x"]', 1, "2 malformed entries skipped", id="ipv4-partly-bad"),
        pytest.param('[["a", "u", ["fd00::/64"]], ["b", "u", "fd00:1::/64"]]', 1, "1 malformed", id="ipv6-partly-bad"),
    ],
)
def test_a_malformed_record_never_raises(text: str, kept: int, problem: str) -> None:
    entries, found = decode(text)
    assert len(entries) == kept and found.startswith(problem)


class Lease:
    """Records each write; holds them while `gate` is clear; answers `result`."""

    def __init__(self) -> None:
        self.written: list[str] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.result = True

    async def write(self, key: str, value: str) -> bool:
        assert key == ANNOTATION
        await self.gate.wait()
        self.written.append(value)
        return self.result


@pytest.mark.parametrize("cidr", [pytest.param("10.244.0.0/24", id="ipv4"), pytest.param("fd00:10:244::/64", id="ipv6")])
def test_announcements_made_while_a_write_is_on_its_way_share_the_next_one(cidr: str) -> None:
    async def go() -> None:
        lease, open_now = Lease(), [InFlight("first", "u1", (cidr,))]
        log = InFlightLog(lease.write, lambda: list(open_now), lambda: True)
        lease.gate.clear()
        first = asyncio.ensure_future(log.announce())
        for _ in range(5):  # until the first write is on its way
            await asyncio.sleep(0)
        # Reserved while the first write is on its way: that write cannot carry them; the next one does.
        open_now += [InFlight(f"later-{i}", f"u{i}", (cidr,)) for i in range(10)]
        later = [asyncio.ensure_future(log.announce()) for _ in range(10)]
        await asyncio.sleep(0)
        lease.gate.set()
        assert await first and all(await asyncio.gather(*later))
        assert len(lease.written) == 2, "ten announcements, one write"
        assert [entry.name for entry in decode(lease.written[0])[0]] == ["first"]
        assert len(decode(lease.written[1])[0]) == 11

    asyncio.run(go())


@pytest.mark.parametrize(
    ("result", "open_now"),
    [
        pytest.param(False, [InFlight("a", "u", ("10.244.0.0/24",))], id="ipv4-refused"),
        pytest.param(False, [InFlight("a", "u", ("fd00:10:244::/64",))], id="ipv6-refused"),
        pytest.param(True, [InFlight(f"node-{i:05}", f"uid-{i}", ("fd00:10:244::/64",)) for i in range(8000)], id="too-big"),
    ],
)
def test_an_announcement_not_recorded_says_so(result: bool, open_now: list[InFlight]) -> None:
    async def go() -> None:
        lease = Lease()
        lease.result = result
        log = InFlightLog(lease.write, lambda: open_now, lambda: True)
        assert not await log.announce()
        if len(encode(open_now)) > MAX_RECORD_BYTES:
            assert lease.written == [], "too big a record is not sent"

    asyncio.run(go())
