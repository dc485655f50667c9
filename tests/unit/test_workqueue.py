"""The keyed work queue: the latest item per name, one worker per name at a time, nothing lost."""

from __future__ import annotations

import asyncio

import pytest

from controller.workqueue import KeyedQueue


def drain(queue: KeyedQueue[str]) -> list[tuple[str, str]]:
    """Everything ready now, each marked done at once."""

    async def go() -> list[tuple[str, str]]:
        taken = []
        while len(queue):
            name, item = await asyncio.wait_for(queue.get(), timeout=1)
            taken.append((name, item))
            queue.done(name)
        return taken

    return asyncio.run(go())


@pytest.mark.parametrize(
    ("puts", "expected"),
    [
        pytest.param([("a", "1")], [("a", "1")], id="one"),
        pytest.param([("a", "1"), ("a", "2")], [("a", "2")], id="latest-wins"),
        pytest.param([("a", "1"), ("b", "1"), ("a", "2")], [("a", "2"), ("b", "1")], id="arrival-order-kept"),
    ],
)
def test_put_keeps_the_latest_item_per_name_in_arrival_order(
    puts: list[tuple[str, str]], expected: list[tuple[str, str]]
) -> None:
    queue: KeyedQueue[str] = KeyedQueue()
    for name, item in puts:
        queue.put(name, item)
    assert drain(queue) == expected


def test_a_name_in_hand_is_not_handed_out_again_until_done_then_its_latest_item_is() -> None:
    async def go() -> list[str]:
        queue: KeyedQueue[str] = KeyedQueue()
        queue.put("a", "1")
        name, first = await queue.get()
        queue.put("a", "2")
        queue.put("a", "3")
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(queue.get(), timeout=0.05)  # "a" is in hand: nobody else gets it
        queue.done(name)
        _, second = await asyncio.wait_for(queue.get(), timeout=1)
        queue.done("a")
        return [first, second, str(len(queue)), str(queue.in_hand)]

    assert asyncio.run(go()) == ["1", "3", "0", "0"]
