"""The MariaDB fixture itself: what the engine's tests rely on (an application user over TCP with a password, the
administrator over the socket only, a server that goes away with stop())."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pymysql
import pytest

from bed.mariadb import Database, MariaDBServer


def test_application_user_over_tcp(mariadb_database: Database) -> None:
    mariadb_database.query("CREATE TABLE t (id INT PRIMARY KEY, v VARCHAR(10))")
    mariadb_database.query("INSERT INTO t VALUES (%s, %s)", 1, "a")
    assert mariadb_database.query("SELECT id, v FROM t") == [(1, "a")]
    assert mariadb_database.url.startswith(f"mysql+pymysql://app:{mariadb_database.password}@127.0.0.1:")
    assert mariadb_database.query("SELECT DATABASE()") == [(mariadb_database.name,)]


def test_root_only_over_the_socket(mariadb: MariaDBServer) -> None:
    with pytest.raises(pymysql.err.OperationalError):
        pymysql.connect(host="127.0.0.1", port=mariadb.port, user="root", password="", connect_timeout=5)
    with mariadb.admin() as conn, conn.cursor() as cur:
        cur.execute("SELECT CURRENT_USER()")
        assert cur.fetchone()[0].startswith(f"{mariadb.admin_user}@")  # type: ignore[index]


def test_wrong_password_is_refused(mariadb_database: Database) -> None:
    wrong = Database(name=mariadb_database.name, url="", host=mariadb_database.host, port=mariadb_database.port,
                     user=mariadb_database.user, password="not-the-password")
    with pytest.raises(pymysql.err.OperationalError, match="Access denied"):
        wrong.query("SELECT 1")


def test_stop_leaves_no_process() -> None:
    server = MariaDBServer(Path(tempfile.mkdtemp(prefix="alembic-operator-mariadb-stop-")))
    try:
        server.start()
        db = server.create_database("shop")
        assert db.query("SELECT 1") == [(1,)]
        pid = server._pid()
        assert pid is not None
    finally:
        server.destroy()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert not server.base.exists()
