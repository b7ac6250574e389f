"""create shipments; orders must have a positive total

Revision ID: 88d79e1b94a5
Revises: 382cd6ceb09e
Create Date: 2025-03-04 11:58:02.412905

FAILS ON PURPOSE (demo): it creates `shipments`, then adds the CHECK constraint `total > 0` to `orders`, which the
demo data violates (seed.py inserts a free sample order with total 0.00). PostgreSQL rejects the constraint, the
revision's transaction rolls back (shipments included: env.py runs one transaction per revision), and the database
stays at 382cd6ceb09e with every row intact. The corrected revision is fixed/88d79e1b94a5_create_shipments.py
(`total >= 0`); build the image with `--build-arg SHOP_FIXED=1` to ship it.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "88d79e1b94a5"
down_revision: str | Sequence[str] | None = "382cd6ceb09e"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "shipments",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("order_id", sa.Integer(), sa.ForeignKey("orders.id", ondelete="CASCADE"), nullable=False),
        sa.Column("carrier", sa.String(length=50), nullable=False),
        sa.Column("tracking_number", sa.String(length=100), nullable=True),
        sa.Column("shipped_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_shipments_order_id", "shipments", ["order_id"])
    op.create_check_constraint("ck_orders_total_positive", "orders", "total > 0")


def downgrade() -> None:
    op.drop_constraint("ck_orders_total_positive", "orders", type_="check")
    op.drop_index("ix_shipments_order_id", table_name="shipments")
    op.drop_table("shipments")
