"""rename orders.status to state, contract: drop status and its sync trigger

Revision ID: 7d24b9c8e013
Revises: 3c1f0e2a7b55
Create Date: 2026-11-30 10:05:47.902316

`phase = "contract"`: alembic-operator runs this revision only once no pod of the previous release (1.1, which
reads `status`) is running, and holds a pod of 1.1 started afterwards (it could not use this schema). DESTRUCTIVE
(DROP COLUMN): it needs approval like any other. The downgrade brings `status` back from `state`, with the trigger.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "7d24b9c8e013"
down_revision: str | Sequence[str] | None = "3c1f0e2a7b55"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None
phase = "contract"

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
MYSQL_TRIGGERS = (
    "CREATE TRIGGER orders_sync_status_state_insert BEFORE INSERT ON orders FOR EACH ROW "
    "SET NEW.state = COALESCE(NEW.state, NEW.status), NEW.status = NEW.state",
    "CREATE TRIGGER orders_sync_status_state_update BEFORE UPDATE ON orders FOR EACH ROW "
    "SET NEW.state = IF(NEW.status <=> OLD.status, NEW.state, NEW.status), NEW.status = NEW.state",
)


def upgrade() -> None:
    if op.get_context().dialect.name == "postgresql":
        op.execute("DROP TRIGGER orders_sync_status_state ON orders")
        op.execute("DROP FUNCTION orders_sync_status_state()")
    else:
        op.execute("DROP TRIGGER orders_sync_status_state_insert")
        op.execute("DROP TRIGGER orders_sync_status_state_update")
    op.drop_column("orders", "status")
    op.alter_column("orders", "state", existing_type=sa.String(length=20), nullable=False, server_default="new")


def downgrade() -> None:
    op.alter_column("orders", "state", existing_type=sa.String(length=20), nullable=True, server_default=None)
    op.add_column("orders", sa.Column("status", sa.String(length=20), server_default="new", nullable=False))
    op.execute("UPDATE orders SET status = state")
    if op.get_context().dialect.name == "postgresql":
        op.execute(PG_FUNCTION)
        op.execute(PG_TRIGGER)
    else:
        for trigger in MYSQL_TRIGGERS:
            op.execute(trigger)
