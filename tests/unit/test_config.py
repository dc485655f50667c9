"""Flag validation, as kube-controller-manager does it, with errors naming the flag."""

from __future__ import annotations

import pytest

from controller.cli import build_parser, settings_from_args
from controller.config import ConfigError, build_ranges, build_service_cidrs, parse_bool, parse_duration


def settings(*flags: str):  # type: ignore[no-untyped-def]
    return settings_from_args(build_parser().parse_args(["run", *flags]))


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        pytest.param(["--cluster-cidr=10.244.0.0/16"], [("10.244.0.0/16", 24)], id="ipv4-default-mask"),
        pytest.param(["--cluster-cidr=fd00::/48"], [("fd00::/48", 64)], id="ipv6-default-mask"),
        pytest.param(
            ["--cluster-cidr=10.244.0.0/16", "--node-cidr-mask-size=26"], [("10.244.0.0/16", 26)], id="ipv4-single-mask"
        ),
        pytest.param(["--cluster-cidr=fd00::/48", "--node-cidr-mask-size=80"], [("fd00::/48", 80)], id="ipv6-single-mask"),
        pytest.param(
            ["--cluster-cidr=10.244.0.0/16", "--node-cidr-mask-size-ipv4=25"], [("10.244.0.0/16", 25)], id="ipv4-family-mask"
        ),
        pytest.param(["--cluster-cidr=fd00::/48", "--node-cidr-mask-size-ipv6=96"], [("fd00::/48", 96)], id="ipv6-family-mask"),
        pytest.param(
            ["--cluster-cidr=fd00::/48,10.244.0.0/16", "--node-cidr-mask-size-ipv4=25"],
            [("fd00::/48", 64), ("10.244.0.0/16", 25)],
            id="dual-stack-ipv6-first",
        ),
        pytest.param(["--cluster-cidr=10.244.0.1/16"], [("10.244.0.0/16", 24)], id="host-bits-dropped"),
        pytest.param(["--cluster-cidr=2001:db8::/32"], [("2001:db8::/32", 64)], id="ipv6-beyond-2^16-subnets"),
    ],
)
def test_valid_ranges(flags: list[str], expected: list[tuple[str, int]]) -> None:
    assert [(str(r.cluster_cidr), r.node_mask_size) for r in settings(*flags).ranges] == expected


