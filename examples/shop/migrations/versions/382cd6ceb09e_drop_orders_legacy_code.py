"""drop orders.legacy_code

Revision ID: 382cd6ceb09e
Revises: fc7b070a6d88
Create Date: 2025-02-17 16:25:31.774920

DESTRUCTIVE: the column and its values are gone after the upgrade. The downgrade re-adds the column (nullable)
but cannot bring the values back: only a backup can. alembic-operator holds this revision in AwaitingApproval
unless it is approved.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "382cd6ceb09e"
down_revision: str | Sequence[str] | None = "fc7b070a6d88"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_column("orders", "legacy_code")


def downgrade() -> None:
    op.add_column("orders", sa.Column("legacy_code", sa.String(length=32), nullable=True))
