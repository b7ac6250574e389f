"""The Alembic project under check: its config, its scripts, and env.py run in-process against a given URL, through
the runner's own env.py driver (`runner.driver`): check drives env.py exactly as the Jobs do.

env.py is the app's own: it imports the models, configures the context (target_metadata, version table,
include_object, transaction mode) and connects. Every run passes the URL as the `sqlalchemy.url` main option (and,
with ``export_env``, as environment variables for env.py files that read one), and a guard refuses to go on when
env.py connected somewhere else: an env.py that ignores the option must never migrate the live database while the
check believes it is the scratch one.
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alembic.config import Config
from alembic.script import Script, ScriptDirectory
from sqlalchemy.engine import URL

from ..runner.driver import Driver
from .drivers import async_url, env_py_is_async, sync_url
from .model import CheckError

OFFLINE_URL = "postgresql://alembic-check@localhost/offline"  # offline rendering: a dialect, no connection


def describe(exc: BaseException, limit: int = 500) -> str:
    """The first line of an exception (SQLAlchemy appends the SQL and a link on later lines)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


def url_string(url: URL) -> str:
    return url.render_as_string(hide_password=False)


class MigrationFailed(Exception):
    def __init__(self, revision: str | None, error: BaseException) -> None:
        super().__init__(describe(error))
        self.revision = revision
        self.error = error


@dataclass
class EnvFacts:
    """What env.py configured, read from the migration context."""

    heads: tuple[str, ...] = ()
    target_metadata: Any = None
    version_table: str = "alembic_version"
    version_table_schema: str | None = None
    diffs: list[Any] = field(default_factory=list)


class _Driver(Driver):
    """The runner's env.py driver, with check's errors and the URL exported around each run."""

    def __init__(self, config_path: str, section: str, export_env: Sequence[str]) -> None:
        super().__init__(config_path, section, url=OFFLINE_URL)
        self.export_env = tuple(export_env)

    def load_script(self) -> Any:
        try:
            return super().load_script()
        except Exception as exc:
            raise CheckError(f"cannot read the Alembic configuration {self.config_path}: {describe(exc)}") from None

    @contextlib.contextmanager
    def environment(self, url: str | None) -> Iterator[None]:
        value = self.url if url is None else url
        saved = {name: os.environ.get(name) for name in self.export_env}
        if value is not None:
            os.environ.update(dict.fromkeys(self.export_env, value))
        try:
            yield
        finally:
            for name, before in saved.items():
                if before is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = before


