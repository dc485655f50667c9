"""`nodeipam status --html/--svg` against the real API server, the page rendered by headless Chromium.

Nodes with known podCIDRs, a service range and the controller's Lease with a
record of a patch in flight are seeded; the page's blocks are then found in
the SVG and their pixels read from Chromium's screenshot.
"""

from __future__ import annotations

import collections
import json
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from controller import inflight, picture
from controller.picture import State
from tests.integration.conftest import Cluster, run_cli
from tests.integration.test_cli_conventions import nodeipam_deployment
from tests.pngread import read_png

pytestmark = pytest.mark.integration

SVG = "{http://www.w3.org/2000/svg}"
NAMESPACE = "picture"
LEASE = "nodeipam-picture"
FLAGS = [
    "run",
    "--cluster-cidr=10.244.0.0/20",
    "--node-cidr-mask-size-ipv4=24",
    "--service-cluster-ip-range=10.244.15.0/24",
    f"--leader-elect-resource-namespace={NAMESPACE}",
    f"--leader-elect-resource-name={LEASE}",
]


def chromium() -> str:
    """The browser's path; the test is skipped without one."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium): the page cannot be rendered")
    return found


def screenshot(page: Path, out: Path) -> None:
    """The page as a 1200x900 PNG at one device pixel per CSS pixel, so SVG coordinates are pixels."""
    result = subprocess.run(
        [
            chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--force-device-scale-factor=1",
            f"--screenshot={out}",
            "--window-size=1200,900",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0 and out.exists(), result.stderr[-2000:]


def hex_colour(text: str) -> tuple[int, int, int]:
    return int(text[1:3], 16), int(text[3:5], 16), int(text[5:7], 16)


def near(found: tuple[int, int, int], wanted: tuple[int, int, int]) -> bool:
    return all(abs(a - b) <= 6 for a, b in zip(found, wanted, strict=True))


def seed(cluster: Cluster) -> None:
    plane = cluster.plane
    plane.kubectl("create", "namespace", NAMESPACE, check=False)
    plane.kubectl("apply", "-f", "-", input_text=json.dumps(nodeipam_deployment(NAMESPACE, FLAGS)))
    cluster.create_nodes(["pic-a"], pod_cidrs=("10.244.0.0/24",))
    cluster.create_nodes(["pic-b"], pod_cidrs=("10.244.1.0/24",))
    cluster.create_nodes(["pic-c"])
    uid = str(cluster.core.read_node("pic-c").metadata.uid)  # type: ignore[union-attr]
    record = inflight.encode([inflight.InFlight("pic-c", uid, ("10.244.2.0/24",))])
    lease = {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": LEASE, "namespace": NAMESPACE, "annotations": {inflight.ANNOTATION: record}},
        "spec": {"holderIdentity": "nodeipam-0", "leaseDurationSeconds": 15},
    }
    plane.kubectl("apply", "-f", "-", input_text=json.dumps(lease))


def test_the_page_shows_each_subnet_in_the_colour_of_its_state(cluster: Cluster, tmp_path: Path) -> None:
    browser = chromium()
    assert browser
    seed(cluster)
    page, grid = tmp_path / "status.html", tmp_path / "status.svg"
    result = run_cli(
        "status", f"--deployment={NAMESPACE}/nodeipam", f"--html={page}", f"--svg={grid}", kubeconfig=cluster.plane.kubeconfig
    )
    assert result.returncode == 0, result.stderr
    assert "10.244.0.0/20" in result.stdout  # the text report is printed as ever

    drawn = ET.parse(grid).getroot()
    states = collections.Counter(rect.get("data-state") for rect in drawn.iter(f"{SVG}rect") if rect.get("data-cidr"))
    assert states == {"allocated": 2, "unknown": 1, "service": 1, "free": 12}

    text = page.read_text()
    assert "<script" not in text
    body = ET.fromstring(text[text.index("<svg") : text.index("</svg>") + len("</svg>")])
    rects = {rect.get("data-cidr"): rect for rect in body.iter(f"{SVG}rect") if rect.get("data-cidr")}
    assert rects["10.244.0.0/24"].findtext(f"{SVG}title") == "10.244.0.0/24: pic-a"
    assert rects["10.244.2.0/24"].findtext(f"{SVG}title") == "10.244.2.0/24: may be set on pic-c"
    swatches = {rect.get("data-state"): rect for rect in body.iter(f"{SVG}rect") if rect.get("class") == "swatch"}
    assert set(swatches) == {state.value for state in State}
    assert "write of unknown outcome" in text and "service range" in text

    png = tmp_path / "status.png"
    screenshot(page, png)
    image = read_png(png.read_bytes())
    expected = {
        "10.244.0.0/24": State.ALLOCATED,
        "10.244.1.0/24": State.ALLOCATED,
        "10.244.2.0/24": State.UNKNOWN,
        "10.244.3.0/24": State.FREE,
        "10.244.15.0/24": State.SERVICE,
    }
    for cidr, state in expected.items():
        rect = rects[cidr]
        x = int(float(rect.get("x", "0")) + float(rect.get("width", "0")) / 2)
        y = int(float(rect.get("y", "0")) + float(rect.get("height", "0")) / 2)
        found = image.pixel(x, y)
        assert near(found, hex_colour(picture.STYLE[state][0])), (cidr, state, found)
    for name, rect in swatches.items():  # the legend is drawn, each swatch in its state's colour
        x, y = int(float(rect.get("x", "0"))) + 7, int(float(rect.get("y", "0"))) + 7
        assert near(image.pixel(x, y), hex_colour(picture.STYLE[State(name)][0])), (name, image.pixel(x, y))
