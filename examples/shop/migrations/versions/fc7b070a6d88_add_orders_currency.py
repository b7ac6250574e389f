"""add orders.currency and an index for a customer's recent orders

Revision ID: fc7b070a6d88
Revises: 01a2d588476e
Create Date: 2025-02-03 10:41:57.003187

The server default fills existing rows, so the NOT NULL column is added in one statement.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "fc7b070a6d88"
down_revision: str | Sequence[str] | None = "01a2d588476e"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("orders", sa.Column("currency", sa.String(length=3), server_default="EUR", nullable=False))
    op.create_index("ix_orders_customer_id_created_at", "orders", ["customer_id", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_orders_customer_id_created_at", table_name="orders")
    op.drop_column("orders", "currency")
