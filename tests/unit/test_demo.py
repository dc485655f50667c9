"""`make demo` (`python -m localcluster.demo`) with bad input: one line naming the problem and the fix, exit 2, before
the local control plane starts."""

from __future__ import annotations

import pytest

from localcluster import demo


@pytest.fixture(autouse=True)
def nothing_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    """Bad input must be refused before the demo's control plane starts."""

    def start(nodes: int, cluster_cidr: str, once: bool) -> int:
        raise AssertionError("the demo started")

    monkeypatch.setattr(demo, "demo", start)


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        pytest.param(["--nodes", "-1"], "--nodes: -1 is not between 1 and", id="negative"),
        pytest.param(["--nodes", "0"], "--nodes: 0", id="zero"),
        pytest.param(["--nodes", "100000000"], "--nodes: 100000000", id="absurd"),
        pytest.param(["--cluster-cidr=garbage"], "--cluster-cidr: 'garbage' is not a CIDR", id="garbage-range"),
        pytest.param(["--cluster-cidr=10.0.0.0"], "--cluster-cidr", id="no-prefix"),
        pytest.param(["--nodes=300", "--cluster-cidr=10.0.0.0/16"], "do not fit", id="too-many-ipv4"),
        pytest.param(["--nodes=300", "--cluster-cidr=fd00::/56"], "do not fit", id="too-many-ipv6"),
        pytest.param(["--cluster-cidr=10.96.0.0/16"], "overlaps the demo's service range", id="service-overlap"),
    ],
)
def test_demo_refuses_bad_input_before_starting(capsys: pytest.CaptureFixture[str], argv: list[str], fragment: str) -> None:
    code = demo.main(argv)
    stderr = capsys.readouterr().err
    assert code == 2
    assert "Traceback" not in stderr
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("demo: error: "), stderr
    assert fragment in lines[0], stderr


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param([], id="defaults"),
        pytest.param(["--nodes=256", "--cluster-cidr=10.0.0.0/16"], id="full-ipv4"),
        pytest.param(["--nodes=1000", "--cluster-cidr=fd00::/48"], id="ipv6"),
        pytest.param(["--nodes=3", "--cluster-cidr=10.244.0.0/16,fd00::/48"], id="dual-stack"),
    ],
)
def test_demo_starts_with_good_input(monkeypatch: pytest.MonkeyPatch, argv: list[str]) -> None:
    calls: list[tuple[int, str]] = []

    def start(nodes: int, cluster_cidr: str, once: bool) -> int:
        calls.append((nodes, cluster_cidr))
        return 0

    monkeypatch.setattr(demo, "demo", start)
    assert demo.main(argv) == 0
    assert len(calls) == 1
