"""Throwaway Alembic projects for tests.

    project = make_project(tmp_path / "app", [
        Rev("aaaaaaaaaa01", upgrade=['op.create_table("t", sa.Column("id", sa.Integer, primary_key=True))'],
            downgrade=['op.drop_table("t")']),
        Rev("aaaaaaaaaa02", upgrade=['op.add_column("t", sa.Column("x", sa.Integer))'],
            downgrade=['op.drop_column("t", "x")']),
    ])

Each revision's `down_revision` defaults to the previous revision in the list (None for the first one); pass a
string, None or a tuple (a merge) to say otherwise. Bodies are Python source lines run inside `upgrade()` /
`downgrade()` with `op`, `sa` (sqlalchemy) and `context` (alembic.context) in scope; an empty body is `pass`.

The project is usable from any working directory: alembic.ini finds its scripts through `%(here)s`. Its env.py is
the standard online/offline one (URL from the `sqlalchemy.url` main option, which the runner sets), with the
transaction mode as a parameter.

With `models=SOURCE`, the project also gets models: a uniquely named module next to alembic.ini (importable through
`prepend_sys_path`), made of `import sqlalchemy as sa`, `metadata = sa.MetaData()` and SOURCE (which defines tables
on `metadata`), and env.py's target_metadata is that `metadata`. Without it, target_metadata is None.
"""

from __future__ import annotations

import textwrap
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

PREVIOUS = "<previous>"


@dataclass
class Rev:
    id: str
    upgrade: Sequence[str] = ()
    downgrade: Sequence[str] = ()
    down_revision: str | tuple[str, ...] | None = PREVIOUS
    message: str = ""
    extra_imports: Sequence[str] = field(default_factory=tuple)
    phase: str | None = None  # expand/contract: the module attribute `phase` ("expand" or "contract")


ALEMBIC_INI = """\
[alembic]
script_location = %(here)s/migrations
prepend_sys_path = %(here)s
path_separator = os
# Deliberately empty: the runner passes the URL as the main option.
sqlalchemy.url =

[loggers]
keys = root,sqlalchemy,alembic

[handlers]
keys = console

[formatters]
keys = generic

[logger_root]
level = WARNING
handlers = console
qualname =

[logger_sqlalchemy]
level = WARNING
handlers =
qualname = sqlalchemy.engine

[logger_alembic]
level = INFO
handlers =
qualname = alembic

[handler_console]
class = StreamHandler
args = (sys.stderr,)
level = NOTSET
formatter = generic

[formatter_generic]
format = %(levelname)-5.5s [%(name)s] %(message)s
datefmt = %H:%M:%S
"""

ENV_PY = '''\
"""Test project env.py: the standard online/offline environment."""

from logging.config import fileConfig

from alembic import context
from sqlalchemy import create_engine, pool

config = context.config
if config.config_file_name is not None:
    fileConfig(config.config_file_name)

target_metadata = None
TRANSACTION_PER_MIGRATION = {transaction_per_migration!r}


def run_migrations_offline() -> None:
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={{"paramstyle": "named"}},
        transaction_per_migration=TRANSACTION_PER_MIGRATION,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = create_engine(config.get_main_option("sqlalchemy.url"), poolclass=pool.NullPool)
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
'''

REVISION_PY = '''\
"""{message}

Revision ID: {id}
Revises: {revises}
"""

import sqlalchemy as sa
from alembic import context, op
{extra_imports}
revision = {id!r}
down_revision = {down_revision!r}
branch_labels = None
depends_on = None
{phase}

def upgrade():
{upgrade}


def downgrade():
{downgrade}
'''


def _body(lines: Sequence[str]) -> str:
    source = "\n".join(lines) if lines else "pass"
    return textwrap.indent(textwrap.dedent(source), "    ")


def make_project(
    path: Path, revisions: Sequence[Rev], transaction_per_migration: bool = False, models: str | None = None,
    models_module: str | None = None,
) -> Path:
    """Write an Alembic project into `path` (created if needed) and return the path of its alembic.ini."""
    versions = path / "migrations" / "versions"
    versions.mkdir(parents=True, exist_ok=True)
    (path / "alembic.ini").write_text(ALEMBIC_INI)
    env = ENV_PY.format(transaction_per_migration=transaction_per_migration)
    if models is not None:
        # Unique: in-process tests import each project's own. A bed test that builds the project into an image may
        # name it (a name of its own): the same content is then the same image, built once.
        module = models_module or f"models_{uuid.uuid4().hex[:10]}"
        header = "import sqlalchemy as sa\n\nmetadata = sa.MetaData()\n\n"
        (path / f"{module}.py").write_text(header + textwrap.dedent(models))
        env = env.replace("target_metadata = None", f"from {module} import metadata as target_metadata")
    (path / "migrations" / "env.py").write_text(env)
    (path / "migrations" / "script.py.mako").write_text("")  # only `alembic revision` needs a real one
    previous: str | None = None
    for rev in revisions:
        down = previous if rev.down_revision == PREVIOUS else rev.down_revision
        if isinstance(down, list):
            down = tuple(down)
        (versions / f"{rev.id}_rev.py").write_text(
            REVISION_PY.format(
                id=rev.id,
                message=rev.message or f"revision {rev.id}",
                revises=", ".join(down) if isinstance(down, tuple) else down,
                down_revision=down,
                extra_imports="\n".join(rev.extra_imports),
                phase=f"phase = {rev.phase!r}\n" if rev.phase is not None else "",
                upgrade=_body(rev.upgrade),
                downgrade=_body(rev.downgrade),
            )
        )
        previous = rev.id
    return path / "alembic.ini"


def linear(n: int, prefix: str = "aaaaaaaa") -> list[Rev]:
    """n revisions, each creating table t<i> (with a real downgrade); ids are prefix + 4 hex digits."""
    return [
        Rev(
            f"{prefix}{i:04x}",
            upgrade=[f'op.create_table("t{i}", sa.Column("id", sa.Integer, primary_key=True))'],
            downgrade=[f'op.drop_table("t{i}")'],
            message=f"create t{i}",
        )
        for i in range(1, n + 1)
    ]
