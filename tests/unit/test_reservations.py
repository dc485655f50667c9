"""The reservation book on its own: each move of a reservation's state machine, and where its ranges end up."""

from __future__ import annotations

import netaddr
import pytest

from controller.config import FamilyRange
from controller.model import NodeInfo
from controller.noderanges import NodeRanges
from controller.poolsets import PoolSets
from controller.poolusage import PoolUsageBook
from controller.reservations import ReservationError, Reservations, ReservationState

RANGES = {
    4: FamilyRange(netaddr.IPNetwork("10.244.0.0/16"), 24),
    6: FamilyRange(netaddr.IPNetwork("fd00:10:244::/48"), 64),
}
NODE = NodeInfo("a", "uid-a")


def books(version: int) -> tuple[PoolSets, NodeRanges, Reservations]:
    usage = PoolUsageBook()
    pool_sets = PoolSets([RANGES[version]], (), usage)
    pool_sets.set_pools([])
    held = NodeRanges(pool_sets, usage)
    return pool_sets, held, Reservations(pool_sets, usage, held)


@pytest.mark.parametrize("version", [4, 6], ids=["ipv4", "ipv6"])
@pytest.mark.parametrize(
    ("moves", "state", "freed", "held", "left_for_the_resync"),
    [
        pytest.param(["abandon"], ReservationState.RELEASED, True, False, False, id="never-sent-abandoned"),
        pytest.param(["patching", "abandon"], ReservationState.UNKNOWN, False, False, True, id="sent-abandoned"),
        pytest.param(["patching", "abort"], ReservationState.RELEASED, True, False, False, id="refused"),
        pytest.param(["patching", "commit"], ReservationState.COMMITTED, False, True, False, id="applied"),
        pytest.param(["patching", "unknown", "commit"], ReservationState.COMMITTED, False, True, False, id="lost-then-applied"),
        pytest.param(["patching", "node_gone", "commit"], ReservationState.RELEASED, True, False, False, id="node-deleted"),
        pytest.param(["patching", "node_gone", "abandon"], ReservationState.RELEASED, True, False, False, id="deleted-abandoned"),
    ],
)
def test_each_move_leaves_the_ranges_claimed_exactly_while_they_may_be_the_nodes(
    version: int, moves: list[str], state: ReservationState, freed: bool, held: bool, left_for_the_resync: bool
) -> None:
    pool_sets, ranges, reservations = books(version)
    reservation = reservations.open(NODE, pool_sets.take_for({}, NODE.name), since=1)
    for move in moves:
        getattr(reservations, move)(reservation)
    assert reservation.state is state
    assert (reservations.get(NODE.name) is reservation) == reservation.is_open
    assert (reservations.unsettled() == [reservation]) == left_for_the_resync
    assert ranges.ranges(NODE.name) == (reservation.cidrs if held else ())
    assert pool_sets.sets[0].allocated == (0 if freed else 1)


@pytest.mark.parametrize("version", [4, 6], ids=["ipv4", "ipv6"])
def test_a_refusal_after_a_lost_answer_proves_nothing(version: int) -> None:
    pool_sets, _, reservations = books(version)
    reservation = reservations.open(NODE, pool_sets.take_for({}, NODE.name), since=1)
    reservations.patching(reservation)
    reservations.unknown(reservation)
    with pytest.raises(ReservationError, match="may have applied"):
        reservations.abort(reservation)
    assert reservation.is_open and pool_sets.sets[0].allocated == 1


@pytest.mark.parametrize("version", [4, 6], ids=["ipv4", "ipv6"])
def test_a_settled_reservation_takes_no_further_move(version: int) -> None:
    pool_sets, _, reservations = books(version)
    reservation = reservations.open(NODE, pool_sets.take_for({}, NODE.name), since=1)
    reservations.abort(reservation)
    with pytest.raises(ReservationError, match="is settled"):
        reservations.patching(reservation)
    assert reservations.abandon(reservation) == ()
