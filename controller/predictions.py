"""What a dry run would have written, held against what another allocator writes.

Pure: `nodeipam run --dry-run` (controller.dryrun) records each podCIDR patch
it would have sent as a prediction, and hands every Node it sees to `compare`.
A Node that shows podCIDRs for the first time, written by whoever allocates
for real, settles its own prediction (agreed or not) and voids the
predictions of other Nodes that its ranges overlap: the other allocator has
given those ranges away, so what was predicted there cannot happen either.
A void prediction has been counted as a disagreement once; the Node's own
ranges, when they come, are not counted again.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Iterable

import netaddr

from controller.cidrs import parsed_cidrs, reads_as
from controller.model import NodeInfo


@dataclasses.dataclass
class Prediction:
    """The ranges a dry run would have patched onto one incarnation of a Node."""

    uid: str
    cidrs: tuple[netaddr.IPNetwork, ...]
    void: bool = False  # another Node got one of these ranges: judged a disagreement already


@dataclasses.dataclass(frozen=True)
class Comparison:
    """What one Node's first podCIDRs, written by another allocator, say of the dry run's predictions."""

    node: str
    written: tuple[str, ...]
    predicted: tuple[netaddr.IPNetwork, ...] = ()  # empty: nothing was predicted for this Node (or it was void)
    agreed: bool = False
    voided: tuple[tuple[str, tuple[netaddr.IPNetwork, ...]], ...] = ()  # (other Node, its prediction) now void

    @property
    def disagreements(self) -> int:
        """Decisions that differ from what was written: this Node's, and each prediction its ranges voided."""
        return int(bool(self.predicted) and not self.agreed) + len(self.voided)


#: Above this many subnets of a predicted size in a written range, the written range is compared with each prediction.
SUBNETS_LOOKED_UP = 4096


class Predictions:
    """The dry run's outstanding predictions, by Node name; each ends when its Node shows podCIDRs or is gone.

    Indexed by range too, so that the predictions a written range overlaps are found by lookups (one per
    prefix length predicted), not by comparing it with each.
    """

    def __init__(self) -> None:
        self._by_name: dict[str, Prediction] = {}
        self._by_range: dict[tuple[int, int, int], str] = {}  # (version, prefix length, first address) -> Node
        self._lengths: dict[int, collections.Counter[int]] = {4: collections.Counter(), 6: collections.Counter()}

    def __len__(self) -> int:
        return len(self._by_name)

    def __contains__(self, name: str) -> bool:
        return name in self._by_name

    def get(self, name: str) -> Prediction | None:
        return self._by_name.get(name)

    def predict(self, node: NodeInfo, cidrs: Iterable[netaddr.IPNetwork]) -> None:
        """The dry run would patch `cidrs` onto `node` now. A void prediction of the same incarnation stays void."""
        known = self._by_name.get(node.name)
        if known is not None and known.uid == node.uid and known.void:
            return
        self._end(node.name)
        prediction = Prediction(node.uid, tuple(cidrs))
        self._by_name[node.name] = prediction
        for cidr in prediction.cidrs:
            self._by_range[_key(cidr)] = node.name
            self._lengths[cidr.version][cidr.prefixlen] += 1

    def forget(self, name: str, uid: str) -> None:
        """That incarnation is gone: its prediction, if any, ends uncounted."""
        known = self._by_name.get(name)
        if known is not None and known.uid == uid:
            self._end(name)

    def compare(self, node: NodeInfo) -> Comparison | None:
        """Settle what `node`'s podCIDRs say of the predictions; None when they say nothing (none set, none predicted)."""
        if not node.pod_cidrs:
            return None
        own = self._by_name.get(node.name)
        if own is not None and own.uid == node.uid:
            self._end(node.name)
        else:
            own = None
        voided = []
        for name in dict.fromkeys(name for written in parsed_cidrs(node.pod_cidrs) for name in self._overlapping(written)):
            other = self._by_name[name]
            if name != node.name and not other.void:
                self._void(name)
                voided.append((name, other.cidrs))
        if own is None and not voided:
            return None
        predicted = own.cidrs if own is not None and not own.void else ()
        agreed = bool(predicted) and reads_as(node.pod_cidrs, predicted)
        return Comparison(node.name, node.pod_cidrs, predicted, agreed, tuple(voided))

    def _overlapping(self, written: netaddr.IPNetwork) -> list[str]:
        """The Nodes with a live prediction that overlaps `written`."""
        bits = 32 if written.version == 4 else 128
        found = []
        for length in self._lengths[written.version]:
            if length <= written.prefixlen:  # at most one predicted range of this length contains it
                shift = bits - length
                name = self._by_range.get((written.version, length, written.first >> shift << shift))
                if name is not None:
                    found.append(name)
            elif 1 << (length - written.prefixlen) <= SUBNETS_LOOKED_UP:  # its subnets of this length, each looked up
                step = 1 << (bits - length)
                for first in range(written.first, written.last + 1, step):
                    name = self._by_range.get((written.version, length, first))
                    if name is not None:
                        found.append(name)
            else:
                found += [
                    name
                    for (version, prefixlen, first), name in self._by_range.items()
                    if version == written.version and prefixlen == length and written.first <= first <= written.last
                ]
        return found

    def _void(self, name: str) -> None:
        """Judged already: kept (so that the Node's own ranges count nothing later), out of the range index."""
        prediction = self._by_name[name]
        self._unindex(name, prediction)
        prediction.void = True

    def _end(self, name: str) -> None:
        prediction = self._by_name.pop(name, None)
        if prediction is not None and not prediction.void:
            self._unindex(name, prediction)

    def _unindex(self, name: str, prediction: Prediction) -> None:
        for cidr in prediction.cidrs:
            if self._by_range.get(_key(cidr)) == name:
                del self._by_range[_key(cidr)]
            lengths = self._lengths[cidr.version]
            lengths[cidr.prefixlen] -= 1
            if lengths[cidr.prefixlen] <= 0:
                del lengths[cidr.prefixlen]


def _key(cidr: netaddr.IPNetwork) -> tuple[int, int, int]:
    return int(cidr.version), int(cidr.prefixlen), int(cidr.first)
