"""The chaos suite's control plane, profiles, resilient Node creation and the audit every scenario ends with.

NODEIPAM_CHAOS=quick (default, in CI) or full (`make chaos`) picks the sizes;
NODEIPAM_CHAOS_SEED fixes the random choices (each scenario prints its seed).
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import os
import random
import re
import time
from collections.abc import Callable, Sequence
from typing import Any

import pytest
import urllib3
from kubernetes import client
from kubernetes.client.rest import ApiException

from controller import config
from controller.inspect import find_problems
from localcluster.cluster import LocalControlPlane
from localcluster.nodebodies import realistic_node
from tests.conftest import wait_for
from tests.integration.conftest import (  # noqa: F401 - fixtures
    Cluster,
    ControllerProcess,
    Proxied,
    cluster,
    control_plane,
    core,
    proxied,
    start_controller,
)
from tests.integration.test_faults import allocated_metric, expected_allocated, node_infos

RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 504})
REQUEST_DEADLINE = 120.0  # seconds a create or delete keeps retrying through an outage


@dataclasses.dataclass(frozen=True)
class Profile:
    name: str
    burst_nodes: int  # scenarios 1, 2, 3 and 5
    kills: int  # scenario 1: SIGKILLs of the controller
    leader_kills: int  # scenario 3
    cycles: int  # scenario 4: create/delete cycles
    in_flight: int  # scenario 4: cycles at once
    steps: int  # scenario 6: stateful steps
    timeout: float  # per scenario, seconds
    ipv6_share: float = 1.0  # the IPv6 rows' bursts, leader kills and steps, as a share of the IPv4 rows'

    def for_family(self, family: str) -> Profile:
        """The sizes of a scenario's IPv4 or IPv6 row."""
        if family == "ipv4" or self.ipv6_share == 1.0:
            return self
        share = self.ipv6_share
        return dataclasses.replace(
            self,
            burst_nodes=round(self.burst_nodes * share),
            leader_kills=max(1, round(self.leader_kills * share)),
            steps=round(self.steps * share),
        )


PROFILES = {
    # In CI: the IPv6 rows are half the size (100-Node bursts, 1 leader kill, 15 steps), so that both families
    # run in about 1.5 times the IPv4 rows' time.
    "quick": Profile(
        "quick", burst_nodes=200, kills=3, leader_kills=2, cycles=300, in_flight=20, steps=30, timeout=300, ipv6_share=0.5
    ),
    "full": Profile("full", burst_nodes=2000, kills=10, leader_kills=5, cycles=5000, in_flight=50, steps=200, timeout=3600),
}
PROFILE = PROFILES[os.environ.get("NODEIPAM_CHAOS", "quick")]
SUMMARIES: list[str] = []


def seed_for(scenario: str) -> int:
    """NODEIPAM_CHAOS_SEED if set, else a fresh one; printed in the summary so a failure can be replayed."""
    fixed = os.environ.get("NODEIPAM_CHAOS_SEED")
    return int(fixed) if fixed else random.SystemRandom().randrange(2**32)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if SUMMARIES:
        terminalreporter.section(f"chaos ({PROFILE.name} profile)")
        for line in SUMMARIES:
            terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def chaos_core(control_plane: LocalControlPlane) -> client.CoreV1Api:  # noqa: F811
    """A client with a connection pool large enough for 50 requests at once."""
    configuration = client.Configuration()
    from kubernetes import config as kube_config

    kube_config.load_kube_config(config_file=control_plane.kubeconfig, client_configuration=configuration)
    configuration.connection_pool_maxsize = 64
    return client.CoreV1Api(client.ApiClient(configuration))


def _retrying(call: Callable[[], Any], done_statuses: frozenset[int]) -> bool:
    """Call until it succeeds (True) or answers one of `done_statuses` (False); retries outages and 5xx/429."""
    deadline = time.monotonic() + REQUEST_DEADLINE
    while True:
        try:
            call()
            return True
        except ApiException as error:
            if error.status in done_statuses:
                return False
            if error.status not in RETRYABLE_STATUSES or time.monotonic() > deadline:
                raise
        except (urllib3.exceptions.HTTPError, OSError):
            if time.monotonic() > deadline:
                raise
        time.sleep(0.2)


