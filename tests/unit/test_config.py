"""Flag validation, as kube-controller-manager does it, with errors naming the flag."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from controller.cli import build_parser
from controller.config import (
    Settings,
    build_ranges,
    build_service_cidrs,
    split_bind_address,
)
from controller.flagvalues import ConfigError, go_duration, parse_bool, parse_duration
from controller.pasted_flags import drop_ignored_flags
from controller.run_flags import settings_from_args


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
            ["--cluster-cidr=10.0.0.0/16", "--allocate-node-cidrs=maybe"],
            "--allocate-node-cidrs",
            "not a boolean",
            id="alloc-bad",
        ),
        pytest.param(["--cluster-cidr=10.0.0.0/16", "--dry-run=sometimes"], "--dry-run", "not a boolean", id="dry-run-bad"),
        pytest.param(
            ["--cluster-cidr=10.0.0.0/16", "--cidr-allocator-type=CloudAllocator"],
            "--cidr-allocator-type",
            "never takes ranges from a cloud provider",
            id="cloud",
        ),
        pytest.param(["--cluster-cidr=10.0.0.0/16", "--kube-api-qps=-1"], "--kube-api-qps", "negative", id="qps"),
        pytest.param(["--cluster-cidr=10.0.0.0/16", "--resync-period=never"], "--resync-period", "not a duration", id="resync"),
        pytest.param(
            ["--cluster-cidr=10.0.0.0/16", "--leader-elect-renew-deadline=20s"],
            "--leader-elect-renew-deadline",
            "not shorter than --leader-elect-lease-duration=15s",
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


def test_the_flags_defaults_are_the_settings_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    """One home: `nodeipam run` with no optional flag gives exactly the defaults of Settings and LeaderElection."""
    result = settings("--cluster-cidr=10.244.0.0/16")
    assert result == Settings(ranges=result.ranges)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    for shown in ("(default 3m)", "(default 15s)", "(default 10s)", "(default 2s)", "(default 64)", "(default 0.0.0.0:9254)"):
        assert shown in help_text


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(180.0, "3m"), (15.0, "15s"), (10.0, "10s"), (2.0, "2s"), (3600.0, "1h"), (90.0, "90s"), (0.5, "500ms")],
)
def test_go_duration_is_what_parse_duration_reads_back(seconds: float, text: str) -> None:
    assert go_duration(seconds) == text
    assert parse_duration("--flag", text) == seconds


@pytest.mark.parametrize(
    ("address", "split"),
    [
        ("0", None),
        ("", None),
        ("127.0.0.1:9254", ("127.0.0.1", 9254)),
        (":9254", ("0.0.0.0", 9254)),
        ("[::]:9254", ("::", 9254)),
        ("[fd00::5]:0", ("fd00::5", 0)),
        ("metrics.example.com:8443", ("metrics.example.com", 8443)),
    ],
)
def test_split_bind_address(address: str, split: tuple[str, int] | None) -> None:
    assert split_bind_address(address) == split


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("15s", 15.0),
        ("2m30s", 150.0),
        ("500ms", 0.5),
        ("1h", 3600.0),
        (".5s", 0.5),
        ("1.5h", 5400.0),
        ("5.s", 5.0),
        ("1h30m", 5400.0),
        ("30m1h", 5400.0),  # Go adds the parts in any order
        ("1h0m0s", 3600.0),
        ("1\u00b5s", 1e-6),  # micro sign
        ("1\u03bcs", 1e-6),  # Greek mu
        ("1us", 1e-6),
        ("1ns", 1e-9),
        ("+3s", 3.0),
        ("0", 0.0),  # the one number Go takes without a unit
        ("-0", 0.0),
        ("0s", 0.0),
        ("0.0000000001s", 0.0),  # below a nanosecond: dropped, as Go does
        ("2562047h47m16.854775807s", 9223372036.854775807),  # Go's longest duration
    ],
)
def test_parse_duration_accepts_what_go_accepts(text: str, seconds: float) -> None:
    assert parse_duration("--x", text) == pytest.approx(seconds, rel=1e-12)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "not a duration"),
        ("15", "without a unit; Go durations need one: 15s, 15m or 15h"),
        ("2.5", "without a unit"),
        ("1s5", "without a unit"),
        ("1.2.3s", "without a unit"),
        (".s", "not a duration"),
        ("s", "not a duration"),
        ("1d", "unknown unit 'd'"),
        ("1S", "unknown unit 'S'"),
        (" 15s", "not a duration"),  # Go does not trim spaces either
        ("15s ", "unknown unit 's '"),
        ("-1s", "negative"),
        ("-.5s", "negative"),
        ("2562047h47m16.854775808s", "longest duration"),
        ("99999999999h", "longest duration"),
    ],
)
def test_parse_duration_refuses_what_go_refuses_and_negatives(text: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_duration("--x", text)
    assert str(caught.value).startswith("--x: ")
    assert fragment in str(caught.value)


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


RUN = "--cluster-cidr=10.0.0.0/16"


@pytest.mark.parametrize(
    ("flags", "flag", "fragment"),
    [
        # --kube-api-qps: 0 (off) or a finite rate of at least 1 request/s.
        pytest.param(["--kube-api-qps=nan"], "--kube-api-qps", "not a finite number", id="qps-nan"),
        pytest.param(["--kube-api-qps=inf"], "--kube-api-qps", "not a finite number", id="qps-inf"),
        pytest.param(["--kube-api-qps=-inf"], "--kube-api-qps", "not a finite number", id="qps-minus-inf"),
        pytest.param(["--kube-api-qps=1e-300"], "--kube-api-qps", "would stall", id="qps-tiny"),
        pytest.param(["--kube-api-qps=0.5"], "--kube-api-qps", "at least 1", id="qps-below-floor"),
        pytest.param(["--kube-api-qps=-0.5"], "--kube-api-qps", "negative", id="qps-negative"),
        # --kube-api-burst: at least 1 with a rate, as client-go requires.
        pytest.param(["--kube-api-qps=20", "--kube-api-burst=0"], "--kube-api-burst", "below 1", id="burst-zero-with-qps"),
        pytest.param(["--kube-api-burst=-1"], "--kube-api-burst", "negative", id="burst-negative"),
        # --resync-period: a Go duration of at least 1s.
        pytest.param(["--resync-period=1ns"], "--resync-period", "below 1s", id="resync-1ns"),
        pytest.param(["--resync-period=999ms"], "--resync-period", "below 1s", id="resync-999ms"),
        pytest.param(["--resync-period=0"], "--resync-period", "below 1s", id="resync-zero"),
        pytest.param(["--resync-period=15"], "--resync-period", "without a unit", id="resync-unitless"),
        pytest.param(["--resync-period=-3m"], "--resync-period", "negative", id="resync-negative"),
        # Leader election, by client-go's rules and the Lease API's.
        pytest.param(["--leader-elect-lease-duration=0"], "--leader-elect-lease-duration", "at least 1s", id="lease-zero"),
        pytest.param(["--leader-elect-lease-duration=500ms"], "--leader-elect-lease-duration", "whole", id="lease-sub-second"),
        pytest.param(["--leader-elect-lease-duration=15500ms"], "--leader-elect-lease-duration", "whole", id="lease-fraction"),
        pytest.param(
            ["--leader-elect-lease-duration=2147483648s"],
            "--leader-elect-lease-duration",
            "longer than a Lease",
            id="lease-int32",
        ),
        pytest.param(
            ["--leader-elect-lease-duration=15"], "--leader-elect-lease-duration", "without a unit", id="lease-unitless"
        ),
        pytest.param(
            ["--leader-elect-renew-deadline=15s"], "--leader-elect-renew-deadline", "not shorter than", id="renew-equals-lease"
        ),
        pytest.param(
            ["--leader-elect-renew-deadline=2400ms"], "--leader-elect-renew-deadline", "not above 1.2 x", id="renew-1.2x-retry"
        ),
        pytest.param(
            ["--leader-elect-renew-deadline=2s"], "--leader-elect-renew-deadline", "not above 1.2 x", id="renew-equals-retry"
        ),
        pytest.param(["--leader-elect-retry-period=0"], "--leader-elect-retry-period", "below 0.1s", id="retry-zero"),
        pytest.param(["--leader-elect-retry-period=1ns"], "--leader-elect-retry-period", "below 0.1s", id="retry-1ns"),
        pytest.param(["--leader-elect-retry-period=-2s"], "--leader-elect-retry-period", "negative", id="retry-negative"),
        pytest.param(
            ["--leader-elect-resource-namespace=Kube_System"], "--leader-elect-resource-namespace", "RFC 1123", id="ns-upper"
        ),
        pytest.param(
            ["--leader-elect-resource-namespace=kube.system"], "--leader-elect-resource-namespace", "label", id="ns-dot"
        ),
        pytest.param(["--leader-elect-resource-namespace="], "--leader-elect-resource-namespace", "label", id="ns-empty"),
        pytest.param(["--leader-elect-resource-namespace=" + "a" * 64], "--leader-elect-resource-namespace", "63", id="ns-long"),
        pytest.param(["--leader-elect-resource-name=-x"], "--leader-elect-resource-name", "subdomain", id="name-dash"),
        pytest.param(["--leader-elect-resource-name=NodeIPAM"], "--leader-elect-resource-name", "subdomain", id="name-upper"),
        pytest.param(["--leader-elect-resource-name="], "--leader-elect-resource-name", "subdomain", id="name-empty"),
        pytest.param(["--leader-elect-resource-name=a..b"], "--leader-elect-resource-name", "subdomain", id="name-empty-label"),
        pytest.param(["--leader-elect-resource-name=" + "a" * 254], "--leader-elect-resource-name", "253", id="name-long"),
        # Durations must parse even with leader election off: a typo is a typo.
        pytest.param(
            ["--leader-elect=false", "--leader-elect-retry-period=2"], "--leader-elect-retry-period", "unit", id="off-but-bad"
        ),
        # --master: an http(s) URL, or host:port.
        pytest.param(["--master=::::"], "--master", "not a URL", id="master-colons"),
        pytest.param(["--master=https://10.0.0.1:99999"], "--master", "not a URL", id="master-ipv4-port-range"),
        pytest.param(["--master=https://[fd00::1]:99999"], "--master", "not a URL", id="master-ipv6-port-range"),
        pytest.param(["--master=https://999.0.0.1"], "--master", "not an IPv4 address", id="master-ipv4-bad"),
        pytest.param(["--master=https://fd00::1"], "--master", "without brackets", id="master-ipv6-no-brackets"),
        pytest.param(["--master=https://[fd00::zz]"], "--master", "not a URL", id="master-ipv6-bad"),
        pytest.param(["--master=ftp://10.0.0.1"], "--master", "scheme 'ftp'", id="master-scheme"),
        pytest.param(["--master=https://"], "--master", "no host", id="master-no-host"),
        pytest.param(["--master=https://api example"], "--master", "not a host name", id="master-space"),
        pytest.param(["--master=https://user@10.0.0.1"], "--master", "user, query or fragment", id="master-user"),
        # --metrics-bind-address: host:port with a port from 0 to 65535, IPv6 in brackets.
        pytest.param(["--metrics-bind-address=:99999"], "--metrics-bind-address", "0 to 65535", id="bind-port-range"),
        pytest.param(["--metrics-bind-address=:-1"], "--metrics-bind-address", "0 to 65535", id="bind-port-negative"),
        pytest.param(["--metrics-bind-address=:http"], "--metrics-bind-address", "0 to 65535", id="bind-port-name"),
        pytest.param(["--metrics-bind-address=999.0.0.1:9254"], "--metrics-bind-address", "not an IPv4", id="bind-ipv4-bad"),
        pytest.param(["--metrics-bind-address=::1:9254"], "--metrics-bind-address", "without brackets", id="bind-ipv6-bare"),
        pytest.param(["--metrics-bind-address=[fd00::zz]:9254"], "--metrics-bind-address", "not an IPv6", id="bind-ipv6-bad"),
        pytest.param(["--metrics-bind-address=a b:9254"], "--metrics-bind-address", "not a host name", id="bind-host-space"),
        # A $(VAR) the kubelet could not expand (no such env variable in the container): named, with the fix.
        pytest.param(
            ["--metrics-bind-address=$(POD_IP):9254"],
            "--metrics-bind-address",
            "env variable POD_IP",
            id="bind-pod-ip-unexpanded",
        ),
        pytest.param(
            ["--metrics-bind-address=[$(POD_IP)]:9254"],
            "--metrics-bind-address",
            "$(POD_IP), which was not expanded",
            id="bind-pod-ip-unexpanded-ipv6",
        ),
        pytest.param(
            ["--metrics-bind-address=fd00::5:9254"],
            "--metrics-bind-address",
            "without brackets",
            id="bind-pod-ip-ipv6-expanded-bare",
        ),
    ],
)
def test_run_refuses_values_that_cannot_work(flags: list[str], flag: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as caught:
        settings(RUN, *flags)
    assert caught.value.flag == flag
    assert str(caught.value).startswith(flag + ":")
    assert fragment in str(caught.value)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("flags", "check"),
    [
        pytest.param(["--kube-api-qps=0", "--kube-api-burst=0"], lambda s: s.kube_api_qps == 0, id="qps-off"),
        pytest.param(["--kube-api-qps=1"], lambda s: (s.kube_api_qps, s.kube_api_burst) == (1.0, 30), id="qps-floor"),
        pytest.param(["--kube-api-qps=20.5", "--kube-api-burst=1"], lambda s: s.kube_api_burst == 1, id="qps-burst-1"),
        pytest.param(["--kube-api-qps=1e9", "--kube-api-burst=1000000"], lambda s: s.kube_api_qps == 1e9, id="qps-huge"),
        pytest.param(["--resync-period=1s"], lambda s: s.resync_period == 1.0, id="resync-floor"),
        pytest.param(["--resync-period=.5m"], lambda s: s.resync_period == 30.0, id="resync-go-fraction"),
        pytest.param(["--resync-period=1.5h"], lambda s: s.resync_period == 5400.0, id="resync-hours"),
        pytest.param(
            ["--leader-elect-lease-duration=1s", "--leader-elect-renew-deadline=900ms", "--leader-elect-retry-period=500ms"],
            lambda s: (s.leader_election.lease_duration, s.leader_election.retry_period) == (1.0, 0.5),
            id="leader-smallest",
        ),
        pytest.param(
            ["--leader-elect-renew-deadline=2401ms"], lambda s: s.leader_election.renew_deadline == 2.401, id="renew-above-1.2x"
        ),
        pytest.param(["--leader-elect-retry-period=100ms"], lambda s: s.leader_election.retry_period == 0.1, id="retry-floor"),
        pytest.param(
            ["--leader-elect-lease-duration=2147483647s", "--leader-elect-renew-deadline=1h"],
            lambda s: s.leader_election.lease_duration == 2147483647.0,
            id="lease-int32-max",
        ),
        pytest.param(
            ["--leader-elect-lease-duration=1m"], lambda s: s.leader_election.lease_duration == 60.0, id="lease-minutes"
        ),
        pytest.param(
            ["--leader-elect-resource-name=nodeipam.example.com", "--leader-elect-resource-namespace=ipam-1"],
            lambda s: s.leader_election.resource_name == "nodeipam.example.com",
            id="lease-dotted-name",
        ),
        # With leader election off, only the syntax of its flags matters (as upstream).
        pytest.param(
            ["--leader-elect=false", "--leader-elect-lease-duration=1s", "--leader-elect-resource-namespace=X"],
            lambda s: not s.leader_election.enabled,
            id="leader-off",
        ),
        pytest.param(["--master=https://10.0.0.1:6443"], lambda s: s.master == "https://10.0.0.1:6443", id="master-ipv4"),
        pytest.param(["--master=https://[fd00::1]:6443"], lambda s: s.master == "https://[fd00::1]:6443", id="master-ipv6"),
        pytest.param(["--master=10.0.0.1:6443"], lambda s: s.master == "10.0.0.1:6443", id="master-no-scheme"),
        pytest.param(["--master=http://127.0.0.1:8080"], lambda s: s.master is not None, id="master-http"),
        pytest.param(["--master=https://api.example.com/k8s/clusters/c-1"], lambda s: s.master is not None, id="master-path"),
        pytest.param(["--metrics-bind-address=0"], lambda s: s.metrics_bind_address == "0", id="bind-off"),
        pytest.param(["--metrics-bind-address="], lambda s: s.metrics_bind_address == "", id="bind-off-empty"),
        pytest.param(["--metrics-bind-address=:9254"], lambda s: s.metrics_bind_address == ":9254", id="bind-all"),
        pytest.param(["--metrics-bind-address=127.0.0.1:0"], lambda s: s.metrics_bind_address == "127.0.0.1:0", id="bind-ipv4"),
        pytest.param(["--metrics-bind-address=[::1]:65535"], lambda s: s.metrics_bind_address == "[::1]:65535", id="bind-ipv6"),
        pytest.param(["--metrics-bind-address=localhost:9254"], lambda s: s.metrics_bind_address is not None, id="bind-name"),
        pytest.param(
            ["--metrics-bind-address=10.0.0.5:9254"],
            lambda s: s.metrics_bind_address == "10.0.0.5:9254",
            id="bind-pod-ip-expanded",
        ),
    ],
)
def test_run_accepts_values_that_work(flags: list[str], check: Callable[[Settings], bool]) -> None:
    assert check(settings(RUN, *flags))


@pytest.mark.parametrize(
    ("flags", "burst"),
    [
        pytest.param([], 0, id="no-rate-no-burst"),
        pytest.param(["--kube-api-qps=20"], 30, id="rate-alone-gets-kcm-burst"),
        pytest.param(["--kube-api-qps=5"], 30, id="low-rate-alone"),
        pytest.param(["--kube-api-qps=100"], 100, id="rate-above-30-alone-gets-its-rate"),
        pytest.param(["--kube-api-qps=20", "--kube-api-burst=5"], 5, id="burst-given"),
        pytest.param(["--kube-api-burst=7"], 7, id="burst-without-rate"),
    ],
)
def test_a_rate_given_alone_gets_kube_controller_managers_burst(flags: list[str], burst: int) -> None:
    """Pasted `--kube-api-qps=20` without its burst must not become bursts of 1: kube-controller-manager's default is 30."""
    assert settings(RUN, *flags).kube_api_burst == burst