@pytest.mark.parametrize(
    ("flags", "flag", "fragment"),
    [
        pytest.param([], "--cluster-cidr", "is required", id="missing"),
        pytest.param(["--cluster-cidr=10.0.0.0/16,10.1.0.0/16"], "--cluster-cidr", "both CIDRs are IPv4", id="two-ipv4"),
        pytest.param(["--cluster-cidr=fd00::/48,fd01::/48"], "--cluster-cidr", "both CIDRs are IPv6", id="two-ipv6"),
        pytest.param(["--cluster-cidr=10.0.0.0/16,fd00::/48,fd01::/48"], "--cluster-cidr", "at most 2", id="three"),
        pytest.param(["--cluster-cidr=10.0.0.0"], "--cluster-cidr", "no prefix length", id="no-prefix"),
        pytest.param(
            ["--cluster-cidr=10.0.0.0/16,fd00::/48", "--node-cidr-mask-size=24"], "--node-cidr-mask-size", "dual-stack", id="dual"
        ),
        pytest.param(
            ["--cluster-cidr=fd00::/48", "--node-cidr-mask-size-ipv4=24"],
            "--node-cidr-mask-size-ipv4",
            "IPv6 cluster",
            id="v4-on-v6",
        ),
        pytest.param(
            ["--cluster-cidr=10.0.0.0/16", "--node-cidr-mask-size-ipv6=64"],
            "--node-cidr-mask-size-ipv6",
            "IPv4 cluster",
            id="v6-on-v4",
        ),
        pytest.param(
            ["--cluster-cidr=10.0.0.0/16", "--node-cidr-mask-size=8"], "--node-cidr-mask-size", "shorter than", id="v4-short"
        ),
        pytest.param(
            ["--cluster-cidr=fd00::/48", "--node-cidr-mask-size=40"], "--node-cidr-mask-size", "shorter than", id="v6-short"
        ),
        pytest.param(
            ["--cluster-cidr=10.0.0.0/16", "--node-cidr-mask-size=33"], "--node-cidr-mask-size", "longer than", id="v4-long"
        ),
        pytest.param(
            ["--cluster-cidr=fd00::/48", "--node-cidr-mask-size=129"], "--node-cidr-mask-size", "longer than", id="v6-long"
        ),
        pytest.param(
            ["--cluster-cidr=10.0.0.0/16", "--node-cidr-mask-size=24", "--node-cidr-mask-size-ipv4=24"],
            "--node-cidr-mask-size",
            "cannot be combined",
            id="both-mask-flags",
        ),
        pytest.param(
            ["--cluster-cidr=10.0.0.0/16", "--allocate-node-cidrs=false"],
            "--allocate-node-cidrs",
            "nothing to do",
            id="alloc-off",
        ),
        pytest.param(
            ["--cluster-cidr=10.0.0.0/16", "--allocate-node-cidrs=maybe"],
            "--allocate-node-cidrs",
            "not a boolean",
            id="alloc-bad",
        ),
        pytest.param(
            ["--cluster-cidr=10.0.0.0/16", "--cidr-allocator-type=CloudAllocator"],
            "--cidr-allocator-type",
            "not supported",
            id="cloud",
        ),
        pytest.param(["--cluster-cidr=10.0.0.0/16", "--kube-api-qps=-1"], "--kube-api-qps", "negative", id="qps"),
        pytest.param(["--cluster-cidr=10.0.0.0/16", "--resync-period=never"], "--resync-period", "not a duration", id="resync"),
        pytest.param(
            ["--cluster-cidr=10.0.0.0/16", "--leader-elect-renew-deadline=20s"],
            "--leader-elect-renew-deadline",
            "lease duration > renew deadline",
            id="lease-order",
        ),
        pytest.param(
            ["--cluster-cidr=10.0.0.0/16", "--metrics-bind-address=localhost"], "--metrics-bind-address", "no port", id="bind"
        ),
        pytest.param(
            ["--cluster-cidr=10.0.0.0/16", "--service-cluster-ip-range=10.96.0.0/12,10.97.0.0/16"],
            "--service-cluster-ip-range",
            "both CIDRs are IPv4",
            id="service-two-ipv4",
        ),
    ],
)
def test_invalid_flags_name_the_flag(flags: list[str], flag: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as caught:
        settings(*flags)
    assert caught.value.flag == flag
    assert str(caught.value).startswith(flag + ":")
    assert fragment in str(caught.value)


def test_defaults_follow_kube_controller_manager_but_do_not_throttle() -> None:
    result = settings("--cluster-cidr=10.244.0.0/16")
    assert result.leader_election.enabled is True
    assert (result.leader_election.lease_duration, result.leader_election.renew_deadline) == (15.0, 10.0)
    assert result.leader_election.retry_period == 2.0
    assert result.kube_api_qps == 0.0, "no client-side limit by default"
    assert result.resync_period == 180.0


@pytest.mark.parametrize(("text", "seconds"), [("15s", 15.0), ("2m30s", 150.0), ("500ms", 0.5), ("1h", 3600.0), ("30", 30.0)])
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration("--x", text) == seconds


@pytest.mark.parametrize(("text", "value"), [("true", True), ("1", True), ("T", True), ("false", False), ("0", False)])
def test_parse_bool(text: str, value: bool) -> None:
    assert parse_bool("--x", text) is value


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("10.96.0.0/12", ["10.96.0.0/12"], id="ipv4"),
        pytest.param("10.96.0.0/12,fd00:96::/112", ["10.96.0.0/12", "fd00:96::/112"], id="dual"),
    ],
)
def test_service_cidrs(text: str, expected: list[str]) -> None:
    assert [str(cidr) for cidr in build_service_cidrs(text)] == expected


def test_build_ranges_requires_a_cluster_cidr() -> None:
    with pytest.raises(ConfigError, match="--cluster-cidr: is required"):
        build_ranges(None)


@pytest.mark.parametrize(
    ("flags", "leader"), [(["--leader-elect"], True), (["--leader-elect=false"], False), (["--leader-elect", "false"], False)]
)
def test_boolean_flags_may_be_bare_as_in_go(flags: list[str], leader: bool) -> None:
    result = settings("--cluster-cidr=10.244.0.0/16", "--allocate-node-cidrs", *flags)
    assert result.leader_election.enabled is leader
