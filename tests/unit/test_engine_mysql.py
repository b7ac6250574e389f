"""The MySQL/MariaDB engine's pure parts: its schemes, the database key, the Job's connection parameters and option
file, the heads read from a dump as it streams, and what a dump recreates."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from alembic_operator import engines
from alembic_operator.engines import mysql
from alembic_operator.runner.lock import DIALECTS, database_lock_key, mysql_lock_name


@pytest.mark.parametrize("scheme", ["mysql+pymysql", "mysql+mysqldb", "mariadb+pymysql", "mariadb+mariadbconnector"])
def test_mysql_owns_its_schemes(scheme: str) -> None:
    engine = engines.for_url(make_url(f"{scheme}://u:pw@db.example/shop"))
    assert isinstance(engine, mysql.MySQL) and engines.REGISTRY.get("mysql") is engine
    assert scheme in engines.supported_schemes()
    assert engine.transactional_ddl is False and engines.REGISTRY.get("postgresql").transactional_ddl is True


def test_mysql_and_mariadb_urls_of_one_database_share_its_key_and_lock() -> None:
    engine = engines.REGISTRY.get("mysql")
    keys = {engine.database_key(make_url(u)) for u in (
        "mysql+pymysql://a:x@DB.example/shop", "mariadb+mariadbconnector://b:y@db.example:3306/shop")}
    assert len(keys) == 1
    other = engine.database_key(make_url("mysql+pymysql://a:x@db.example/other"))
    assert other not in keys
    key = engine.lock_key(keys.pop())
    assert key == database_lock_key(engine.database_key(make_url("mysql://a@db.example/shop")))
    assert len(mysql_lock_name(key)) <= 64  # GET_LOCK's limit
    assert {"mysql", "mariadb"} <= set(DIALECTS)  # the runner takes the same lock


def test_connection_parameters_keep_the_password_apart(tmp_path: Path) -> None:
    url = make_url('mysql+pymysql://app:p%40ss"w\\rd@db.example:3307/shop?ssl_ca=/ca.pem&charset=utf8mb4&x=1')
    db = mysql.database(url)
    assert (db.host, db.port, db.database, db.user, db.ssl) == ("db.example", 3307, "shop", "app",
                                                                {"ssl_ca": "/ca.pem"})
    assert "p@ss" not in repr(db) and "p@ss" not in str(db.describe()) and db.where == "db.example:3307/shop"
    with db.option_file() as path:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        text = path.read_text()
    assert not path.exists()
    assert 'password="p@ss\\"w\\\\rd"' in text and "ssl-ca=" in text and "[client]" in text
    assert "protocol=TCP" in text  # localhost means TCP in the URL, the socket to the client tools


def test_heads_are_read_from_the_dump_as_it_streams() -> None:
    dump = (b"-- header\nDROP TABLE IF EXISTS `alembic_version`;\nCREATE TABLE `alembic_version` (\n"
            b"INSERT INTO `orders` VALUES " + b"(1,'x')," * 50000 + b"(2,'y');\n"
            b"INSERT INTO `alembic_version` VALUES\n('a1'),\n('b2');\nINSERT INTO `x` VALUES\n('no');\n-- end\n")
    one_line = dump.replace(b"VALUES\n('a1'),\n('b2')", b"VALUES ('a1'),('b2')")
    for text in (dump, one_line):
        for size in (1, 7, 4096, len(text)):
            found = mysql.HeadsInDump()
            for i in range(0, len(text), size):
                found.feed(text[i:i + size])
            found.close()
            assert found.heads == ["a1", "b2"] and found.seen_table, size


def test_dump_contents_from_its_drop_statements(tmp_path: Path) -> None:
    path = tmp_path / "d.sql"
    path.write_bytes(b"DROP TABLE IF EXISTS `orders`;\n/*!50001 DROP VIEW IF EXISTS `v``x`*/;\n"
                     b"/*!50003 DROP PROCEDURE IF EXISTS `p` */;\n/*!50106 DROP EVENT IF EXISTS `e` */;\n"
                     b"/*!50003 DROP FUNCTION IF EXISTS `f` */;\n")
    contents = mysql.dump_contents(path)
    assert contents.tables == {"orders", "v`x"} and contents.events == {"e"}
    assert contents.routines == {("PROCEDURE", "p"), ("FUNCTION", "f")}
    assert not contents.whole  # neither the tool's header nor its closing line


def test_a_whole_dump_has_the_tools_header_and_closing_line_even_with_nothing_in_it(tmp_path: Path) -> None:
    """A dump of an empty database (revision base) is a whole dump; a file cut short or from elsewhere is not."""
    path = tmp_path / "d.sql"
    for header in (b"-- MariaDB dump 10.19  Distrib 10.11.19-MariaDB", b"-- MySQL dump 10.13  Distrib 8.0.36"):
        path.write_bytes(header + b"\n--\n-- Host: db    Database: shop\n/*!40101 SET NAMES utf8mb4 */;\n"
                         b"-- Dump completed on 2026-12-07 12:00:00\n")
        contents = mysql.dump_contents(path)
        assert contents.whole and not contents.tables
    path.write_bytes(b"-- MariaDB dump 10.19\nDROP TABLE IF EXISTS `orders`;\n")  # cut short
    assert not mysql.dump_contents(path).whole
    path.write_bytes(b"/*M!999999\\- enable the sandbox mode */ \n-- MariaDB dump 10.19\n-- Dump completed\n")
    assert mysql.dump_contents(path).whole  # MariaDB 10.11.8 and later open with the sandbox line
    path.write_bytes(b"SELECT 1;\nSELECT 2;\n-- MariaDB dump 10.19\n-- Dump completed\n")  # the header opens it
    assert not mysql.dump_contents(path).whole