@pytest.mark.parametrize(
    ("flags", "dry_run", "leader_elect"),
    [
        pytest.param([], False, True, id="default"),
        pytest.param(["--dry-run"], True, False, id="dry-run-takes-no-lease"),
        pytest.param(["--dry-run=false", "--leader-elect=true"], False, True, id="dry-run-false"),
        pytest.param(["--dry-run=true", "--leader-elect=true"], True, False, id="leader-elect-ignored"),
    ],
)
def test_dry_run_takes_no_lease(flags: list[str], dry_run: bool, leader_elect: bool) -> None:
    result = settings(RUN, *flags)
    assert (result.dry_run, result.leader_election.enabled) == (dry_run, leader_elect)


def test_allocate_node_cidrs_false_is_accepted() -> None:
    """kube-controller-manager's switch; cli.py notes it on stderr (test_cli), nodeipam allocates regardless."""
    assert settings(RUN, "--allocate-node-cidrs=false").ranges


@pytest.mark.parametrize(
    ("argv", "kept", "noted"),
    [
        pytest.param(["--v=2"], [], ["--v=2"], id="v-equals"),
        pytest.param(["--v", "2", RUN], [RUN], ["--v 2"], id="v-separate-value"),
        pytest.param(["-v=4", RUN], [RUN], ["-v=4"], id="v-short-equals"),
        pytest.param(["-v", "4", RUN], [RUN], ["-v 4"], id="v-short-separate"),
        pytest.param(["-v4", RUN], [RUN], ["-v4"], id="v-short-joined"),
        pytest.param(["--secure-port=10257", RUN], [RUN], ["--secure-port=10257"], id="secure-port"),
        pytest.param(["--bind-address", "0.0.0.0", RUN], [RUN], ["--bind-address 0.0.0.0"], id="bind-address-separate"),
        pytest.param(["--profiling", RUN], [RUN], ["--profiling"], id="boolean-bare-takes-no-value"),
        pytest.param(["--profiling=false", RUN], [RUN], ["--profiling=false"], id="boolean-with-value"),
        pytest.param(
            ["--use-service-account-credentials", RUN], [RUN], ["--use-service-account-credentials"], id="sa-credentials"
        ),
        pytest.param(["--leader-elect-resource-lock=leases"], [], ["--leader-elect-resource-lock=leases"], id="resource-lock"),
        pytest.param(["--controllers=*,bootstrapsigner"], [], ["--controllers=*,bootstrapsigner"], id="controllers"),
        pytest.param(
            ["--cluster-signing-cert-file=/a", "--cluster-signing-duration=8760h"],
            [],
            ["--cluster-signing-cert-file=/a", "--cluster-signing-duration=8760h"],
            id="cluster-signing-prefix",
        ),
        pytest.param(
            ["--requestheader-client-ca-file=/ca"], [], ["--requestheader-client-ca-file=/ca"], id="requestheader-prefix"
        ),
        pytest.param(["--concurrent-deployment-syncs=5"], [], ["--concurrent-deployment-syncs=5"], id="concurrent-prefix"),
        pytest.param(["--feature-gates=A=true,B=false"], [], ["--feature-gates=A=true,B=false"], id="feature-gates"),
        pytest.param(
            ["--logtostderr=true", "--port=0", "--cluster-name=k", "--cloud-provider=external"],
            [],
            ["--logtostderr=true", "--port=0", "--cluster-name=k", "--cloud-provider=external"],
            id="several",
        ),
        pytest.param(
            ["--authentication-kubeconfig=/k", "--authorization-kubeconfig=/k"],
            [],
            ["--authentication-kubeconfig=/k", "--authorization-kubeconfig=/k"],
            id="authn-authz",
        ),
        pytest.param(
            ["--root-ca-file=/ca", "--service-account-private-key-file=/key"],
            [],
            ["--root-ca-file=/ca", "--service-account-private-key-file=/key"],
            id="service-account-controller",
        ),
        # nodeipam's own flags, and kube-controller-manager's that it implements, are kept.
        pytest.param(
            [RUN, "--kube-api-qps=20", "--leader-elect-resource-name=x"],
            [RUN, "--kube-api-qps=20", "--leader-elect-resource-name=x"],
            [],
            id="own-flags",
        ),
        pytest.param(
            ["--authorization-always-allow-paths=/healthz", "--tls-cert-file=/c"],
            ["--authorization-always-allow-paths=/healthz", "--tls-cert-file=/c"],
            [],
            id="own-serving-flags",
        ),
        pytest.param(
            ["--allocate-node-cidrs=false", "--cidr-allocator-type=CloudAllocator"],
            ["--allocate-node-cidrs=false", "--cidr-allocator-type=CloudAllocator"],
            [],
            id="allocation-flags-are-not-dropped",
        ),
        pytest.param(["--no-such-flag=1"], ["--no-such-flag=1"], [], id="unknown-left-to-the-parser"),
        pytest.param(["--", "--v=2"], ["--", "--v=2"], [], id="after-double-dash"),
    ],
)
def test_kube_controller_manager_flags_that_mean_nothing_here_are_dropped_with_a_note(
    argv: list[str], kept: list[str], noted: list[str]
) -> None:
    remaining, notes = drop_ignored_flags(argv)
    assert remaining == kept
    assert len(notes) == len(noted)
    for note, flag in zip(notes, noted, strict=True):
        assert note.startswith(f"note: {flag} ignored: kube-controller-manager's flag for "), note
