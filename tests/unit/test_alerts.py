"""The chart's alerts and dashboard, checked with Prometheus' own promtool (built from its Go module: `make
prometheus`): the PrometheusRule renders to rules `promtool check rules` accepts, and `promtool test rules` runs the
unit tests of tests/unit/prometheus/ (every alert fires when it should and stays silent when it should not). Every
alert names the namespace, the resource and the reason, and links an entry of docs/runbooks.md; every metric the
rules and the dashboard's panels read is one the operator exports; every panel's query parses (as a recording rule)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from alembic_operator import metrics
from alembic_operator.api import parse_status
from bed.prometheus import binary
from chart import CHART, REPO, find, one, render

TESTS = Path(__file__).resolve().parent / "prometheus"


def promtool(*args: str, cwd: Path) -> str:
    proc = subprocess.run([str(binary("promtool")), *args], cwd=cwd, capture_output=True, text=True, timeout=300,
                          check=False)
    assert proc.returncode == 0, f"promtool {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def rule_groups(values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    rule = one(render({"prometheusRule": {"enabled": True, **(values or {})}}), "PrometheusRule")
    return list(rule["spec"]["groups"])


def alerts(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for g in groups for r in g["rules"] if "alert" in r]


def exported() -> set[str]:
    """Every sample name the operator exports (with _total, _bucket, _sum, _count), every series set once."""
    m = metrics.Metrics(CollectorRegistry())
    m.reconcile_finished("n", "a", 1, "ready")
    m.job_finished("n", "a", "migrate", 1, True)
    m.backup_size("n", "a", 1)
    m.rollback("n", "a", "restore")
    m.held_pods("n", "a", 1)
    m.drifted("n", "a", True)
    m.current_revision("n", "a", "r")
    status = parse_status({"backup": {"completedAt": "2026-01-01T00:00:00Z"}, "conditions": [
        {"type": "Stalled", "status": "True", "reason": "JobFailed", "message": "", "lastTransitionTime":
         "2026-01-01T00:00:00Z"}]})
    m.resource_state("n", "a", metrics.state_of(status, backup_enabled=True))
    m.queued("n", "a", True)
    m.last_run_duration("n", "a", "r", 1)
    m.notification("n", "a", "operator", "Failed", "failed")
    m.notifications_retrying("n", "a", {("operator", "Failed"): 1})
    text = generate_latest(m.registry).decode()
    return {s.name for f in text_string_to_metric_families(text) for s in f.samples}


_KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool",
             "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads: identifiers outside strings, label matchers, ranges and grouping
    clauses, not called as functions."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in re.finditer(r"(?<![\w$.])([a-zA-Z_:][\w:]*)\s*(\()?", text):
        if not match.group(2) and match.group(1) not in _KEYWORDS:
            names.add(match.group(1))
    return names


def test_metric_names_reads_what_promql_reads() -> None:
    assert metric_names('sum by (a) (rate(x_total{b="c{d}"}[5m])) / on (a) group_left(z) y > bool 2') == {"x_total",
                                                                                                          "y"}
    assert metric_names("histogram_quantile(0.9, sum by (le) (rate(h_bucket[1m]))) and time() - t") == {"h_bucket",
                                                                                                         "t"}


def test_rules_pass_promtool_check_and_their_unit_tests(tmp_path: Path) -> None:
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": rule_groups()}))
    assert "SUCCESS: 11 rules found" in promtool("check", "rules", "rules.yaml", cwd=tmp_path)
    files = sorted(p.name for p in TESTS.glob("*.test.yaml"))
    for name in files:
        shutil.copy(TESTS / name, tmp_path / name)
    out = promtool("test", "rules", *files, cwd=tmp_path)
    assert out.count("SUCCESS") == len(files), out


def test_every_alert_is_tested_both_ways() -> None:
    """Each alert has a promtool case where it fires and one where it stays silent."""
    fires: set[str] = set()
    silent: set[str] = set()
    for path in TESTS.glob("*.test.yaml"):
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                (fires if check.get("exp_alerts") else silent).add(check["alertname"])
    names = {a["alert"] for a in alerts(rule_groups())}
    assert names == fires, names ^ fires
    assert names <= silent, names - silent


def _slug(heading: str) -> str:
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_alert_names_the_resource_and_reason_and_links_its_runbook() -> None:
    anchors = {_slug(line[3:]) for line in (REPO / "docs" / "runbooks.md").read_text().splitlines()
               if line.startswith("## ")}
    for alert in alerts(rule_groups()):
        name, annotations, labels = alert["alert"], alert["annotations"], alert["labels"]
        assert set(annotations) == {"summary", "description", "runbook_url"}, name
        url = annotations["runbook_url"]
        assert url.startswith(CHART_RUNBOOK + "#") and url.split("#", 1)[1] in anchors, (name, url)
        assert labels["severity"] in ("critical", "warning"), name
        text = annotations["summary"]
        if alert in alerts(rule_groups())[:9]:  # the resources' alerts (the rest are the operator's own)
            assert "{{ $labels.namespace }}/{{ $labels.name }}" in text, name
            assert "reason" in labels or "{{ $labels.reason }}" in text, name
        else:
            assert labels["namespace"] == "ops" and labels["reason"], name


CHART_RUNBOOK = yaml.safe_load((CHART / "values.yaml").read_text())["prometheusRule"]["runbookURL"]


def test_thresholds_are_values() -> None:
    groups = rule_groups({"stalledMinutes": 5, "approvalPendingHours": 2, "backupMaxAgeDays": 0, "queuedMinutes": 7,
                          "lockTimeouts": {"count": 5, "window": "30m"}, "operatorAbsentFor": "2m",
                          "operatorSelector": 'namespace="ops", service="op-metrics"', "runbookURL": "https://x/r.md",
                          "severity": {"failed": "page"}, "notificationRetryingMinutes": 0})
    by_name = {a["alert"]: a for a in alerts(groups)}
    assert "> 300" in by_name["AlembicMigrationStalled"]["expr"]
    assert "> 7200" in by_name["AlembicApprovalPending"]["expr"]
    assert "AlembicBackupTooOld" not in by_name and "AlembicNotificationUndelivered" not in by_name
    assert alerts(rule_groups())[8]["for"] == "30m"  # AlembicNotificationUndelivered, by default
    assert "> 420" in by_name["AlembicJobsQueued"]["expr"]
    assert "[30m]) >= 5" in by_name["AlembicLockTimeoutsRepeating"]["expr"]
    assert by_name["AlembicOperatorAbsent"]["for"] == "2m"
    assert 'up{namespace="ops", service="op-metrics"}' in by_name["AlembicOperatorAbsent"]["expr"]
    assert by_name["AlembicMigrationFailed"]["labels"]["severity"] == "page"
    assert by_name["AlembicSchemaDrift"]["annotations"]["runbook_url"] == "https://x/r.md#alert-alembicschemadrift"
    assert not find(render(), "PrometheusRule")


def test_rules_read_only_exported_metrics() -> None:
    names = exported() | {"up"}  # up: Prometheus' own, for the operator's targets
    for alert in alerts(rule_groups()):
        assert metric_names(alert["expr"]) <= names, (alert["alert"], metric_names(alert["expr"]) - names)


def dashboard() -> dict[str, Any]:
    cm = one(render({"grafanaDashboard": {"enabled": True}}), "ConfigMap")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert not [d for d in render() if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-dashboard")]
    return dict(json.loads(cm["data"]["alembic-operator.json"]))


def grafana_free(expr: str) -> str:
    """A panel's query as Prometheus reads it once Grafana has put in its variables."""
    for var, value in (("$__rate_interval", "5m"), ("$__range", "24h"), ("$__interval", "1m"),
                       ("$namespace", ".*")):
        expr = expr.replace(var, value)
    return expr


