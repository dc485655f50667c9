"""The picture of the address space (`status --html/--svg`): the blocks drawn, counted per state from the SVG."""

from __future__ import annotations

import collections
import re
import xml.etree.ElementTree as ET

import netaddr
import pytest

from controller import picture
from controller.cli import build_parser
from controller.config import FamilyRange
from controller.inflight import InFlight
from controller.inspect import compute_space, compute_status
from controller.model import NodeInfo
from controller.picture import Area, Space, State

N = netaddr.IPNetwork
SVG = "{http://www.w3.org/2000/svg}"


def block_states(svg_text: str) -> collections.Counter[str]:
    """How many blocks of each state the SVG draws (every block carries data-state and data-cidr)."""
    root = ET.fromstring(svg_text)
    return collections.Counter(rect.get("data-state", "") for rect in root.iter(f"{SVG}rect") if rect.get("data-cidr"))


def titles(svg_text: str) -> dict[str, str]:
    """data-cidr -> the block's <title> (what hovering shows)."""
    root = ET.fromstring(svg_text)
    found = {}
    for rect in root.iter(f"{SVG}rect"):
        title = rect.find(f"{SVG}title")
        if rect.get("data-cidr") and title is not None:
            found[rect.get("data-cidr", "")] = title.text or ""
    return found


CASES = [
    pytest.param(
        Space(
            (Area("default", N("10.244.0.0/22"), 24),),
            holders={N("10.244.0.0/24"): ("node-a",), N("10.244.1.0/24"): ("node-b",)},
            service_cidrs=(N("10.244.3.0/24"), N("10.96.0.0/12")),
            unknown={N("10.244.2.0/24"): "node-c"},
        ),
        {"allocated": 2, "service": 1, "unknown": 1},
        {"10.244.0.0/24": "node-a", "10.244.2.0/24": "may be set on node-c", "10.244.3.0/24": "service range"},
        id="ipv4",
    ),
    pytest.param(
        Space(
            (Area("edge", N("fd00::/60"), 64, draining=True), Area("edge", N("fd00:0:0:10::/62"), 64)),
            holders={N("fd00::/64"): ("node-a",), N("fd00:0:0:11::/64"): ("node-b",)},
            reserved={N("fd00:0:0:12::/63"): "reserved by pool edge"},
        ),
        {"draining": 1, "reserved": 15 + 2, "allocated": 1, "free": 1},
        {"fd00::/64": "node-a", "fd00:0:0:11::/64": "node-b", "fd00:0:0:13::/64": "reserved by pool edge"},
        id="ipv6-draining-and-reserved",
    ),
    pytest.param(
        Space((Area("default", N("10.0.0.0/14"), 24),), holders={N("10.0.0.0/24"): ("a", "b")}),
        {"allocated": 1, "free": 1023},
        {"10.0.0.0/24": "a, b (duplicate)"},
        id="ipv4-duplicate",
    ),
]


@pytest.mark.parametrize(("space", "expected", "hover"), CASES)
def test_every_subnet_is_one_block_coloured_by_its_state(space: Space, expected: dict[str, int], hover: dict[str, str]) -> None:
    drawn = picture.svg(space)
    counts = block_states(drawn)
    assert {state: count for state, count in counts.items() if count} == expected
    shown = titles(drawn)
    for cidr, name in hover.items():
        assert shown[cidr].startswith(f"{cidr}: ") and name in shown[cidr], shown[cidr]


def test_a_large_ipv4_cidr_is_drawn_in_groups_of_the_most_severe_state() -> None:
    """A /8 of /24s: 65,536 subnets as 4,096 blocks of 16 (each a /20), the group size said in the legend."""
    space = Space(
        (Area("default", N("10.0.0.0/8"), 24),),
        holders={N("10.1.0.0/24"): ("a",), N("10.1.1.0/24"): ("b",)},
        service_cidrs=(N("10.96.0.0/12"),),
        unknown={N("10.1.0.0/24"): "c"},
    )
    (drawn,) = [picture.grid(area, space) for area in space.areas]
    assert (drawn.group, len(drawn.blocks)) == (16, 4096)
    assert drawn.counts == {
        State.UNKNOWN: 1,
        State.ALLOCATED: 1,
        State.SERVICE: 4096,
        State.FREE: 65536 - 4098,
        State.DRAINING: 0,
        State.RESERVED: 0,
    }
    assert block_states(picture.svg(space)) == {"unknown": 1, "service": 256, "free": 4096 - 257}
    assert titles(picture.svg(space))["10.1.0.0/20"] == "10.1.0.0/20 (16 subnets): 1 unknown, 1 allocated, 14 free"
    page = picture.html(space)
    assert "10.0.0.0/8: 1 block = 16 subnets, coloured by the most severe state among them" in page


