"""The chart's alerts and dashboard: rendered by helm, checked and unit-tested by promtool.

Every alert has series that fire it and series that do not (alerts_test.yaml); every dashboard
query parses; every metric the rules and the dashboard name is one the controller exports.
"""

from __future__ import annotations

import functools
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from controller.metrics import Metrics
from localcluster.binaries import ensure_binaries
from tests.chart.test_chart import CHART, FULLNAME, NAMESPACE, SCHEMA_ERROR, Values, render, render_fails, run_helm, with_cidr

ALERTS_TEST = Path(__file__).with_name("alerts_test.yaml")
DASHBOARD = CHART / "dashboards" / "nodeipam.json"
DASHBOARD_CONFIGMAP = f"{FULLNAME}-dashboard"
#: What Grafana puts in place of its variables before it sends a query.
GRAFANA_VARIABLES = {"$__rate_interval": "1m"}
METRIC_NAME = re.compile(r"\b(?:node_ipam_controller_\w+|leader_election_master_status)\b")
ALERTS = (
    "NodeIPAMRangeFilling",
    "NodeIPAMRangeAlmostFull",
    "NodeIPAMPoolFilling",
    "NodeIPAMPoolAlmostFull",
    "NodeIPAMNodesWaitingForRange",
    "NodeIPAMDuplicatePodCIDR",
    "NodeIPAMPodCIDRPatchFailures",
    "NodeIPAMBackgroundLoopFailing",
    "NodeIPAMNoLeader",
    "NodeIPAMControllerDown",
)


@functools.cache
def promtool() -> str:
    return str(ensure_binaries(("promtool",))["promtool"])


def run_promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool(), *args], capture_output=True, text=True, timeout=120, cwd=cwd)


def rule_spec(values: Values | None = None) -> dict[str, Any]:
    objects = render(with_cidr(prometheusRule={"enabled": True, **(values or {})}))
    rule: dict[str, Any] = objects[("PrometheusRule", FULLNAME)]
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    return rule


def rules() -> list[dict[str, Any]]:
    return [rule for group in rule_spec()["spec"]["groups"] for rule in group["rules"]]


def dashboard_exprs() -> list[str]:
    """Every panel target's query, with Grafana's variables in place."""
    exprs = []
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        for target in panel["targets"]:
            expr = target["expr"]
            for variable, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(variable, value)
            exprs.append(expr)
    return exprs


@functools.cache
def exported_names() -> frozenset[str]:
    """Every series name the controller's /metrics can carry, suffixes included."""
    metrics = Metrics()
    metrics.track_pools(list)
    metrics.track_leadership("nodeipam", lambda: True)
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}
    families = text_string_to_metric_families(metrics.exposition().decode())
    return frozenset(family.name + suffix for family in families for suffix in suffixes.get(family.type, ("",)))


# -- the objects ------------------------------------------------------------------------------------


def test_alerts_and_dashboard_are_off_by_default() -> None:
    kinds = {kind for kind, _ in render(with_cidr())}
    assert not kinds & {"PrometheusRule", "ConfigMap"}


def test_a_dry_run_has_every_alert_but_the_leader_one() -> None:
    """A dry run takes no Lease, by design: the no-leader alert would always fire."""
    dry = [rule["alert"] for group in rule_spec({})["spec"]["groups"] for rule in group["rules"]]
    objects = render(with_cidr(dryRun=True, prometheusRule={"enabled": True}))
    spec = objects[("PrometheusRule", FULLNAME)]["spec"]
    assert [rule["alert"] for group in spec["groups"] for rule in group["rules"]] == [a for a in dry if a != "NodeIPAMNoLeader"]
    assert "NodeIPAMNoLeader" in dry


@pytest.mark.parametrize(
    ("values", "namespace", "job"),
    [
        pytest.param({}, NAMESPACE, FULLNAME, id="defaults"),
        pytest.param({"namespace": "monitoring", "labels": {"release": "prometheus"}}, "monitoring", FULLNAME, id="elsewhere"),
        pytest.param({"job": "nodeipam-metrics"}, NAMESPACE, "nodeipam-metrics", id="job-of-a-scrape-config"),
    ],
)
def test_prometheus_rule_selects_this_release_only(values: Values, namespace: str, job: str) -> None:
    rule = rule_spec(values)
    assert rule["metadata"]["namespace"] == namespace
    assert rule["metadata"]["labels"]["app.kubernetes.io/instance"] == "ipam"
    for key, value in values.get("labels", {}).items():
        assert rule["metadata"]["labels"][key] == value
    alerts = [alert for group in rule["spec"]["groups"] for alert in group["rules"]]
    assert tuple(alert["alert"] for alert in alerts) == ALERTS
    for alert in alerts:
        # The series live in the release namespace, wherever the rule object is.
        assert f'job="{job}",namespace="{NAMESPACE}"' in alert["expr"], alert
        assert alert["labels"]["severity"] in ("warning", "critical")
        assert {"summary", "description"} <= set(alert["annotations"])


