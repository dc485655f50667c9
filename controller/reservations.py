"""Ranges reserved for a Node while its patch is settled: one reservation per Node name, and its state machine.

The ledger (`nodes.NodeAllocations`) takes the ranges and decides what a
read of the Node means; this book keeps each open reservation, moves it
through its states, tells the pool usage of every range reserved and
released, and gives a released reservation's claims back to the pool sets.
Pure bookkeeping: nothing here talks to the cluster.

A reservation's life: RESERVED (ranges taken) -> PATCHING (the patch is sent)
-> COMMITTED (the Node holds them), or RELEASED (refused, or the Node is gone),
or UNKNOWN (the answer was lost) -> settled by a read: COMMITTED, RELEASED, or
PATCHING again with the same ranges. One whose patch may have applied stays
reserved until a read of the Node shows what it holds.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping

import netaddr

from controller.cidrs import join
from controller.model import NodeInfo
from controller.noderanges import NodeRanges
from controller.poolsets import PoolSets
from controller.poolusage import PoolUsageBook


class ReservationState(enum.Enum):
    RESERVED = "reserved"  # ranges taken, no patch sent yet
    PATCHING = "patching"  # the patch is on its way
    UNKNOWN = "unknown"  # the patch's answer was lost: it may have applied
    COMMITTED = "committed"  # the Node holds the ranges
    RELEASED = "released"  # refused, abandoned before sending, or the Node is gone


_OPEN = (ReservationState.RESERVED, ReservationState.PATCHING, ReservationState.UNKNOWN)


@dataclasses.dataclass(eq=False)
class Reservation:
    """Ranges taken for one Node incarnation (name and UID) while its patch is settled."""

    name: str
    uid: str
    cidrs: tuple[netaddr.IPNetwork, ...]
    since: int  # the logical clock when it was made
    state: ReservationState = ReservationState.RESERVED
    owned: bool = True  # a task is carrying it out; False: an UNKNOWN one left for the resync
    node_gone: bool = False  # this incarnation was deleted meanwhile
    maybe_applied: bool = False  # some attempt's answer was lost: a later refusal proves nothing about it

    @property
    def is_open(self) -> bool:
        return self.state in _OPEN


class ReservationError(RuntimeError):
    """A reservation call that does not apply to the state at hand."""


class AlreadyInFlightError(ReservationError):
    """The Node has a reservation already: one reservation per Node at a time."""


class Reservations:
    """The open reservation of every Node name, from the moment its ranges are taken until it is settled.

    The ranges arrive claimed in `pool_sets`; a released reservation unclaims
    them, a committed one leaves its claims to the Node's ranges in `held`.
    """

    def __init__(self, pool_sets: PoolSets, usage: PoolUsageBook, held: NodeRanges) -> None:
        self._pool_sets = pool_sets
        self._usage = usage
        self._held = held
        self._open: dict[str, Reservation] = {}

    # -- queries -------------------------------------------------------------

    def get(self, name: str) -> Reservation | None:
        """The open reservation for a Node name, if any."""
        return self._open.get(name)

    def __contains__(self, name: str) -> bool:
        return name in self._open

    def all(self) -> list[Reservation]:
        """Every open reservation."""
        return list(self._open.values())

    def unsettled(self) -> list[Reservation]:
        """UNKNOWN reservations no task is working on: the resync settles them."""
        return [reservation for reservation in self._open.values() if not reservation.owned]

    def is_current(self, reservation: Reservation) -> bool:
        """Whether `reservation` is still the open one of its Node (not settled meanwhile)."""
        return self._open.get(reservation.name) is reservation

    def orphans(self, live: Mapping[str, str], listed_after: int) -> list[tuple[str, str]]:
        """(name, UID) of unsettled reservations made up to `listed_after` whose incarnation a LIST (name -> uid)
        does not show; ones a task is working on are left to it."""
        return [
            (name, reservation.uid)
            for name, reservation in self._open.items()
            if not reservation.owned and reservation.since <= listed_after and live.get(name) != reservation.uid
        ]

    # -- opening -------------------------------------------------------------

    def open(self, node: NodeInfo, cidrs: tuple[netaddr.IPNetwork, ...], since: int) -> Reservation:
        """A reservation of `cidrs` (claimed already) for a patch a task is about to send."""
        return self._add(Reservation(node.name, node.uid, cidrs, since))

    def open_unsettled(self, node: NodeInfo, cidrs: tuple[netaddr.IPNetwork, ...], since: int) -> Reservation:
        """An UNKNOWN reservation of `cidrs` (claimed already), of a patch that may have applied, left for the
        next handling of the Node to patch again."""
        reservation = Reservation(node.name, node.uid, cidrs, since, state=ReservationState.UNKNOWN, owned=False)
        reservation.maybe_applied = True
        return self._add(reservation)

    def resume(self, node: NodeInfo) -> Reservation:
        """Take over an UNKNOWN reservation left for the resync, to patch again with the same ranges."""
        reservation = self._open.get(node.name)
        if reservation is None or reservation.uid != node.uid:
            raise ReservationError(f"node {node.name} (UID {node.uid}) has no unsettled reservation")
        if reservation.owned:
            raise AlreadyInFlightError(f"node {node.name} has a reservation in flight already")
        reservation.owned = True
        return reservation

    # -- moves ---------------------------------------------------------------

    def patching(self, reservation: Reservation) -> None:
        """The patch with the reserved ranges is about to be sent."""
        self.check_current(reservation)
        reservation.state = ReservationState.PATCHING

    def unknown(self, reservation: Reservation) -> None:
        """The patch's answer was lost (or a 5xx): it may have applied, so the ranges stay reserved."""
        self.check_current(reservation)
        reservation.state = ReservationState.UNKNOWN
        reservation.maybe_applied = True

    def commit(self, reservation: Reservation) -> bool:
        """The patch succeeded: the Node holds the reserved ranges now.

        Returns False (and frees the ranges) when the Node was deleted while
        the patch was in flight.
        """
        self.check_current(reservation)
        if reservation.node_gone:
            self.release(reservation)
            return False
        self.close_as_committed(reservation)
        return True

    def abort(self, reservation: Reservation) -> tuple[netaddr.IPNetwork, ...]:
        """The patch was refused (nothing applied): give the ranges back; returns the ranges freed.

        Raises ReservationError when an earlier attempt may have applied: a
        refusal of a later one does not show what the Node holds.
        """
        self.check_current(reservation)
        if reservation.maybe_applied:
            raise ReservationError(f"an earlier patch of node {reservation.name} may have applied; a read must settle it")
        return self.release(reservation)

    def abandon(self, reservation: Reservation) -> tuple[netaddr.IPNetwork, ...]:
        """The task carrying out `reservation` stops; returns the ranges freed.

        Never sent (RESERVED), or the Node is gone: released. Sent (PATCHING
        or UNKNOWN): it may have applied, so it stays reserved as UNKNOWN
        until a read settles it (the resync). No-op once settled.
        """
        if not self.is_current(reservation):
            return ()
        if reservation.state is ReservationState.RESERVED or reservation.node_gone:
            return self.release(reservation)
        reservation.state = ReservationState.UNKNOWN
        reservation.owned = False
        return ()

    def node_gone(self, reservation: Reservation) -> list[netaddr.IPNetwork]:
        """The reservation's incarnation is deleted: free it now, or when its task is done with it."""
        reservation.node_gone = True
        return [] if reservation.owned else list(self.release(reservation))

    def release(self, reservation: Reservation) -> tuple[netaddr.IPNetwork, ...]:
        """End `reservation` without its ranges landing; returns the ranges freed."""
        del self._open[reservation.name]
        reservation.state = ReservationState.RELEASED
        for cidr in reservation.cidrs:
            self._usage.release(reservation.name, cidr)
        return tuple(cidr for cidr in reservation.cidrs if self._pool_sets.unclaim(cidr))

    def close_as_committed(self, reservation: Reservation) -> None:
        """The Node holds the reserved ranges: they become its held ranges, and no claim moves."""
        # The held ranges' reference to each range goes in before the reservation's goes out: the usage never sees it go.
        self._held.take_over(reservation.name, reservation.uid, reservation.cidrs, reservation.since)
        del self._open[reservation.name]
        reservation.state = ReservationState.COMMITTED
        for cidr in reservation.cidrs:
            self._usage.release(reservation.name, cidr)

    def check_current(self, reservation: Reservation) -> None:
        """Raise ReservationError when `reservation` is settled already."""
        if not self.is_current(reservation):
            raise ReservationError(f"the reservation of {join(reservation.cidrs)} for node {reservation.name} is settled")

    def _add(self, reservation: Reservation) -> Reservation:
        self._open[reservation.name] = reservation
        for cidr in reservation.cidrs:
            self._usage.hold(reservation.name, cidr)
        return reservation
