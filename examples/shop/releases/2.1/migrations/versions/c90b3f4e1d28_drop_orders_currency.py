"""drop orders.currency, contract: drop the column

Revision ID: c90b3f4e1d28
Revises: a5e8d61f2c47
Create Date: 2026-12-01 09:16:40.127094

`phase = "contract"`: runs only once no pod of release 2.0 (which reads `currency`) is running. DESTRUCTIVE (DROP
COLUMN): it needs approval. The downgrade re-adds the column with its default, not the values (a backup has them).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "c90b3f4e1d28"
down_revision: str | Sequence[str] | None = "a5e8d61f2c47"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None
phase = "contract"


def upgrade() -> None:
    op.drop_column("orders", "currency")


def downgrade() -> None:
    op.add_column("orders", sa.Column("currency", sa.String(length=3), server_default="EUR", nullable=True))
