"""The served shop's releases on MariaDB: the same as on PostgreSQL, with MariaDB's triggers keeping the renamed
column's two copies in sync during the expand phase (tests/postgres/test_shop_served.py)."""

from __future__ import annotations

from pathlib import Path

from bed.mariadb import Database
from shopapp import releases_side_by_side


def test_releases_serve_side_by_side_through_expand_and_break_only_at_contract(mariadb_database: Database,
                                                                               tmp_path: Path) -> None:
    releases_side_by_side(mariadb_database.url, tmp_path,
                          lambda: mariadb_database.query("SELECT status, state FROM orders"))
