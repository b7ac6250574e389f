"""spec.rehearsal on the real bed: the plan runs first on a scratch copy of the backup; a failure there stops the run
before production is touched (no migrate, downgrade or restore Job), and no scratch database is left on the server
(its list read from the server) after each way a rehearsal ends: its pod deleted mid-run (the runner drops its copy
on SIGTERM), a revision failing on production's rows, and the operator SIGKILLed mid-rehearsal with the rehearsal's
processes SIGKILLed while no operator runs (the copy is left; the restarted operator finds it and drops it). The
scratch server is production's own server (the Secret names its administrative database), its user allowed to
create and drop alembic_rehearsal_* databases."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa

from alembic_operator import constants as c
from bed import realnode
from e2e import (
    BASE_REVISIONS,
    E2E,
    FAIL,
    FAILING_AT_ONCE,
    GATE_TABLE,
    R3,
    R4,
    checksum,
    columns,
    gated,
    has_table,
    on_every_engine,
    revision,
)
from harness import wait_for

pytestmark = pytest.mark.bed

PREFIX = "alembic_rehearsal_"


def scratch_server(e2e: E2E, request: pytest.FixtureRequest) -> None:
    """The Secret `scratch`: production's server, on its administrative database (PostgreSQL: postgres, the app role
    has CREATEDB; MariaDB: none, the app user granted alembic_rehearsal_%)."""
    url = sa.make_url(e2e.pod_url)
    if e2e.kind.name == "mariadb":
        with request.getfixturevalue("mariadb").admin() as conn, conn.cursor() as cur:
            cur.execute(f"GRANT ALL PRIVILEGES ON `alembic\\_rehearsal\\_%`.* TO '{url.username}'@'%'")
        scratch = url.set(database="")
    else:
        scratch = url.set(database="postgres")
    e2e.cluster.secret("scratch", {"url": scratch.render_as_string(hide_password=False)})


def scratch_databases(e2e: E2E) -> list[str]:
    """The server's scratch databases, as the server lists them."""
    query = ("SELECT datname FROM pg_database" if e2e.kind.name == "postgresql"
             else "SELECT schema_name FROM information_schema.schemata")
    return sorted(str(name) for (name,) in e2e.db.query(query) if str(name).startswith(PREFIX))


def production(e2e: E2E) -> Any:
    """Production's revision, schema and rows."""
    return (revision(e2e.db), columns(e2e.db, "orders"), columns(e2e.db, "customers"), has_table(e2e.db, "runs"),
            has_table(e2e.db, "shipments"), checksum(e2e.db, "orders"), checksum(e2e.db, "customers"))


def roles(e2e: E2E) -> set[str]:
    return {role.split("-")[0] for role in e2e.cluster.job_roles("shop")}


def rehearsing(e2e: E2E, name: str) -> bool:
    """The runner inside the gated revision on the copy `name`: on PostgreSQL its uncommitted table is invisible, but
    its session's transaction has written (an xid; the restore's sessions are the operator's tools); on MariaDB the
    CREATE TABLE committed."""
    if e2e.kind.name == "postgresql":
        return bool(e2e.db.query("SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND backend_xid IS "
                                 "NOT NULL AND application_name <> 'alembic-operator'", name)[0][0])
    copy = sa.create_engine(sa.make_url(e2e.db.url).set(database=name), poolclass=sa.pool.NullPool)
    try:
        with copy.connect() as conn:
            return bool(sa.inspect(conn).has_table("runs"))
    except sa.exc.DBAPIError:  # still being restored
        return False
    finally:
        copy.dispose()


def kill_containers(e2e: E2E, pod: dict[str, Any]) -> None:
    """SIGKILL the processes of the pod's running containers, as the OOM killer would: unlike a deleted pod (SIGTERM,
    which the runner turns into dropping its copy), nothing of the runner gets to clean up. They are found on the
    host by their cgroup (realnode.cgroup_pids)."""
    ids = {s["containerID"].split("://")[-1] for s in pod["status"]["containerStatuses"] if s["state"].get("running")}
    assert ids, pod["status"]
    pids = realnode.cgroup_pids(e2e.bed.state["cgroup_root"], ids)
    assert pids, f"no process of containers {ids} under the bed's cgroups"
    realnode.kill_all(pids)


