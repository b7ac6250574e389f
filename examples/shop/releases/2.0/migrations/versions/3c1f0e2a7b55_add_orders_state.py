"""rename orders.status to state, expand: add state, backfill it, keep both columns in sync

Revision ID: 3c1f0e2a7b55
Revises: 88d79e1b94a5
Create Date: 2026-11-30 10:02:11.418532

Release 1.1 reads and writes `status`, release 2.0 `state`; both serve during the rollout. A trigger copies each
write to the other column (an insert of 1.1 fills `state`, an insert of 2.0 fills `status`, an update of either
follows), then existing rows are backfilled. `state` stays nullable without a default here: the trigger tells who
wrote by which column is NULL. Nothing is removed, so release 1.1 keeps working on this schema, and so does
`kubectl rollout undo` back to it. The contract revision 7d24b9c8e013 drops `status` once 1.1 is gone.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "3c1f0e2a7b55"
down_revision: str | Sequence[str] | None = "88d79e1b94a5"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None
phase = "expand"

# PostgreSQL: one trigger function for inserts and updates.
PG_FUNCTION = """
CREATE FUNCTION orders_sync_status_state() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'INSERT' THEN
    NEW.state := COALESCE(NEW.state, NEW.status);
  ELSIF NEW.status IS DISTINCT FROM OLD.status THEN
    NEW.state := NEW.status;
  END IF;
  NEW.status := NEW.state;
  RETURN NEW;
END
$$
"""
PG_TRIGGER = ("CREATE TRIGGER orders_sync_status_state BEFORE INSERT OR UPDATE ON orders "
              "FOR EACH ROW EXECUTE FUNCTION orders_sync_status_state()")
# MySQL/MariaDB: one trigger per event, each a single statement (assignments run left to right).
MYSQL_TRIGGERS = (
    "CREATE TRIGGER orders_sync_status_state_insert BEFORE INSERT ON orders FOR EACH ROW "
    "SET NEW.state = COALESCE(NEW.state, NEW.status), NEW.status = NEW.state",
    "CREATE TRIGGER orders_sync_status_state_update BEFORE UPDATE ON orders FOR EACH ROW "
    "SET NEW.state = IF(NEW.status <=> OLD.status, NEW.state, NEW.status), NEW.status = NEW.state",
)


def upgrade() -> None:
    op.add_column("orders", sa.Column("state", sa.String(length=20), nullable=True))
    if op.get_context().dialect.name == "postgresql":
        op.execute(PG_FUNCTION)
        op.execute(PG_TRIGGER)
    else:
        for trigger in MYSQL_TRIGGERS:
            op.execute(trigger)
    # After the trigger exists: a row written meanwhile is synced by it, every older row here. (On a large table,
    # backfill in batches of a few thousand rows, each its own transaction, to keep row locks short.)
    op.execute("UPDATE orders SET state = status WHERE state IS NULL")


def downgrade() -> None:
    if op.get_context().dialect.name == "postgresql":
        op.execute("DROP TRIGGER orders_sync_status_state ON orders")
        op.execute("DROP FUNCTION orders_sync_status_state()")
    else:
        op.execute("DROP TRIGGER orders_sync_status_state_insert")
        op.execute("DROP TRIGGER orders_sync_status_state_update")
    op.drop_column("orders", "state")
