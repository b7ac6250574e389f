"""rename orders.status to state, the naive way (one revision): DO NOT COPY

Revision ID: 5b7a2e9d0c31
Revises: 88d79e1b94a5
Create Date: 2026-11-30 09:40:00.000000

What a rename looks like when written as one revision: correct for the new release, fatal for the one still
serving. From its commit until the rollout ends, every query of release 1.1 fails with `column "status" does not
exist`, and `kubectl rollout undo` brings 1.1 back to a schema it cannot use. The safe way is release 2.0's two
revisions (expand, then contract). The tests roll to this release to show that the load generator does see failed
requests. (No `phase` here, as in any revision written before alembic-operator knew phases: it counts as expand.)
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "5b7a2e9d0c31"
down_revision: str | Sequence[str] | None = "88d79e1b94a5"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.alter_column("orders", "status", new_column_name="state", existing_type=sa.String(length=20),
                    existing_nullable=False, existing_server_default="new")


def downgrade() -> None:
    op.alter_column("orders", "state", new_column_name="status", existing_type=sa.String(length=20),
                    existing_nullable=False, existing_server_default="new")