def create_node(api: client.CoreV1Api, name: str, index: int = 0, pod_cidrs: tuple[str, ...] = ()) -> bool:
    """Register a Node through outages; False if it exists (possibly from an attempt whose answer was lost)."""
    return _retrying(lambda: api.create_node(realistic_node(name, index, pod_cidrs)), frozenset({409}))


def delete_node(api: client.CoreV1Api, name: str) -> bool:
    """Delete a Node through outages; False if it was not there."""
    return _retrying(lambda: api.delete_node(name), frozenset({404}))


_NAMED = re.compile(r"node ([^\s:,]+)(?::| has )")  # "node NAME: ..." and "node NAME has CIDR"


@dataclasses.dataclass
class AuditResult:
    nodes: int
    findings: list[str]  # problems the controller is answerable for
    duplicates: int  # of those, duplicate or overlapping ranges
    allocated: dict[str, int] | None  # the controller's count
    expected: dict[str, int]  # what the live Nodes hold

    @property
    def clean(self) -> bool:
        return not self.findings and self.allocated == self.expected


def audit_once(
    api: client.CoreV1Api,
    controller: ControllerProcess,
    ranges: Sequence[config.FamilyRange],
    service: str | None = None,
    foreign: frozenset[str] = frozenset(),
) -> AuditResult:
    """Duplicates, overlaps, out-of-range and missing ranges, plus the controller's count against the live Nodes.

    `foreign` names Nodes whose podCIDRs someone else set (bad data): findings
    that name only such Nodes are theirs, not the controller's.
    """
    nodes = node_infos(api)
    findings = [line for line in find_problems(nodes, ranges) if not set(_NAMED.findall(line)) <= foreign]
    services = [ipaddress.ip_network(cidr) for cidr in config.build_service_cidrs(service)] if service else []
    for node in nodes:
        if node.name in foreign:
            continue
        for cidr in node.pod_cidrs:
            network = ipaddress.ip_network(cidr, strict=False)
            findings.extend(
                f"overlapping podCIDRs: node {node.name} has {cidr}, the service range is {s}"
                for s in services
                if s.version == network.version and network.overlaps(s)  # type: ignore[arg-type]
            )
    duplicates = sum(1 for line in findings if line.startswith(("duplicate", "overlapping")))
    return AuditResult(len(nodes), findings, duplicates, allocated_metric(controller), expected_allocated(api, ranges, service))


def audit(
    api: client.CoreV1Api,
    controller: ControllerProcess,
    ranges: Sequence[config.FamilyRange],
    service: str | None = None,
    foreign: frozenset[str] = frozenset(),
    timeout: float = 120.0,
) -> AuditResult:
    """Wait until the audit is clean; the last result either way (the caller asserts, after its summary)."""
    results: list[AuditResult] = []

    def clean() -> bool:
        results[:] = [audit_once(api, controller, ranges, service, foreign)]
        if controller.process.poll() is not None:
            results[0].findings.append(f"the audited controller exited with {controller.process.returncode}")
            return True  # nothing will change now: stop waiting
        return results[0].clean

    with contextlib.suppress(AssertionError):
        wait_for(clean, timeout=timeout, interval=0.5, what="a clean audit")
    return results[0]


def assert_clean(result: AuditResult, controller: ControllerProcess) -> None:
    detail = "\n".join(result.findings[:20])
    assert not result.findings, f"{len(result.findings)} finding(s):\n{detail}"
    tail = "\n".join(controller.log().splitlines()[-30:])
    assert result.allocated == result.expected, (
        f"allocated count {result.allocated} != live Nodes' ranges {result.expected}\n{tail}"
    )


def summarize(scenario: str, result: AuditResult | None, faults: int, started: float, seed: int, extra: str = "") -> None:
    """One line per scenario for the report (and RELIABILITY.md)."""
    nodes = result.nodes if result else "?"
    duplicates = result.duplicates if result else "?"
    problems = len(result.findings) if result else "?"
    line = (
        f"chaos {scenario}: profile={PROFILE.name} nodes={nodes} faults={faults} duplicates={duplicates} "
        f"problems={problems} leak={'no' if result and result.allocated == result.expected else 'YES'} "
        f"time={time.monotonic() - started:.0f}s seed={seed}{' ' + extra if extra else ''}"
    )
    SUMMARIES.append(line)
    print(line)