def test_dashboard_panels_parse_and_read_only_exported_metrics(tmp_path: Path) -> None:
    board = dashboard()
    exprs = [grafana_free(t["expr"]) for p in board["panels"] for t in p.get("targets", [])]
    assert len(exprs) >= 15
    titles = {p["title"] for p in board["panels"]}
    for wanted in ("Runs per resource", "Failures and rollbacks", "Job duration (p95) per resource",
                   "Last migration per revision", "Backup age", "Backup size", "Held pods", "Job slots", "Lock waits",
                   "Notifications delivered", "Notification attempts failed", "Notifications retrying now"):
        assert wanted in titles
    rules = {"groups": [{"name": "dashboard", "rules": [{"record": f"dashboard:panel_{i}", "expr": e}
                                                        for i, e in enumerate(exprs)]}]}
    (tmp_path / "dashboard.yaml").write_text(yaml.safe_dump(rules))
    assert f"SUCCESS: {len(exprs)} rules found" in promtool("check", "rules", "dashboard.yaml", cwd=tmp_path)
    names = exported()
    for expr in exprs:
        assert metric_names(expr) and metric_names(expr) <= names, (expr, metric_names(expr) - names)
    variable = board["templating"]["list"][1]["query"]["query"]
    assert metric_names(variable.removeprefix("label_values(").split(",")[0]) <= names


@pytest.mark.parametrize("part", ["prometheusRule", "grafanaDashboard", "notifications"])
def test_readmes_show_how_to_turn_each_part_on(part: str) -> None:
    for readme in (REPO / "README.md", CHART / "README.md"):
        assert f"{part}.enabled=true" in readme.read_text(), readme
