"""drop orders.currency, expand: make it optional

Revision ID: a5e8d61f2c47
Revises: 7d24b9c8e013
Create Date: 2026-12-01 09:14:03.551870

Release 2.1 no longer writes `currency`. Here the column only becomes nullable (its default stays), so an insert
that does not name it can never fail, whatever default the column ends up with; release 2.0, which still reads
and writes it, is unaffected. The contract revision c90b3f4e1d28 drops it once 2.0 is gone.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "a5e8d61f2c47"
down_revision: str | Sequence[str] | None = "7d24b9c8e013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None
phase = "expand"


def upgrade() -> None:
    op.alter_column("orders", "currency", existing_type=sa.String(length=3), nullable=True,
                    existing_server_default="EUR")


def downgrade() -> None:
    op.execute("UPDATE orders SET currency = 'EUR' WHERE currency IS NULL")
    op.alter_column("orders", "currency", existing_type=sa.String(length=3), nullable=False,
                    existing_server_default="EUR")
