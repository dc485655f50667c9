"""`nodeipam run --dry-run` beside kube-controller-manager, against the real API server.

kube-controller-manager is started only once the dry run has decided on a
new Node, so that each comparison is made, and in a known order. Started
afresh, kube-controller-manager hands out the lowest free range, while the
dry run, which ran on, goes on from its last one: after a range in the
middle came free, the two differ, and that is the disagreement counted.
The API server's audit log shows every request the dry run sent.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import wait_for
from tests.integration.conftest import Cluster, ControllerProcess, KubeControllerManager

pytestmark = pytest.mark.integration

READ_VERBS = {"get", "list", "watch"}


def counter(controller: ControllerProcess, name: str, labels: str = "") -> float:
    """One sample of the controller's /metrics, 0 when absent."""
    text = controller.read("/metrics")
    match = re.search(rf"^node_ipam_controller_{name}_total{re.escape(labels)} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


@pytest.mark.parametrize(
    ("cluster_cidr", "mask", "expected"),
    [
        ("10.250.0.0/16", 24, ["10.250.0.0/24", "10.250.1.0/24", "10.250.0.0/24"]),
        ("fd00:250::/56", 64, ["fd00:250::/64", "fd00:250:0:1::/64", "fd00:250::/64"]),
    ],
    ids=["ipv4", "ipv6"],
)
def test_dry_run_beside_kube_controller_manager_counts_its_disagreements_and_sends_only_reads(
    cluster: Cluster,
    start_controller: Callable[..., ControllerProcess],
    tmp_path: Path,
    cluster_cidr: str,
    mask: int,
    expected: list[str],
) -> None:
    plane = cluster.plane
    kcm = KubeControllerManager(plane, tmp_path / "kube-controller-manager.log", cluster_cidr, mask)
    sent_before = len(plane.audited_requests())
    controller = start_controller(
        f"--kubeconfig={plane.audited_kubeconfig()}",
        f"--cluster-cidr={cluster_cidr}",
        f"--node-cidr-mask-size={mask}",
        "--dry-run",
        "--leader-elect=true",  # ignored: a dry run takes no Lease
        "--authorization-always-allow-paths=/healthz,/readyz,/livez,/metrics",  # no token reviews to audit
    )
    try:
        wait_for(lambda: controller.get("/readyz") == 200, timeout=60, what="the dry run ready")

        def served_by_kcm(name: str, predicted: int) -> str:
            """Create `name`; once the dry run has decided on it, let kube-controller-manager allocate; what it gave."""
            cluster.create_nodes([name])
            wait_for(
                lambda: counter(controller, "dry_run_writes_withheld", '{kind="podcidr"}') >= predicted,
                what=f"the dry run's decision for {name}",
            )
            kcm.start()
            try:
                (given,) = cluster.wait_assigned([name])[name]
            finally:
                kcm.stop()
            return given

        given = [served_by_kcm("dry-a", 1), served_by_kcm("dry-b", 2)]
        wait_for(lambda: counter(controller, "plan_agreements") == 2, what="two agreements")
        cluster.delete_node("dry-a")
        wait_for(lambda: f"released {expected[0]} from deleted node dry-a" in controller.log(), what="dry-a's range released")
        given.append(served_by_kcm("dry-c", 3))
        assert given == expected
        wait_for(lambda: counter(controller, "plan_disagreements") == 1, what="one disagreement")
        assert counter(controller, "plan_agreements") == 2
        log = controller.log()
        assert f"node dry-c got {expected[2]} from another allocator; this controller would have given it" in log
        assert "dry run: would patch node dry-a" in log
        assert cluster.events_for("dry-c") == []  # no Event, though a disagreement was logged

        sent = plane.audited_requests()[sent_before:]
        assert sent, "the audit log shows none of the dry run's requests"
        writes = [f"{event['verb']} {event['requestURI']}" for event in sent if event["verb"] not in READ_VERBS]
        assert writes == []
        assert not [event for event in sent if "/leases" in str(event["requestURI"])], "a dry run reads no Lease either"
    finally:
        kcm.stop()
        cluster.delete_all_nodes()
