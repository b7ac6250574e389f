"""The plan's SQL from the scan container's log to a ConfigMap and to the reviewer (no server)."""

from __future__ import annotations

import random
import string

from test_reconcile import PLAN_OK, advance, done, observe

from alembic_operator import plansql
from alembic_operator.reconcile import decide

SQL = [{"revision": f"r{i}", "message": f"step {i}", "sql": f"ALTER TABLE t{i} ADD COLUMN c{i} integer;\n"}
       for i in range(1, 4)]


def test_through_a_log_in_chunks_and_back() -> None:
    doc = plansql.document(SQL, plansql.sql_sha256(r["sql"] for r in SQL))
    data, kept = plansql.compress(doc)
    assert kept == doc and plansql.verified(plansql.read(data))
    noise = "".join(random.choices(string.ascii_letters, k=60_000))  # incompressible: several chunks
    big, _ = plansql.compress(plansql.document([{"revision": "r1", "message": "", "sql": noise}],
                                               plansql.sql_sha256([noise])))
    lines = plansql.log_lines(big)
    assert len(lines) > 1 and all(len(line) < plansql.CHUNK + 60 for line in lines)
    log = "\n".join(["INFO scanning", *lines[::-1], "plan r0 -> r1: 1 revision(s)", '{"ok": true}'])
    assert plansql.from_log(log) == big  # order restored, other lines ignored
    assert plansql.from_log("\n".join(lines[1:])) is None  # a chunk missing: nothing, not half a plan


def test_a_plan_too_large_keeps_its_first_revisions_and_says_so() -> None:
    many = [{"revision": f"r{i:04d}", "message": "", "sql": "".join(random.choices(string.ascii_letters, k=2000))}
            for i in range(1000)]
    data, kept = plansql.compress(plansql.document(many, plansql.sql_sha256(r["sql"] for r in many)), limit=200_000)
    assert len(data) <= 200_000 and kept["truncated"] and kept["total"] == 1000
    assert kept["revisions"] == many[: len(kept["revisions"])] and len(kept["revisions"]) > 50
    assert not plansql.verified(plansql.read(data))  # a part cannot prove the whole


def test_the_plan_keeps_its_sql_once_and_only_when_it_is_the_sql_the_hash_covers() -> None:
    sha = plansql.sql_sha256(r["sql"] for r in SQL)
    data, _ = plansql.compress(plansql.document(SQL, sha))
    plan = done("plan", {**PLAN_OK, "sqlSha256": sha})
    d = decide(observe())
    d = advance(d, jobs={"plan": plan.__class__(**{**plan.__dict__, "plan_sql": data})})
    assert d.status["plan"]["sql"] == {"configMap": "shop-plan-g1-sql", "job": "shop-plan-g1", "sha256": sha,
                                       "revisions": 3, "total": 3, "truncated": False}
    assert [(m.name, m.generation) for m in d.config_maps] == [("shop-plan-g1-sql", 1)]
    again = advance(d, jobs={"plan": plan.__class__(**{**plan.__dict__, "plan_sql": data})})
    assert again.config_maps == [] and again.status["plan"]["sql"]["configMap"] == "shop-plan-g1-sql"
    other = plan.__class__(**{**plan.__dict__, "plan_sql": plansql.compress(plansql.document(SQL, "sha256:x"))[0]})
    assert "sql" not in advance(decide(observe()), jobs={"plan": other}).status["plan"]