@on_every_engine
def test_a_rehearsal_catches_the_failure_and_production_is_untouched(e2e: E2E,
                                                                     request: pytest.FixtureRequest) -> None:
    scratch_server(e2e, request)
    waits = e2e.project([*BASE_REVISIONS, gated(R4)])
    e2e.upgrade_directly(waits, R3)
    e2e.seed()
    before = production(e2e)
    rehearsal = {"enabled": True, "urlSecretRef": {"name": "scratch", "key": "url"}}

    # 1. The rehearsal's pod is killed mid-run (its revision waits on a gate production never gets): the run stops,
    #    the scratch database is dropped.
    e2e.cluster.create("shop", e2e.spec(waits, rehearsal=rehearsal))
    name = wait_for(lambda: next(iter(scratch_databases(e2e)), None), 180, "the scratch database")
    assert name.startswith(PREFIX) and name.endswith("_g1")
    wait_for(lambda: rehearsing(e2e, name), 240, "the rehearsal inside the gated revision, on the scratch copy")
    pod = next(p for p in e2e.cluster.pods() if p["metadata"]["labels"].get(c.ROLE_LABEL) == "rehearse")
    e2e.cluster.core.delete_namespaced_pod(pod["metadata"]["name"], e2e.ns)
    obj = e2e.cluster.wait_condition("shop", "Stalled", reason="RehearsalFailed", timeout=120)
    assert obj["status"]["phase"] == "Failed" and "Production was not touched" in obj["status"]["message"]
    assert scratch_databases(e2e) == []
    assert roles(e2e) == {"plan", "backup", "rehearse"}
    assert production(e2e) == before and not has_table(e2e.db, GATE_TABLE)

    # 2. Editing the resource retries: this plan's revision fails over production's rows (the free order), caught on
    #    the copy, named with the database's error; production untouched, no migrate or rollback Job, no scratch left.
    failing = e2e.project([*BASE_REVISIONS, FAILING_AT_ONCE])
    e2e.cluster.patch("shop", {"spec": {"migrations": {"image": e2e.images[failing]}}})
    obj = e2e.cluster.wait_condition("shop", "Stalled", reason="RehearsalFailed", timeout=240)
    st = obj["status"]
    assert st["phase"] == "Failed" and f"revision {FAIL} failed" in st["message"], st["message"]
    assert "total_positive" in st["message"] or "CONSTRAINT" in st["message"].upper(), st["message"]
    assert st["rehearsal"]["result"] == "Failed" and st["rehearsal"]["failedRevision"] == FAIL
    assert st["rehearsal"]["planHash"] == st["plan"]["hash"] and "scratchDatabase" not in st["rehearsal"]
    conditions = {x["type"]: x for x in st["conditions"]}
    assert conditions[c.REHEARSED]["status"] == "False" and "RolledBack" not in conditions
    assert st["history"][-1]["reason"] == "RehearsalFailed"
    assert roles(e2e) == {"plan", "backup", "rehearse"}  # nothing else ran, in either generation
    assert e2e.cluster.job_roles("shop").count("rehearse-g2") == 1
    assert production(e2e) == before
    assert scratch_databases(e2e) == []
    assert len(list(e2e.backups.rglob("*.dump"))) == 2  # each run's backup is kept
    e2e.cluster.wait_event("shop", "RehearsalFailed")

    # 3. The operator is SIGKILLed while the next generation's rehearsal waits in the gated revision on its copy, then
    #    the rehearsal's processes are SIGKILLed too: nobody alive knows of the copy, left on the server. The
    #    restarted operator sees the Job failed, drops the copy (named in status before it died) and stalls.
    e2e.cluster.patch("shop", {"spec": {"migrations": {"image": e2e.images[waits]}}})
    name = wait_for(lambda: next(iter(scratch_databases(e2e)), None), 180, "the third scratch database")
    assert name.endswith("_g3")
    wait_for(lambda: rehearsing(e2e, name), 240, "the third rehearsal inside the gated revision")
    assert e2e.cluster.get("shop")["status"]["rehearsal"]["scratchDatabase"] == name
    e2e.operator.kill()
    pod = next(p for p in e2e.cluster.pods() if p["metadata"]["labels"].get(c.ROLE_LABEL) == "rehearse"
               and p["metadata"]["labels"].get(c.GENERATION_LABEL) == "3")
    kill_containers(e2e, pod)
    assert scratch_databases(e2e) == [name]  # left behind: only the operator can drop it now
    e2e.operator.start()  # the Job fails meanwhile (or has failed): its only pod's container was killed
    obj = e2e.cluster.wait_condition("shop", "Stalled", reason="RehearsalFailed", timeout=120)
    assert obj["metadata"]["generation"] == 3 and "Production was not touched" in obj["status"]["message"]
    assert scratch_databases(e2e) == []
    assert production(e2e) == before and not has_table(e2e.db, GATE_TABLE)
    assert roles(e2e) == {"plan", "backup", "rehearse"}
    assert e2e.cluster.job_roles("shop").count("rehearse-g3") == 1
