"""Alembic environment of the shop demo: the standard online/offline env.py.

The URL comes from the `sqlalchemy.url` main option (alembic-operator's runner sets it from a Secret), or from
$DATABASE_URL when you run `alembic` by hand.
"""

import os
from logging.config import fileConfig

from alembic import context
from shop.models import Base
from sqlalchemy import create_engine, pool

config = context.config
if config.config_file_name is not None:
    fileConfig(config.config_file_name)

target_metadata = Base.metadata

# One transaction per revision instead of one for the whole run. Each revision then commits together with its
# alembic_version update: when revision N fails, revisions before it stay applied and the database is at a
# well-defined revision (N-1) that the next run resumes from, and the locks an earlier revision took on busy tables
# are released as soon as it commits rather than at the end of the run. alembic-operator reads the revision after a
# failure and undoes committed revisions (downgrade, or the backup if one of them destroyed data).
TRANSACTION_PER_MIGRATION = True


def database_url() -> str:
    url = config.get_main_option("sqlalchemy.url") or os.environ.get("DATABASE_URL", "")
    if not url:
        raise RuntimeError("no database URL: set sqlalchemy.url or DATABASE_URL")
    return url


def run_migrations_offline() -> None:
    """Render SQL without a database (`alembic upgrade A:B --sql`)."""
    context.configure(
        url=database_url(),
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        transaction_per_migration=TRANSACTION_PER_MIGRATION,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = create_engine(database_url(), poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            transaction_per_migration=TRANSACTION_PER_MIGRATION,
        )
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
