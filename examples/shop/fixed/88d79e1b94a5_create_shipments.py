"""create shipments; orders must not have a negative total

Revision ID: 88d79e1b94a5
Revises: 382cd6ceb09e
Create Date: 2025-03-04 11:58:02.412905

The corrected revision 5 of the demo (the Dockerfile copies it over migrations/versions/ when built with
`--build-arg SHOP_FIXED=1`). The first version required `total > 0`, which free sample orders (total 0.00)
violate, so it failed and was rolled back; it never committed anywhere, which is why fixing it in place, under the
same revision id, is safe. Free orders are legitimate: the rule is `total >= 0`.
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
    op.create_check_constraint("ck_orders_total_not_negative", "orders", "total >= 0")


def downgrade() -> None:
    op.drop_constraint("ck_orders_total_not_negative", "orders", type_="check")
    op.drop_index("ix_shipments_order_id", table_name="shipments")
    op.drop_table("shipments")
