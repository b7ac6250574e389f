"""The rehearsal on MariaDB (rehearsal_cases): the same failures caught on a scratch copy, production untouched
(on MariaDB a failed revision would have been half-applied there), the scratch database dropped. The CHECK over
the shop's free sample order is caught on MariaDB by the bed scenario (tests/e2e/test_e2e_rehearsal.py)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest

import rehearsal_cases as cases
from bed.mariadb import APP_USER, Database, MariaDBServer

pytestmark = pytest.mark.mariadb


def server(mariadb: MariaDBServer, database: Database) -> cases.Server:
    with mariadb.admin() as conn, conn.cursor() as cur:  # what spec.rehearsal's server user needs
        cur.execute(f"GRANT ALL PRIVILEGES ON `alembic\\_rehearsal\\_%`.* TO '{APP_USER}'@'%'")

    def databases() -> set[str]:
        with mariadb.admin() as conn, conn.cursor() as cur:
            cur.execute("SHOW DATABASES")
            return {str(row[0]) for row in cur.fetchall()}

    def snapshot() -> Any:
        out = {}
        for (name,) in database.query("SHOW TABLES"):
            create = database.query(f"SHOW CREATE TABLE `{name}`")[0][1]
            rows = database.query(f"SELECT * FROM `{name}` ORDER BY 1")
            out[str(name)] = hashlib.sha256(repr((create, rows)).encode()).hexdigest()
        return out

    scratch = database.url.rsplit("/", 1)[0] + "/"
    return cases.Server(database.url, scratch, database.password, database.query, databases, snapshot)


def test_failures_that_depend_on_production_rows_are_caught(mariadb: MariaDBServer, mariadb_database: Database,
                                                             job: Any, tmp_path: Path) -> None:
    cases.check_failures(server(mariadb, mariadb_database), job, tmp_path)


def test_a_passing_rehearsal_is_measured(mariadb: MariaDBServer, mariadb_database: Database, job: Any,
                                         tmp_path: Path) -> None:
    result = cases.check_passing(server(mariadb, mariadb_database), job, tmp_path, "SELECT SLEEP(0.4)")
    # The bed's server runs without performance_schema: it cannot say which metadata locks a session holds.
    assert result["locksSampled"] is False
    assert "settleSeconds" not in result, result  # InnoDB's restored copy has nothing to settle (PostgreSQL's hints)


def test_the_operator_drops_only_its_own_scratch_databases(mariadb: MariaDBServer, mariadb_database: Database) -> None:
    """What the operator's drop (act.drop_scratch) does with the scratch server's URL, which names no database."""
    from alembic_operator import scratchdb

    srv = server(mariadb, mariadb_database)
    url = scratchdb.server_url(srv.scratch_server)
    ours = [scratchdb.create(url, f"alembic_rehearsal_abcdef0123_g{n}").database for n in (1, 2)]
    other = scratchdb.create(url, "alembic_rehearsal_fedcba3210_g1").database  # another resource's
    assert scratchdb.listed(url, "alembic_rehearsal_abcdef0123_") == sorted(ours)
    for name in scratchdb.listed(url, "alembic_rehearsal_abcdef0123_"):
        scratchdb.drop(url, name)
    assert not set(ours) & srv.databases() and other in srv.databases()
    assert mariadb_database.name in srv.databases()  # a user's database is never a candidate
    scratchdb.drop(url, str(other))
    for bad in (mariadb_database.name, "alembic_rehearsal_users"):
        try:
            scratchdb.drop(url, bad)
        except ValueError:
            continue
        raise AssertionError(f"dropped {bad}")
