"""The dry run's predictions against what another allocator writes."""

from __future__ import annotations

import netaddr
import pytest

from controller.model import NodeInfo
from controller.predictions import Predictions


def nets(*values: str) -> tuple[netaddr.IPNetwork, ...]:
    return tuple(netaddr.IPNetwork(value) for value in values)


FAMILIES = pytest.mark.parametrize(
    ("first", "second", "third"),
    [
        ("10.0.0.0/24", "10.0.1.0/24", "10.0.2.0/24"),
        ("fd00::/64", "fd00:0:0:1::/64", "fd00:0:0:2::/64"),
    ],
    ids=["ipv4", "ipv6"],
)


@FAMILIES
def test_the_same_ranges_agree_and_end_the_prediction(first: str, second: str, third: str) -> None:
    predictions = Predictions()
    predictions.predict(NodeInfo("a", "u1"), nets(first))
    comparison = predictions.compare(NodeInfo("a", "u1", (first,)))
    assert comparison is not None
    assert (comparison.agreed, comparison.disagreements, comparison.voided) == (True, 0, ())
    assert len(predictions) == 0
    assert predictions.compare(NodeInfo("a", "u1", (first,))) is None  # counted once


@FAMILIES
def test_other_ranges_disagree(first: str, second: str, third: str) -> None:
    predictions = Predictions()
    predictions.predict(NodeInfo("a", "u1"), nets(first))
    comparison = predictions.compare(NodeInfo("a", "u1", (third,)))
    assert comparison is not None
    assert (comparison.agreed, comparison.predicted, comparison.disagreements) == (False, nets(first), 1)


@FAMILIES
def test_ranges_predicted_for_another_node_are_voided_and_counted_once(first: str, second: str, third: str) -> None:
    """b gets what was predicted for a: a's prediction is void, a disagreement now; a's own ranges later count nothing."""
    predictions = Predictions()
    predictions.predict(NodeInfo("a", "u1"), nets(first))
    predictions.predict(NodeInfo("b", "u2"), nets(second))
    comparison = predictions.compare(NodeInfo("b", "u2", (first,)))
    assert comparison is not None
    assert comparison.voided == (("a", nets(first)),)
    assert comparison.disagreements == 2  # b's own, and a's
    predictions.predict(NodeInfo("a", "u1"), nets(third))  # decided again: still void
    later = predictions.compare(NodeInfo("a", "u1", (third,)))
    assert later is not None and later.disagreements == 0 and not later.agreed


@FAMILIES
def test_nothing_to_say_without_podcidrs_a_prediction_or_another_incarnation(first: str, second: str, third: str) -> None:
    predictions = Predictions()
    predictions.predict(NodeInfo("a", "u1"), nets(first))
    assert predictions.compare(NodeInfo("a", "u1")) is None  # no podCIDRs yet
    assert predictions.compare(NodeInfo("c", "u3", (third,))) is None  # unpredicted, overlaps nothing
    assert predictions.compare(NodeInfo("a", "u9", (third,))) is None  # another incarnation of the name
    predictions.forget("a", "u1")
    assert len(predictions) == 0


def test_a_malformed_podcidr_is_left_to_the_ledger() -> None:
    predictions = Predictions()
    predictions.predict(NodeInfo("a", "u1"), nets("10.0.0.0/24"))
    comparison = predictions.compare(NodeInfo("b", "u2", ("not-a-cidr", "10.0.0.0/24")))
    assert comparison is not None and comparison.voided == (("a", nets("10.0.0.0/24")),)


@pytest.mark.parametrize(
    ("predicted", "written", "voided"),
    [
        pytest.param(["10.0.0.0/25", "10.0.0.128/25", "10.0.1.0/25"], "10.0.0.0/24", ["p0", "p1"], id="ipv4-wider-written"),
        pytest.param(["10.0.0.0/24", "10.0.1.0/24"], "10.0.1.128/25", ["p1"], id="ipv4-narrower-written"),
        pytest.param(["10.0.0.0/30", "10.0.255.252/30", "10.1.0.0/30"], "10.0.0.0/16", ["p0", "p1"], id="ipv4-many-subnets"),
        pytest.param(["fd00::/65", "fd00::8000:0:0:0/65", "fd00:0:0:1::/65"], "fd00::/64", ["p0", "p1"], id="ipv6-wider-written"),
        pytest.param(["fd00::/64", "fd00:0:0:1::/64"], "fd00:0:0:1::/96", ["p1"], id="ipv6-narrower-written"),
        pytest.param(["fd00::/120", "fd00::ff00/120", "fd00:1::/120"], "fd00::/64", ["p0", "p1"], id="ipv6-many-subnets"),
    ],
)
def test_a_written_range_voids_every_prediction_it_overlaps_whatever_the_sizes(
    predicted: list[str], written: str, voided: list[str]
) -> None:
    predictions = Predictions()
    for index, cidr in enumerate(predicted):
        predictions.predict(NodeInfo(f"p{index}", f"u{index}"), nets(cidr))
    comparison = predictions.compare(NodeInfo("other", "ux", (written,)))
    assert comparison is not None
    assert sorted(name for name, _ in comparison.voided) == voided
    assert predictions.compare(NodeInfo("another", "uy", (written,))) is None  # void ones are out of the index
