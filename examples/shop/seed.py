"""Insert the shop's demo rows: three customers and their orders, one of them a free sample (total 0.00).

    DATABASE_URL=postgresql+psycopg://app:...@localhost/shop python seed.py
    DATABASE_URL=mysql+pymysql://app:...@localhost/shop python seed.py

Works at any revision from fc7b070a6d88 (3) on: it writes only the columns the database has (reflected), and fills
`legacy_code` while the column still exists. Does nothing if customers exist already. Never prints the URL.
"""

from __future__ import annotations

import os
import sys
from decimal import Decimal

from sqlalchemy import MetaData, create_engine, func, select
from sqlalchemy.pool import NullPool

CUSTOMERS = [
    {"id": 1, "email": "ada@example.com", "name": "Ada Lovelace"},
    {"id": 2, "email": "grace@example.com", "name": "Grace Hopper"},
    {"id": 3, "email": "edsger@example.com", "name": "Edsger Dijkstra"},
]
ORDERS = [
    {"id": 1, "customer_id": 1, "total": Decimal("129.90"), "status": "shipped", "legacy_code": "OLD-1001"},
    {"id": 2, "customer_id": 1, "total": Decimal("15.00"), "status": "new", "legacy_code": "OLD-1002"},
    {"id": 3, "customer_id": 2, "total": Decimal("42.50"), "status": "paid", "legacy_code": None},
    # A free sample: revision 88d79e1b94a5 (CHECK total > 0) fails on this row, on purpose.
    {"id": 4, "customer_id": 3, "total": Decimal("0.00"), "status": "shipped", "legacy_code": "OLD-1004"},
    {"id": 5, "customer_id": 3, "total": Decimal("7.25"), "status": "new", "legacy_code": None},
]


def seed(url: str) -> int:
    """Insert the demo rows; returns how many orders were inserted (0 if the database was seeded already)."""
    engine = create_engine(url, poolclass=NullPool)
    try:
        metadata = MetaData()
        metadata.reflect(engine, only=["customers", "orders"])
        customers, orders = metadata.tables["customers"], metadata.tables["orders"]
        with engine.begin() as conn:
            if conn.execute(select(func.count()).select_from(customers)).scalar_one():
                return 0
            conn.execute(customers.insert(), CUSTOMERS)
            conn.execute(orders.insert(), [{k: v for k, v in row.items() if k in orders.c} for row in ORDERS])
            # Explicit ids: move PostgreSQL's sequences past them (MySQL's AUTO_INCREMENT follows by itself).
            for table in (customers, orders) if conn.dialect.name == "postgresql" else ():
                conn.exec_driver_sql(
                    f"SELECT setval(pg_get_serial_sequence('{table.name}', 'id'), (SELECT max(id) FROM {table.name}))"
                )
        return len(ORDERS)
    finally:
        engine.dispose()


def main() -> int:
    url = os.environ.get("DATABASE_URL")
    if not url:
        print("set DATABASE_URL to the shop database's SQLAlchemy URL", file=sys.stderr)
        return 2
    inserted = seed(url)
    print(f"seeded {inserted} orders" if inserted else "already seeded: nothing to do")
    return 0


if __name__ == "__main__":
    sys.exit(main())
