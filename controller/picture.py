"""A picture of the address space for `nodeipam status --html/--svg`: one block per node subnet, coloured by state.

Pure: it takes what `status` computed (the pools' CIDRs, who holds each
range, the service range, reservations) and returns SVG or HTML text, so
that what is drawn is tested without a cluster or a browser. The page is
self-contained (inline SVG and CSS, no script, no font to fetch) so that it
can be mailed, attached to a ticket or opened offline.

Every CIDR of every pool is a grid; a CIDR with more subnets than
MAX_BLOCKS is drawn one block per group of subnets (an aligned CIDR),
coloured by the most severe state in it, except an IPv6 one: that is a bar
of the used fraction, as its subnets are far too many to draw and mostly free.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
from collections.abc import Iterable, Mapping, Sequence
from xml.sax.saxutils import escape, quoteattr

import netaddr

#: Above this many subnets in one CIDR, blocks stand for groups of subnets (IPv4) or a bar is drawn (IPv6).
MAX_BLOCKS = 4096
#: A range wider than this many subnets is counted per group, never per subnet.
_PER_SUBNET_LIMIT = MAX_BLOCKS

WIDTH = 1120
MARGIN = 16
COLUMNS = 64
GRID_TOP_GAP = 26


class State(enum.Enum):
    """The state of one node subnet, in rising severity: a group of subnets shows its most severe one."""

    FREE = "free"
    SERVICE = "service"
    RESERVED = "reserved"
    ALLOCATED = "allocated"
    DRAINING = "draining"
    UNKNOWN = "unknown"


SEVERITY = tuple(State)

#: Fill colour and legend text of each state; the colours tell apart under the common colour-vision deficiencies.
STYLE: Mapping[State, tuple[str, str]] = {
    State.ALLOCATED: ("#2c6fbb", "allocated: a Node holds it"),
    State.FREE: ("#e3e6ea", "free"),
    State.RESERVED: ("#8e5ab5", "reserved: a pool's reserved range, a reservation, or free in a draining CIDR"),
    State.SERVICE: ("#f29e38", "service range"),
    State.DRAINING: ("#e8d44d", "draining: a Node holds it in a draining CIDR"),
    State.UNKNOWN: ("#d43a2f", "write of unknown outcome: a patch that may have set it"),
}


@dataclasses.dataclass(frozen=True)
class Area:
    """One CIDR of one pool (the default pool's: a --cluster-cidr), carved into node subnets."""

    pool: str
    cidr: netaddr.IPNetwork
    node_mask_size: int
    draining: bool = False

    @property
    def subnets(self) -> int:
        return 1 << (self.node_mask_size - int(self.cidr.prefixlen))


@dataclasses.dataclass(frozen=True)
class Usage:
    """One usage bar of the header: a pool's family, as `status` counts it."""

    pool: str
    version: int
    allocated: int
    capacity: int


@dataclasses.dataclass(frozen=True)
class Space:
    """Everything drawn: the areas, and what marks their subnets (ranges of any size, clipped to each area)."""

    areas: tuple[Area, ...]
    holders: Mapping[netaddr.IPNetwork, tuple[str, ...]] = dataclasses.field(default_factory=dict)  # range -> Nodes
    service_cidrs: tuple[netaddr.IPNetwork, ...] = ()
    reserved: Mapping[netaddr.IPNetwork, str] = dataclasses.field(default_factory=dict)  # range -> why
    unknown: Mapping[netaddr.IPNetwork, str] = dataclasses.field(default_factory=dict)  # range -> Node it may be on
    usage: tuple[Usage, ...] = ()
    title: str = "nodeipam status"


@dataclasses.dataclass(frozen=True)
class Block:
    """One block drawn: a node subnet, or an aligned group of `size` of them."""

    cidr: netaddr.IPNetwork
    size: int
    state: State
    counts: Mapping[State, int]
    label: str  # who or what holds it, for a single subnet


@dataclasses.dataclass(frozen=True)
class Grid:
    """How one area is drawn: blocks (each standing for `group` subnets), or a bar of counts (`blocks` empty)."""

    area: Area
    group: int
    blocks: tuple[Block, ...]
    counts: Mapping[State, int]

    @property
    def is_bar(self) -> bool:
        return not self.blocks


def _slots(area: Area, cidr: netaddr.IPNetwork) -> tuple[int, int] | None:
    """The first and last subnet (inclusive) of `area` that `cidr` touches, or None."""
    if cidr.version != area.cidr.version:
        return None
    first, last = max(int(cidr.first), int(area.cidr.first)), min(int(cidr.last), int(area.cidr.last))
    if first > last:
        return None
    host_bits = (32 if area.cidr.version == 4 else 128) - area.node_mask_size
    base = int(area.cidr.first)
    return (first - base) >> host_bits, (last - base) >> host_bits


def _names(names: Iterable[str]) -> str:
    ordered = sorted(names)
    return ", ".join(ordered) + (" (duplicate)" if len(ordered) > 1 else "")


def _marks(area: Area, space: Space) -> tuple[dict[int, tuple[State, str]], list[tuple[int, int, State]]]:
    """Per subnet: its state and label where something marks it; and the marks too wide to list per subnet."""
    sources: list[tuple[State, netaddr.IPNetwork, str]] = [
        *((State.SERVICE, cidr, "service range") for cidr in space.service_cidrs),
        *((State.RESERVED, cidr, why) for cidr, why in space.reserved.items()),
        *((State.DRAINING if area.draining else State.ALLOCATED, cidr, _names(names)) for cidr, names in space.holders.items()),
        *((State.UNKNOWN, cidr, f"may be set on {name}") for cidr, name in space.unknown.items()),
    ]
    marks: dict[int, tuple[State, str]] = {}
    wide: list[tuple[int, int, State]] = []
    for state, cidr, label in sorted(sources, key=lambda source: SEVERITY.index(source[0])):
        span = _slots(area, cidr)
        if span is None:
            continue
        lo, hi = span
        if hi - lo >= _PER_SUBNET_LIMIT:
            wide.append((lo, hi, state))
            continue
        for slot in range(lo, hi + 1):
            if slot in marks and marks[slot][0] is state and state in (State.ALLOCATED, State.DRAINING):
                label = f"{marks[slot][1]}, {label} (overlapping ranges)"
            marks[slot] = (state, label)
    return marks, wide


def _group_size(area: Area) -> int:
    """Subnets per block: 1 up to MAX_BLOCKS subnets, else the power of two that brings them down to MAX_BLOCKS."""
    size = 1
    while area.subnets // size > MAX_BLOCKS:
        size *= 2
    return size


def grid(area: Area, space: Space) -> Grid:
    """The blocks (or the bar) of one area, with the count of subnets in each state."""
    marks, wide = _marks(area, space)
    as_bar = area.cidr.version == 6 and area.subnets > MAX_BLOCKS
    group = area.subnets if as_bar else _group_size(area)
    per_group: dict[int, collections.Counter[State]] = collections.defaultdict(collections.Counter)
    for slot, (state, _) in marks.items():
        per_group[slot // group][state] += 1
    for lo, hi, state in wide:
        inside = collections.Counter(slot // group for slot in marks if lo <= slot <= hi)
        for index in range(lo // group, hi // group + 1):
            overlap = min(hi, (index + 1) * group - 1) - max(lo, index * group) + 1 - inside[index]
            if overlap > 0:
                per_group[index][state] += overlap
    totals: collections.Counter[State] = collections.Counter()
    blocks = []
    host_bits = (32 if area.cidr.version == 4 else 128) - area.node_mask_size
    prefix = area.node_mask_size - (group.bit_length() - 1)
    for index in range(area.subnets // group):
        counts = _settled(per_group.get(index, collections.Counter()), group, area.draining)
        totals.update(counts)
        if as_bar:
            continue
        state = max((state for state, count in counts.items() if count), key=SEVERITY.index)
        first = int(area.cidr.first) + ((index * group) << host_bits)
        cidr = netaddr.IPNetwork((first, prefix), area.cidr.version)
        label = marks[index][1] if group == 1 and index in marks else ""
        blocks.append(Block(cidr, group, state, dict(counts), label))
    return Grid(area, group, tuple(blocks), dict(totals))


def _settled(counts: collections.Counter[State], group: int, draining: bool) -> collections.Counter[State]:
    """The counts of one group made to add up to its size: overlapping wide ranges counted once (the most severe
    kept), the rest free; or reserved in a draining CIDR, where nothing is handed out any more."""
    room = group
    for state in reversed(SEVERITY[1:]):
        counts[state] = min(counts[state], room)
        room -= counts[state]
    counts[State.RESERVED if draining else State.FREE] += room
    return counts


# -- drawing ---------------------------------------------------------------------------------------------------------


def _block_title(block: Block) -> str:
    if block.size == 1:
        what = block.label or STYLE[block.state][1].split(":")[0]
        return f"{block.cidr}: {what}" if block.state is not State.FREE else f"{block.cidr}: free"
    parts = ", ".join(f"{block.counts[state]} {state.value}" for state in reversed(SEVERITY) if block.counts.get(state))
    return f"{block.cidr} ({block.size} subnets): {parts}"


def _area_heading(drawn: Grid) -> str:
    area = drawn.area
    used = drawn.area.subnets - drawn.counts.get(State.FREE, 0)
    text = f"pool {area.pool}: {area.cidr}{' (draining)' if area.draining else ''}, /{area.node_mask_size} per Node"
    text += f", {used} of {area.subnets} subnets taken"
    if drawn.is_bar:
        return text + ", drawn as a bar of the used fraction"
    if drawn.group > 1:
        text += f"; 1 block = {drawn.group} subnets"
    return text


def _cell(drawn: Grid) -> int:
    return 16 if len(drawn.blocks) <= 1024 else 8


def _grid_svg(drawn: Grid, top: int) -> tuple[list[str], int]:
    """The SVG elements of one area placed at `top`, and the height they take."""
    parts = [f'<text class="heading" x="{MARGIN}" y="{top + 16}">{escape(_area_heading(drawn))}</text>']
    y0 = top + GRID_TOP_GAP
    if drawn.is_bar:
        width = COLUMNS * 16
        x = float(MARGIN)
        total = drawn.area.subnets
        title = ", ".join(f"{drawn.counts.get(state, 0)} {state.value}" for state in reversed(SEVERITY))
        parts.append(
            f'<g class="bar" data-cidr="{drawn.area.cidr}"><title>{escape(f"{drawn.area.cidr}: {title}")}</title>'
            f'<rect x="{MARGIN}" y="{y0}" width="{width}" height="20" fill="{STYLE[State.FREE][0]}"/>'
        )
        for state in reversed(SEVERITY[1:]):
            count = drawn.counts.get(state, 0)
            if not count:
                continue
            span = max(1.0, width * count / total)
            parts.append(
                f'<rect class="{state.value}" data-state="{state.value}" data-count="{count}"'
                f' x="{x:.1f}" y="{y0}" width="{span:.1f}" height="20" fill="{STYLE[state][0]}"/>'
            )
            x += span
        parts.append("</g>")
        return parts, GRID_TOP_GAP + 20 + 14
    cell = _cell(drawn)
    columns = COLUMNS * 16 // cell
    for index, block in enumerate(drawn.blocks):
        x = MARGIN + (index % columns) * cell
        y = y0 + (index // columns) * cell
        parts.append(
            f'<rect class="{block.state.value}" data-state="{block.state.value}" data-cidr="{block.cidr}"'
            f' x="{x}" y="{y}" width="{cell - 1}" height="{cell - 1}" fill="{STYLE[block.state][0]}">'
            f"<title>{escape(_block_title(block))}</title></rect>"
        )
    rows = -(-len(drawn.blocks) // columns)
    return parts, GRID_TOP_GAP + rows * cell + 14


def _grids(space: Space, top: int) -> tuple[list[str], int]:
    parts: list[str] = []
    y = top
    for area in space.areas:
        elements, height = _grid_svg(grid(area, space), y)
        parts += elements
        y += height
    return parts, y


def _svg(parts: Sequence[str], height: int) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}"'
        ' font-family="sans-serif" font-size="13">' + "".join(parts) + "</svg>"
    )


def svg(space: Space) -> str:
    """The grids alone, as a standalone SVG document (`status --svg`)."""
    parts, height = _grids(space, MARGIN)
    return _svg(parts, height + MARGIN)


def _usage_bars(usage: Iterable[Usage], top: int) -> tuple[list[str], int]:
    parts = []
    y = top
    for row in usage:
        fraction = row.allocated / row.capacity if row.capacity else 0.0
        label = f"{row.pool} IPv{row.version}: {row.allocated} of {row.capacity} subnets ({100 * fraction:.1f}%)"
        parts.append(
            f'<g class="usage" data-pool={quoteattr(row.pool)} data-version="{row.version}">'
            f'<rect x="{MARGIN}" y="{y}" width="300" height="14" fill="{STYLE[State.FREE][0]}"/>'
            f'<rect x="{MARGIN}" y="{y}" width="{300 * fraction:.1f}" height="14" fill="{STYLE[State.ALLOCATED][0]}"/>'
            f'<text x="{MARGIN + 310}" y="{y + 12}">{escape(label)}</text></g>'
        )
        y += 20
    return parts, y


def _legend(space: Space, grids: Iterable[Grid], top: int) -> tuple[list[str], int]:
    parts = ['<g class="legend">']
    y = top
    for index, state in enumerate(reversed(SEVERITY)):
        x = MARGIN + (index % 2) * 540
        row_y = y + (index // 2) * 20
        colour, text = STYLE[state]
        parts.append(
            f'<rect class="swatch" data-state="{state.value}" x="{x}" y="{row_y}" width="14" height="14" fill="{colour}"/>'
            f'<text x="{x + 20}" y="{row_y + 12}">{escape(text)}</text>'
        )
    y += 3 * 20
    notes = ["1 block = 1 node subnet; hover a block for its range and Node"]
    for drawn in grids:
        if drawn.group > 1 and not drawn.is_bar:
            notes.append(f"{drawn.area.cidr}: 1 block = {drawn.group} subnets, coloured by the most severe state among them")
        elif drawn.is_bar:
            notes.append(f"{drawn.area.cidr}: {drawn.area.subnets} subnets, drawn as a bar of the fraction in each state")
    for note in notes:
        parts.append(f'<text class="note" x="{MARGIN}" y="{y + 12}">{escape(note)}</text>')
        y += 18
    parts.append("</g>")
    return parts, y


CSS = """
body { margin: 0; background: #ffffff; color: #1d2329; }
svg text { fill: #1d2329; }
svg text.title { font-size: 18px; font-weight: bold; }
svg text.heading { font-weight: bold; }
svg text.note { fill: #4a5560; }
svg rect[data-cidr]:hover { stroke: #000000; stroke-width: 1; }
"""


def html(space: Space) -> str:
    """The page (`status --html`): title, usage bars per pool and family, legend, then the grids; one SVG, no script.

    One SVG from the top-left corner (the body has no margin), so a point of
    the drawing is that pixel of the rendered page.
    """
    grids = [grid(area, space) for area in space.areas]
    parts = [f'<text class="title" x="{MARGIN}" y="{MARGIN + 14}">{escape(space.title)}</text>']
    bars, y = _usage_bars(space.usage, MARGIN + 28)
    parts += bars
    legend, y = _legend(space, grids, y + 10)
    parts += legend
    y += 10
    for drawn in grids:
        elements, height = _grid_svg(drawn, y)
        parts += elements
        y += height
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(space.title)}</title><style>{CSS}</style></head>\n<body>" + _svg(parts, y + MARGIN) + "</body></html>\n"
    )