def test_a_large_ipv6_pool_is_a_bar_of_the_used_fraction() -> None:
    """A /48 of /64s is 65,536 subnets: a bar whose parts count each state, not 65,536 blocks."""
    holders = {N(f"fd00:0:0:{index:x}::/64"): (f"node-{index}",) for index in range(1000)}
    space = Space((Area("default", N("fd00::/48"), 64),), holders=holders, service_cidrs=(N("fd00:0:0:8000::/49"),))
    drawn = picture.svg(space)
    assert not block_states(drawn)
    root = ET.fromstring(drawn)
    parts = {
        rect.get("data-state"): int(rect.get("data-count", "0")) for rect in root.iter(f"{SVG}rect") if rect.get("data-count")
    }
    assert parts == {"allocated": 1000, "service": 32768}
    assert "fd00::/48: 65536 subnets, drawn as a bar" in picture.html(space)


def test_the_page_is_self_contained_with_usage_bars_and_legend() -> None:
    space = Space(
        (Area("default", N("10.244.0.0/22"), 24),),
        holders={N("10.244.0.0/24"): ("<node>",)},
        usage=(picture.Usage("default", 4, 1, 4),),
    )
    page = picture.html(space)
    assert not re.search(r"<script|<link|@import|url\(|https?://(?!www\.w3\.org/2000/svg)", page)
    body = page[page.index("<svg") : page.index("</svg>") + len("</svg>")]
    root = ET.fromstring(body)  # well-formed: the Node's name is escaped
    swatches = {rect.get("data-state") for rect in root.iter(f"{SVG}rect") if rect.get("class") == "swatch"}
    assert swatches == {state.value for state in State}
    assert "default IPv4: 1 of 4 subnets (25.0%)" in page
    assert titles(body)["10.244.0.0/24"] == "10.244.0.0/24: <node>"


def test_compute_space_rebuilds_holders_and_marks_patches_whose_outcome_is_unknown() -> None:
    """From the Nodes and the Lease's record: a recorded range the Node does not show is a write of unknown outcome."""
    ranges = [FamilyRange(N("10.244.0.0/22"), 24)]
    nodes = [NodeInfo("a", "uid-a", ("10.244.0.0/24",), "10.244.0.0/24"), NodeInfo("b", "uid-b", (), "")]
    in_flight = [InFlight("a", "uid-a", ("10.244.0.0/24",)), InFlight("b", "uid-b", ("10.244.1.0/24",))]
    status = compute_status(nodes, ranges, [N("10.244.3.0/24")])
    space = compute_space(nodes, ranges, status, [N("10.244.3.0/24")], in_flight=in_flight)
    assert space.holders == {N("10.244.0.0/24"): ("a",)}
    assert space.unknown == {N("10.244.1.0/24"): "b"}
    assert space.usage == (picture.Usage("default", 4, 2, 4),)
    assert block_states(picture.svg(space)) == {"allocated": 1, "unknown": 1, "free": 1, "service": 1}


def test_a_recorded_range_the_node_shows_in_another_spelling_has_landed() -> None:
    """10.244.01.0/24 on the Node is the recorded 10.244.1.0/24: allocated, not a write of unknown outcome."""
    ranges = [FamilyRange(N("10.244.0.0/22"), 24)]
    nodes = [NodeInfo("a", "uid-a", ("10.244.01.0/24",), "10.244.01.0/24")]
    status = compute_status(nodes, ranges)
    space = compute_space(nodes, ranges, status, in_flight=[InFlight("a", "uid-a", ("10.244.1.0/24",))])
    assert not space.unknown
    assert block_states(picture.svg(space)) == {"allocated": 1, "free": 3}


def test_status_takes_html_and_svg_files_check_does_not() -> None:
    args = build_parser().parse_args(["status", "--cluster-cidr=10.244.0.0/16", "--html", "a.html", "--svg", "a.svg"])
    assert (args.html, args.svg) == ("a.html", "a.svg")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["check", "--cluster-cidr=10.244.0.0/16", "--html", "a.html"])
