"""spec.rehearsal on the real bed, for the failures that depend on production's rows: a unique index over duplicates,
SET NOT NULL over nulls and a foreign key over orphans. Each plan is sound SQL that an empty database (CI, `alembic
check`) accepts; only production's rows break it. Each is caught on the scratch copy, through the operator: Stalled
with RehearsalFailed naming the revision and the database's error, production's rows and schema unchanged, no
migrate, downgrade or restore Job, no scratch database left on the server. One resource walks through the three
plans, one generation each (the image changed, as a team pushing a fix would), on both engines."""

from __future__ import annotations

import pytest
from test_e2e_rehearsal import production, roles, scratch_databases, scratch_server

from apps import Rev
from e2e import BASE_REVISIONS, E2E, on_every_engine

pytestmark = pytest.mark.bed

FAILS = "a7a7a7a7a707"
# The rows they trip over (besides e2e.seed's): two orders share a legacy code, customers have no email yet (R3 added
# the column, nullable), and every order's legacy code is an orphan of the table the foreign key's revision creates.
CASES = {
    "unique": (['op.create_index("ux_orders_legacy_code", "orders", ["legacy_code"], unique=True)'],
               ("duplicate", "unique", "1062")),
    "not-null": (['op.alter_column("customers", "email", existing_type=sa.String(120), nullable=False)'],
                 ("null", "1138", "1265")),
    "foreign-key": (['op.create_table("legacy_codes", sa.Column("code", sa.String(20), primary_key=True))',
                     'op.create_foreign_key("fk_orders_legacy_code", "orders", "legacy_codes", ["legacy_code"], '
                     '["code"])'],
                    ("foreign key", "1452")),
}


@on_every_engine
def test_failures_that_only_production_rows_cause_are_caught_in_rehearsal(e2e: E2E,
                                                                          request: pytest.FixtureRequest) -> None:
    scratch_server(e2e, request)
    e2e.upgrade_directly(e2e.project(BASE_REVISIONS), BASE_REVISIONS[-1].id)
    e2e.seed()
    e2e.db.query("UPDATE orders SET legacy_code = 'L-1' WHERE id = 2")
    before = production(e2e)
    rehearsal = {"enabled": True, "urlSecretRef": {"name": "scratch", "key": "url"}}
    for generation, (case, (upgrade, said)) in enumerate(CASES.items(), 1):
        project = e2e.project([*BASE_REVISIONS, Rev(FAILS, upgrade=upgrade)], name=f"rows-{case}")
        if generation == 1:
            e2e.cluster.create("shop", e2e.spec(project, rehearsal=rehearsal))
        else:
            e2e.cluster.patch("shop", {"spec": {"migrations": {"image": e2e.images[project]}}})
        obj = e2e.cluster.wait_condition("shop", "Stalled", reason="RehearsalFailed", timeout=240)
        st = obj["status"]
        assert obj["metadata"]["generation"] == generation
        assert st["phase"] == "Failed" and f"revision {FAILS} failed" in st["message"], (case, st["message"])
        assert any(word in st["message"].lower() for word in said), (case, st["message"])
        assert st["rehearsal"]["result"] == "Failed" and st["rehearsal"]["failedRevision"] == FAILS, case
        assert st["history"][-1]["reason"] == "RehearsalFailed" and len(st["history"]) == generation, case
        assert roles(e2e) == {"plan", "backup", "rehearse"}, (case, roles(e2e))
        assert scratch_databases(e2e) == [], case
        assert production(e2e) == before, case
