"""The operator's whole flow on the real bed: plan, approval, backup, migrate, verify, every Stalled reason.

The scenarios marked `on_every_engine` run on PostgreSQL and on MariaDB with the same code; the others test what
does not depend on the database (the Secret, the URL's form, the API server's validation) and run on PostgreSQL.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from alembic_operator import constants as c
from apps import Rev
from e2e import (
    BASE_REVISIONS,
    DROP_LEGACY,
    E2E,
    R1,
    R2,
    R3,
    R4,
    checksum,
    columns,
    on_every_engine,
    revision,
    sha256_file,
)
from harness import wait_for

pytestmark = pytest.mark.bed


@on_every_engine
def test_migrates_to_head_then_ready(e2e: E2E) -> None:
    project = e2e.project(BASE_REVISIONS)
    e2e.cluster.create("shop", e2e.spec(project))
    proc = e2e.bed.kubectl("wait", "-n", e2e.ns, "--for=condition=Ready", "dbm/shop", "--timeout=120s")
    assert proc.returncode == 0, proc.stderr + json.dumps(e2e.cluster.get("shop").get("status"))
    obj = e2e.cluster.get("shop")
    st = obj["status"]
    assert st["phase"] == "Succeeded"
    assert st["observedGeneration"] == obj["metadata"]["generation"]
    assert st["currentRevision"] == R3 and st["targetRevision"] == R3
    assert st["plan"]["revisions"] == [R1, R2, R3] and st["plan"]["destructive"] == []
    assert st["plan"]["hash"].startswith("sha256:")
    conds = {x["type"]: x for x in st["conditions"]}
    assert (conds["Ready"]["status"], conds["Reconciling"]["status"], conds["Stalled"]["status"]) == (
        "True", "False", "False")
    assert conds["BackupSucceeded"]["status"] == "True" and conds["Migrated"]["status"] == "True"
    assert revision(e2e.db) == R3
    # The backup is real: the engine's dump (pg_dump's custom format, mariadb-dump's SQL) with the recorded size and
    # checksum, on the volume.
    dumps = list(e2e.backups.rglob("*.dump"))
    assert len(dumps) == 1
    assert st["backup"]["sha256"] == sha256_file(dumps[0])
    assert st["backup"]["sizeBytes"] == dumps[0].stat().st_size
    assert e2e.kind.dump_head.match(dumps[0].read_bytes()[:1024])
    assert st["backup"].get("revision") in (None, "")  # the database was empty
    assert st["history"][-1]["result"] == "Succeeded" and st["history"][-1]["to"] == R3
    assert e2e.cluster.job_roles("shop") == ["backup-g1", "migrate-g1", "plan-g1"]
    text = e2e.operator.metrics()
    assert f'alembic_operator_current_revision_info{{name="shop",namespace="{e2e.ns}",revision="{R3}"}} 1.0' in text
    assert f'alembic_operator_jobs_total{{name="shop",namespace="{e2e.ns}",result="succeeded",role="migrate"}}' in text
    # Every Job: no retries, restricted pod security, URL only through secretKeyRef.
    for job in e2e.cluster.jobs("shop"):
        assert job["spec"]["backoffLimit"] == 0
        pod = job["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        for ctr in pod["containers"] + pod.get("initContainers", []):
            assert ctr["securityContext"]["allowPrivilegeEscalation"] is False
            assert ctr["securityContext"]["capabilities"] == {"drop": ["ALL"]}
            for env in ctr.get("env", []):
                assert "value" not in env or e2e.kind.url_word not in env["value"]
        assert job["metadata"]["ownerReferences"][0]["kind"] == c.KIND
    # One Event per phase change.
    for reason in ("Planning", "BackingUp", "Migrating", "Migrated"):
        e2e.cluster.wait_event("shop", reason)
    out = e2e.bed.kubectl("get", "dbm", "-n", e2e.ns)
    header = out.stdout.splitlines()[0].split()
    assert header[:6] == ["NAME", "PHASE", "CURRENT", "TARGET", "READY", "AGE"], out.stdout
    assert R3 in out.stdout and "Succeeded" in out.stdout


@on_every_engine
def test_nothing_to_do_is_ready_without_backup_or_migration(e2e: E2E) -> None:
    project = e2e.project(BASE_REVISIONS)
    e2e.upgrade_directly(project, R3)
    e2e.cluster.create("pinned", e2e.spec(project, target=R3))
    e2e.cluster.wait_condition("pinned", "Ready", reason="AtTargetRevision", timeout=60)
    assert e2e.cluster.jobs("pinned") == []  # an explicit revision already there: not even a plan
    e2e.cluster.create("head", e2e.spec(project))
    e2e.cluster.wait_condition("head", "Ready", timeout=90)
    assert e2e.cluster.job_roles("head") == ["plan-g1"]
    assert e2e.cluster.get("head")["status"]["targetRevision"] == R3


@on_every_engine
def test_destructive_plan_waits_for_approval_of_that_exact_plan(e2e: E2E) -> None:
    project = e2e.project([*BASE_REVISIONS, DROP_LEGACY])
    e2e.upgrade_directly(project, R3)
    e2e.seed()
    customers = checksum(e2e.db, "customers")
    e2e.cluster.create("shop", e2e.spec(project))
    obj = e2e.cluster.wait_condition("shop", "Stalled", reason="DestructiveChangesNotApproved")
    st = obj["status"]
    assert st["phase"] == "AwaitingApproval"
    assert {x["type"]: x["status"] for x in st["conditions"]}["ApprovalRequired"] == "True"
    assert st["plan"]["destructive"] == [f"DROP COLUMN orders.legacy_code (revision {R4})"]
    assert st["plan"]["hash"] in st["message"]
    assert e2e.cluster.job_roles("shop") == ["plan-g1"]  # nothing ran
    assert revision(e2e.db) == R3
    # A wrong hash approves nothing.
    e2e.cluster.patch("shop", {"metadata": {"annotations": {c.APPROVE_ANNOTATION: "sha256:" + "0" * 64}}})
    wait_for(lambda: any(e["reason"] == "DestructiveChangesNotApproved" for e in e2e.cluster.events("shop")), 10)
    assert e2e.cluster.get("shop")["status"]["phase"] == "AwaitingApproval"
    e2e.cluster.patch("shop", {"metadata": {"annotations": {c.APPROVE_ANNOTATION: st["plan"]["hash"]}}})
    e2e.cluster.wait_condition("shop", "Ready")
    assert revision(e2e.db) == R4
    assert checksum(e2e.db, "customers") == customers
    assert "legacy_code" not in columns(e2e.db, "orders")


def test_secret_not_found_stalls_then_recovers_when_created(e2e: E2E) -> None:
    project = e2e.project(BASE_REVISIONS[:1])
    spec = e2e.spec(project)
    spec["database"]["urlSecretRef"] = {"name": "late", "key": "url"}
    e2e.cluster.create("shop", spec)
    obj = e2e.cluster.wait_condition("shop", "Stalled", reason="SecretNotFound", timeout=30)
    assert "late" in obj["status"]["message"]
    assert {x["type"]: x["status"] for x in obj["status"]["conditions"]}["Ready"] == "False"
    e2e.cluster.secret("late", {"url": e2e.pod_url})
    e2e.cluster.wait_condition("shop", "Ready", timeout=150)


def test_invalid_url_stalls_and_never_echoes_the_value(e2e: E2E) -> None:
    e2e.cluster.secret("bad", {"url": f"not a url {e2e.db.password}"})
    spec = e2e.spec(e2e.project(BASE_REVISIONS[:1]))
    spec["database"]["urlSecretRef"] = {"name": "bad", "key": "url"}
    obj = e2e.cluster.create("shop", spec)
    obj = e2e.cluster.wait_condition("shop", "Stalled", reason="InvalidDatabaseURL", timeout=30)
    assert "postgresql+psycopg://" in obj["status"]["message"]  # says what a valid one looks like


def test_unreachable_database_keeps_reconciling(e2e: E2E) -> None:
    from harness import free_port

    e2e.cluster.secret("down", {"url": f"postgresql+psycopg://app:{e2e.db.password}@127.0.0.1:{free_port(e2e.bed)}/x"})
    spec = e2e.spec(e2e.project(BASE_REVISIONS[:1]))
    spec["database"]["urlSecretRef"] = {"name": "down", "key": "url"}
    e2e.cluster.create("shop", spec)
    obj = e2e.cluster.wait_condition("shop", "Reconciling", reason="DatabaseUnreachable", timeout=30)
    conds = {x["type"]: x["status"] for x in obj["status"]["conditions"]}
    assert conds["Stalled"] == "False" and conds["Ready"] == "False"


def test_multiple_heads_stall(e2e: E2E) -> None:
    project = e2e.project([*BASE_REVISIONS[:1],
                           Rev("aaaa00000002", upgrade=['op.execute("SELECT 1")'], down_revision=R1),
                           Rev("bbbb00000002", upgrade=['op.execute("SELECT 2")'], down_revision=R1)])
    e2e.cluster.create("shop", e2e.spec(project))
    obj = e2e.cluster.wait_condition("shop", "Stalled", reason="MultipleHeads", timeout=90)
    assert "aaaa00000002" in obj["status"]["message"] and "merge" in obj["status"]["message"]
    assert obj["status"]["phase"] == "Failed"


def test_unknown_revision_stalls_with_the_fix(e2e: E2E) -> None:
    project = e2e.project(BASE_REVISIONS)
    e2e.db.query("CREATE TABLE alembic_version (version_num varchar(32) PRIMARY KEY)")
    e2e.db.query("INSERT INTO alembic_version VALUES ('0badc0ffee00')")
    e2e.cluster.create("shop", e2e.spec(project))
    obj = e2e.cluster.wait_condition("shop", "Stalled", reason="UnknownRevision", timeout=90)
    assert "0badc0ffee00" in obj["status"]["message"]
    assert obj["status"]["currentRevision"] == "0badc0ffee00"
    assert e2e.cluster.job_roles("shop") == ["plan-g1"]


def test_invalid_specs_are_refused_by_the_api_server(e2e: E2E) -> None:
    from kubernetes.client import ApiException

    project = e2e.project(BASE_REVISIONS[:1])
    bad = e2e.spec(project, rollback={"strategy": "Sometimes"})
    with pytest.raises(ApiException) as err:
        e2e.cluster.create("bad", bad)
    assert "spec.rollback.strategy" in str(err.value.body)


@on_every_engine
def test_backup_retention_keeps_the_newest(e2e: E2E) -> None:
    revs = [*BASE_REVISIONS, DROP_LEGACY]
    project = e2e.project(revs)
    spec = e2e.spec(project, target=R1, approval={"allowDestructive": True})
    spec["backup"]["retain"] = 2
    e2e.cluster.create("shop", spec)
    e2e.cluster.wait_condition("shop", "Ready")
    for target in (R2, R3, R4):
        e2e.cluster.patch("shop", {"spec": {"targetRevision": target}})
        wait_for(lambda t=target: e2e.cluster.get("shop")["status"].get("targetRevision") == t
                 and e2e.cluster.get("shop")["status"].get("phase") == "Succeeded", 120, f"Ready at {target}")
    dumps = sorted(Path(e2e.backups).rglob("*.dump"))
    assert len(dumps) == 2, dumps
    history = e2e.cluster.get("shop")["status"]["history"]
    assert [h["to"] for h in history] == [R1, R2, R3, R4]


@on_every_engine
def test_baseline_adopts_a_database_that_predates_alembic(e2e: E2E) -> None:
    project = e2e.project(BASE_REVISIONS)
    e2e.upgrade_directly(project, R2)
    e2e.db.query("DROP TABLE alembic_version")  # as if the schema had been made by hand
    e2e.db.query("INSERT INTO customers (id, name) VALUES (1, 'ada')")
    e2e.cluster.create("shop", e2e.spec(project, baseline=R2))
    obj = e2e.cluster.wait_condition("shop", "Ready", timeout=120)
    st = obj["status"]
    assert [(h["from"], h["to"], h["result"]) for h in st["history"]] == [
        ("none", R2, "Baselined"), (R2, R3, "Succeeded")]
    assert st["plan"]["revisions"] == [R3]  # R1 and R2 were never run against the existing tables
    assert e2e.cluster.job_roles("shop") == ["backup-g1", "migrate-g1", "plan-g1", "stamp-g1"]
    assert e2e.db.query("SELECT name FROM customers") == [("ada",)]
    e2e.cluster.wait_event("shop", "Baselined")


@on_every_engine
def test_drift_check_reports_a_column_added_by_hand(e2e: E2E) -> None:
    models = '''
sa.Table("customers", metadata, sa.Column("id", sa.Integer, primary_key=True),
         sa.Column("name", sa.String(80), nullable=False))
'''
    project = e2e.project(BASE_REVISIONS[:1], models=models)
    e2e.cluster.create("shop", e2e.spec(project, driftCheck={"interval": "10s"}))
    e2e.cluster.wait_condition("shop", "Drifted", "False", reason="NoDrift", timeout=120)
    e2e.db.query("ALTER TABLE customers ADD COLUMN nickname text")
    obj = e2e.cluster.wait_condition("shop", "Drifted", "True", reason="SchemaDrift", timeout=120)
    assert "nickname" in obj["status"]["drift"]["differences"][0]
    conds = {x["type"]: x["status"] for x in obj["status"]["conditions"]}
    assert conds["Ready"] == "True"  # drift is reported; the schema is never changed by the operator
    e2e.cluster.wait_event("shop", "SchemaDrift", "Warning")
    drifted = f'alembic_operator_drifted{{name="shop",namespace="{e2e.ns}"}} 1.0'
    wait_for(lambda: drifted in e2e.operator.metrics(), 30, "the drift metric")
    assert "nickname" in columns(e2e.db, "customers")
    e2e.db.query("ALTER TABLE customers DROP COLUMN nickname")
    e2e.cluster.wait_condition("shop", "Drifted", "False", reason="NoDrift", timeout=120)