def test_rules_pass_promtool_check(tmp_path: Path) -> None:
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rule_spec()["spec"]))
    result = run_promtool("check", "rules", "rules.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(ALERTS)} rules found" in result.stdout, result.stdout


def test_alerts_fire_on_the_series_of_their_unit_tests_and_only_there(tmp_path: Path) -> None:
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rule_spec()["spec"]))
    tests = yaml.safe_load(ALERTS_TEST.read_text())
    tests["rule_files"] = ["rules.yaml"]
    (tmp_path / "alerts_test.yaml").write_text(yaml.safe_dump(tests))
    result = run_promtool("test", "rules", "alerts_test.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_series_that_fire_it_and_series_that_do_not() -> None:
    cases: dict[str, set[bool]] = {alert: set() for alert in ALERTS}
    for test in yaml.safe_load(ALERTS_TEST.read_text())["tests"]:
        for case in test["alert_rule_test"]:
            cases[case["alertname"]].add(bool(case["exp_alerts"]))
    assert {alert: fires for alert, fires in cases.items() if fires != {True, False}} == {}


def test_alerts_use_only_metrics_the_controller_exports() -> None:
    named = {name for rule in rules() for name in METRIC_NAME.findall(rule["expr"])}
    assert named - exported_names() == set()
    assert named  # the pattern matches what the rules use


# -- the dashboard ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "namespace", "label"),
    [
        pytest.param({}, NAMESPACE, ("grafana_dashboard", "1"), id="sidecar-defaults"),
        pytest.param(
            {
                "namespace": "grafana",
                "labelKey": "grafana.com/dashboard",
                "labelValue": "nodeipam",
                "annotations": {"grafana_folder": "IPAM"},
            },
            "grafana",
            ("grafana.com/dashboard", "nodeipam"),
            id="sidecar-configured",
        ),
    ],
)
def test_dashboard_configmap_is_labelled_for_grafanas_sidecar(values: Values, namespace: str, label: tuple[str, str]) -> None:
    configmap = render(with_cidr(grafanaDashboard={"enabled": True, **values}))[("ConfigMap", DASHBOARD_CONFIGMAP)]
    metadata = configmap["metadata"]
    assert metadata["namespace"] == namespace
    assert metadata["labels"][label[0]] == label[1]
    assert metadata.get("annotations", {}) == values.get("annotations", {})
    assert configmap["data"] == {"nodeipam.json": DASHBOARD.read_text().rstrip("\n")}
    dashboard = json.loads(configmap["data"]["nodeipam.json"])
    assert dashboard["uid"] == "nodeipam"


def test_dashboard_shows_what_the_issue_asks_for() -> None:
    titles = [panel["title"] for panel in json.loads(DASHBOARD.read_text())["panels"]]
    for wanted in ("pool and family", "Nodes waiting", "Allocations and releases", "latency", "patch failures", "Leader"):
        assert any(wanted in title for title in titles), (wanted, titles)


def test_every_dashboard_query_parses(tmp_path: Path) -> None:
    exprs = dashboard_exprs()
    recording = [{"record": f"nodeipam:dashboard_query:{index}", "expr": expr} for index, expr in enumerate(exprs)]
    (tmp_path / "queries.yaml").write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": recording}]}))
    result = run_promtool("check", "rules", "queries.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(exprs)} rules found" in result.stdout, result.stdout


def test_dashboard_uses_only_metrics_the_controller_exports() -> None:
    variables = [
        variable["definition"] for variable in json.loads(DASHBOARD.read_text())["templating"]["list"] if "definition" in variable
    ]
    named = {name for expr in [*dashboard_exprs(), *variables] for name in METRIC_NAME.findall(expr)}
    assert named - exported_names() == set()
    assert "leader_election_master_status" in named


def test_helm_lint_strict_passes_with_alerts_and_dashboard() -> None:
    result = run_helm(
        "lint", "--strict", str(CHART), values=with_cidr(prometheusRule={"enabled": True}, grafanaDashboard={"enabled": True})
    )
    assert result.returncode == 0, result.stdout + result.stderr


# -- bad values -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "field"),
    [
        pytest.param(with_cidr(prometheusRule={"enabled": "yes"}), "enabled", id="rule-enabled-not-a-boolean"),
        pytest.param(with_cidr(prometheusRule={"severity": "page"}), "severity", id="rule-unknown-key"),
        pytest.param(with_cidr(prometheusRule={"labels": {"release": 1}}), "release", id="rule-label-not-a-string"),
        pytest.param(with_cidr(grafanaDashboard={"labelKey": ""}), "labelKey", id="dashboard-empty-label-key"),
        pytest.param(with_cidr(grafanaDashboard={"labelValue": 1}), "labelValue", id="dashboard-label-value-not-a-string"),
        pytest.param(with_cidr(grafanaDashboard={"folder": "IPAM"}), "folder", id="dashboard-unknown-key"),
    ],
)
def test_schema_rejects_bad_monitoring_values(values: Values, field: str) -> None:
    stderr = render_fails(values)
    assert SCHEMA_ERROR in stderr, stderr
    assert field in stderr, stderr
