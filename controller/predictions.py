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

import dataclasses
from collections.abc import Iterable

import netaddr

from controller.cidrs import overlaps, parse_cidr_sloppy, reads_as
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


class Predictions:
    """The dry run's outstanding predictions, by Node name; each ends when its Node shows podCIDRs or is gone."""

    def __init__(self) -> None:
        self._by_name: dict[str, Prediction] = {}

    def __len__(self) -> int:
        return len(self._by_name)

    def get(self, name: str) -> Prediction | None:
        return self._by_name.get(name)

    def predict(self, node: NodeInfo, cidrs: Iterable[netaddr.IPNetwork]) -> None:
        """The dry run would patch `cidrs` onto `node` now. A void prediction of the same incarnation stays void."""
        known = self._by_name.get(node.name)
        if known is not None and known.uid == node.uid and known.void:
            return
        self._by_name[node.name] = Prediction(node.uid, tuple(cidrs))

    def forget(self, name: str, uid: str) -> None:
        """That incarnation is gone: its prediction, if any, ends uncounted."""
        known = self._by_name.get(name)
        if known is not None and known.uid == uid:
            del self._by_name[name]

    def compare(self, node: NodeInfo) -> Comparison | None:
        """Settle what `node`'s podCIDRs say of the predictions; None when they say nothing (none set, none predicted).

        O(outstanding predictions): only Nodes still waiting for the other allocator have one.
        """
        if not node.pod_cidrs:
            return None
        own = self._by_name.get(node.name)
        if own is not None and own.uid == node.uid:
            del self._by_name[node.name]
        else:
            own = None
        written = _networks(node.pod_cidrs)
        voided = []
        for name, other in self._by_name.items():
            if not other.void and any(overlaps(ours, theirs) for ours in other.cidrs for theirs in written):
                other.void = True
                voided.append((name, other.cidrs))
        if own is None and not voided:
            return None
        predicted = own.cidrs if own is not None and not own.void else ()
        agreed = bool(predicted) and reads_as(node.pod_cidrs, predicted)
        return Comparison(node.name, node.pod_cidrs, predicted, agreed, tuple(voided))


def _networks(values: Iterable[str]) -> list[netaddr.IPNetwork]:
    found = []
    for value in values:
        try:
            found.append(parse_cidr_sloppy(value)[0])
        except ValueError:
            continue  # a malformed podCIDR is the ledger's to report, not ours
    return found