class Project:
    """The project under check, run through the runner's env.py driver (`runner.driver.Driver`)."""

    def __init__(self, config_path: str, section: str = "alembic", export_env: Sequence[str] = ()) -> None:
        if not os.path.isfile(config_path):
            raise CheckError(f"the Alembic config {config_path} does not exist (working directory {os.getcwd()})")
        self.config_path = config_path
        self.section = section
        self.export_env = tuple(export_env)
        self.driver = _Driver(config_path, section, self.export_env)

    def config(self, url: str = OFFLINE_URL, buffer: io.StringIO | None = None) -> Config:
        cfg: Config = self.driver.config(url, buffer)
        return cfg

    @property
    def script(self) -> ScriptDirectory:
        """The script directory (revisions load lazily: see `load`)."""
        script: ScriptDirectory = self.driver.script
        return script

    @property
    def async_env(self) -> bool:
        """env.py connects through SQLAlchemy's asyncio extension (Alembic's async template)."""
        return env_py_is_async(getattr(self.script, "env_py_location", None))

    def env_url(self, url: URL) -> str:
        """The URL env.py gets: through an async driver for an async env.py, else a synchronous one."""
        try:
            return url_string(async_url(url) if self.async_env else sync_url(url))
        except ValueError as exc:
            raise CheckError(f"env.py is async, and {exc}: pass a URL with an async driver") from None

    def version_dirs(self) -> list[Path]:
        script = self.script
        locations = getattr(script, "_version_locations", None) or [script.versions]
        return [Path(p) for p in locations]

    def load(self) -> list[str]:
        """Load every revision through Alembic; returns the heads. Raises what Alembic raises."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            heads = sorted(set(self.script.get_heads()))
            list(self.script.walk_revisions())
        return heads

    def upgrade_path(self) -> list[str]:
        """Every revision from base to the heads, in upgrade order."""
        revisions = self.script.iterate_revisions("heads", "base")
        return [sc.revision for sc in reversed(list(revisions))]

    def path_between(self, lower: Sequence[str]) -> list[str]:
        """Revisions above `lower` (the database's heads) up to the heads, in upgrade order."""
        if not lower:
            return self.upgrade_path()
        low: Any = lower[0] if len(lower) == 1 else tuple(lower)
        revisions = self.script.iterate_revisions("heads", low)
        return [sc.revision for sc in reversed(list(revisions)) if sc.revision not in lower]

    def revision(self, rev: str) -> Script | None:
        found: Script | None = self.driver.lookup(rev)
        return found

    def facts(self, url: URL, compare: Any = None, *, models: bool = False,
              only_at: Sequence[str] | None = None) -> EnvFacts:
        """Run env.py online against `url` without migrating: the database's heads, env.py's settings, and the
        autogenerate diffs against `compare` (a MetaData), or against target_metadata when `models` is true
        (only when the database is at the revisions `only_at`, if given)."""
        from alembic.autogenerate import compare_metadata

        facts = EnvFacts()

        def fn(rev: Any, context: Any) -> list[Any]:
            guard(context, url, self.export_env)
            facts.heads = tuple(context.get_current_heads())
            facts.target_metadata = context.opts.get("target_metadata")
            facts.version_table = context.version_table
            facts.version_table_schema = context.version_table_schema
            against = facts.target_metadata if models else compare
            if only_at is not None and set(only_at) != set(facts.heads):
                against = None
            if against is not None:
                facts.diffs = list(compare_metadata(context, against))
            return []

        self._online(self.driver.run_online(fn, url=self.env_url(url), dont_mutate=True))
        return facts

    def migrate(self, url: URL, direction: str, destination: str) -> None:
        """`alembic upgrade|downgrade <destination>` against `url`; raises MigrationFailed with the revision that
        was running."""
        running: list[str] = []
        try:
            ran = self.driver.migrate(direction, destination, running, url=self.env_url(url),
                                      check=lambda context: guard(context, url, self.export_env))
            self._online(ran)
        except CheckError:
            raise
        except Exception as exc:
            raise MigrationFailed(running[-1] if running else None, exc) from exc

    def render_offline(self, sc: Script, url: str = OFFLINE_URL) -> str:
        """`alembic upgrade <down>:<rev> --sql` for one revision (a merge starts from all its parents)."""
        return self.driver.render_offline(sc, url)

    @staticmethod
    def _online(called: bool) -> None:
        if not called:
            raise CheckError("env.py did not call context.run_migrations() in online mode")


def guard(context: Any, expected: URL, exported: Sequence[str] = ()) -> None:
    """Refuse to go on when env.py connected to another database than the one it was given."""
    connection = getattr(context, "connection", None)
    if connection is None:
        return
    actual: URL = connection.engine.url
    if not same_database(actual, expected):
        where = (f"although {', '.join(exported)} held that URL before the app was imported: env.py (or the app) "
                 "takes it from somewhere else, e.g. a settings file or a hard-coded URL; make it read the "
                 "sqlalchemy.url main option or that variable" if exported else
                 "it must take the URL from the sqlalchemy.url main option (or pass --export-url-env VAR when it "
                 "reads an environment variable)")
        raise CheckError(f"env.py connected to {actual.render_as_string(hide_password=True)} instead of "
                         f"{expected.render_as_string(hide_password=True)}: {where}")


def same_database(a: URL, b: URL) -> bool:
    if a.get_backend_name() != b.get_backend_name():
        return False
    if a.get_backend_name() == "sqlite":
        return os.path.realpath(a.database or "") == os.path.realpath(b.database or "")
    ports_agree = a.port is None or b.port is None or a.port == b.port
    return (a.host or "", a.database) == (b.host or "", b.database) and ports_agree
