"""What a half-applied revision reports (runner/statements.py) and MySQL's double-quoted strings in redaction."""

from __future__ import annotations

import sqlalchemy

from alembic_operator.runner.blockers import redact_query
from alembic_operator.runner.statements import StatementLog


def test_mysql_double_quoted_strings_are_literals() -> None:
    sql = """UPDATE t SET a = "secret", b = 'other' WHERE "c" = 1"""
    assert redact_query(sql, double_quoted_strings=True) == "UPDATE t SET a = ?, b = ? WHERE ? = ?"
    assert redact_query(sql) == 'UPDATE t SET a = "secret", b = ? WHERE "c" = ?'  # PostgreSQL: identifiers


def test_committed_is_up_to_the_last_ddl_statement() -> None:
    log = StatementLog()
    log.start("r2")
    for statement in ("CREATE TABLE a (id INT)", "INSERT INTO a VALUES (1)", "SELECT 1",
                      "ALTER TABLE a ADD COLUMN note VARCHAR(9) DEFAULT 'x'", "UPDATE a SET note = 'y'",
                      "UPDATE alembic_version SET version_num='r2'"):
        log._completed(None, None, statement, None, None, False)
    assert log.committed() == ["CREATE TABLE a (id INT)", "INSERT INTO a VALUES (?)",
                               "ALTER TABLE a ADD COLUMN note VARCHAR(?) DEFAULT ?"]
    log.start("r3")
    log._completed(None, None, "INSERT INTO a VALUES (2)", None, None, False)
    assert log.committed() == []  # no DDL: the revision's transaction rolled it back


def test_it_listens_to_the_connection_it_is_given() -> None:
    engine = sqlalchemy.create_engine("sqlite://")
    log = StatementLog()
    with engine.connect() as conn:
        log.attach(conn)
        log.attach(conn)  # once per connection
        log.start("r1")
        conn.exec_driver_sql("CREATE TABLE t (id INTEGER)")
        conn.exec_driver_sql("SELECT * FROM t")
    assert log.statements == ["CREATE TABLE t (id INTEGER)"]
