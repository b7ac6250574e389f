"""The chart's alerts end to end on the bed (issue 26): a real Prometheus (built from its Go module) scrapes the test's
operator and evaluates the chart's own rules (rendered from templates/prometheusrule.yaml), a real Alertmanager
routes to a webhook receiver of the test, and a failed migration arrives there as AlembicMigrationFailed with the
resource's namespace, name and reason, its summary and runbook. The delay from the migration Job's failure to the
alert's arrival is printed (scrape and evaluation every second; no timed assertion)."""

from __future__ import annotations

import time
from datetime import datetime

import pytest

from chart import render
from e2e import BASE_REVISIONS, E2E, FAIL, FAILING_AT_ONCE, R3, revision
from harness import wait_for
from monitoring import monitoring

pytestmark = pytest.mark.bed

RELEASE_JOB = "rel-alembic-operator"  # chart.render's release "rel": the job the rules' operator alerts select


def _time(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def test_failed_migration_reaches_alertmanagers_receiver(e2e: E2E) -> None:
    rule = next(d for d in render({"prometheusRule": {"enabled": True}}) if d["kind"] == "PrometheusRule")
    with monitoring(e2e.bed, e2e.tmp, rule["spec"]["groups"], RELEASE_JOB, e2e.operator.metrics_port) as mon:
        project = e2e.project([*BASE_REVISIONS, FAILING_AT_ONCE])
        e2e.upgrade_directly(project, R3)
        e2e.seed()  # a free order (total 0): FAIL's CHECK (total > 0) fails, its transaction rolls back
        e2e.cluster.create("shop", e2e.spec(project, FAIL))
        e2e.cluster.wait_phase("shop", "Failed", timeout=240)
        assert revision(e2e.db) == R3

        # 1. The alert arrives, naming the resource, its reason, a summary and the runbook.
        def arrived() -> tuple[float, dict[str, object]] | None:
            return next(iter(mon.receiver.alerts("AlembicMigrationFailed")), None)

        try:
            at, alert = wait_for(arrived, 60, "AlembicMigrationFailed at the receiver", interval=0.05)
        except AssertionError:
            raise AssertionError(f"no alert; Prometheus sees {mon.query('ALERTS')} and "
                                 f"{mon.query('alembic_operator_phase_info')}\n{mon.log('alertmanager')[-2000:]}"
                                 ) from None
        labels = alert["labels"]
        assert isinstance(labels, dict)
        assert {k: labels[k] for k in ("alertname", "namespace", "name", "phase", "reason", "severity")} == {
            "alertname": "AlembicMigrationFailed", "namespace": e2e.ns, "name": "shop", "phase": "Failed",
            "reason": "JobFailed", "severity": "critical"}
        annotations = alert["annotations"]
        assert isinstance(annotations, dict)
        assert annotations["summary"] == f"DatabaseMigration {e2e.ns}/shop: the migration failed (JobFailed)"
        assert annotations["runbook_url"].endswith("docs/runbooks.md#alert-alembicmigrationfailed")
        assert alert["status"] == "firing"

        # 2. The delay from the Job's failure (its Failed condition) to the alert at the receiver.
        job = next(j for j in e2e.cluster.jobs("shop") if j["metadata"]["name"].startswith("shop-migrate-"))
        failed = next(x for x in job["status"]["conditions"] if x["type"] == "Failed" and x["status"] == "True")
        status = e2e.cluster.get("shop")["status"]
        stalled = next(x for x in status["conditions"] if x["type"] == "Stalled")
        print(f"\nmigrate Job failed at {failed['lastTransitionTime']}, resource Stalled/{stalled['reason']} at "
              f"{stalled['lastTransitionTime']}; AlembicMigrationFailed at the receiver "
              f"{at - _time(failed['lastTransitionTime']):.1f} s after the Job's failure "
              f"({at - _time(stalled['lastTransitionTime']):.1f} s after the status; 1 s scrape and evaluation, "
              "Alertmanager group_wait 0s; the Job's time has a resolution of 1 s)")

        # 3. What Prometheus read: the alert's own series and the backup's success, and no other alert fired: the
        # backup, the operator (up, leading) and the other resources' alerts stay silent.
        assert mon.query('alembic_operator_condition_transition_timestamp_seconds{condition="RolledBack",'
                         'status="True",reason="TransactionRolledBack",name="shop"}')
        assert mon.query('alembic_operator_leading == 1')
        time.sleep(2)  # two more evaluations: what else would fire has had its chance
        firing = {a["labels"]["alertname"] for n in mon.receiver.notifications for a in n.alerts}
        assert firing == {"AlembicMigrationFailed"}, firing
        assert {r["metric"]["alertname"] for r in mon.query('ALERTS{alertstate="firing"}')} == {
            "AlembicMigrationFailed"}
        # No secret in what Alertmanager was sent.
        assert not [body for body in mon.receiver.raw if e2e.db.password.encode() in body]
