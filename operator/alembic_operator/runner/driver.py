"""Drives the app's own Alembic env.py in this process: its config, its script directory, online and offline runs.

Both the runner (in the app's image, for the Jobs) and ``alembic-operator check`` (in CI) drive env.py through
`Driver`, so both see the database exactly as the app's ``alembic upgrade`` would: env.py's version table, schema,
connection settings and target_metadata. Every run passes the URL as the `sqlalchemy.url` main option, the way
`alembic -x`-less standard env.py files expect it.

Standard library, alembic and sqlalchemy only (imported when used), Python 3.9+.
"""

from __future__ import annotations

import ast
import contextlib
import io
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from .errors import first_line

EnvFn = Callable[[Any, Any], Iterable[Any]]


class ConfigError(Exception):
    """The Alembic configuration cannot be read (before anything ran)."""


def heads_str(heads: Sequence[str]) -> str | None:
    """None for base, the id for one head, "a,b" (sorted) when the database has several heads."""
    return ",".join(sorted(heads)) if heads else None


def parse_revs(value: str | None) -> tuple[str, ...]:
    if value is None or value.strip() in ("", "base", "null", "None"):
        return ()
    return tuple(sorted(part.strip() for part in value.split(",") if part.strip()))


PHASES = ("expand", "contract")


def phase_of(script: Any) -> str:
    """A revision's phase, from its module attribute ``phase`` next to ``revision`` and ``down_revision``:
    "expand" (the default: the running version keeps working) or "contract" (it removes what the older version
    uses: it runs only once that version's pods are gone). ValueError for any other value, so a typo never runs a
    contract revision early."""
    value = getattr(getattr(script, "module", None), "phase", "expand")
    if value not in PHASES:
        raise ValueError(f"revision {getattr(script, 'revision', '?')} sets phase = {value!r}: use \"expand\" "
                         "(the default) or \"contract\"")
    return str(value)


def _does_something(tree: ast.Module, name: str) -> bool | None:
    """Does the module's function `name` do anything (more than pass / ... / a docstring / raise)? None: absent."""
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == name:
            for statement in node.body:
                if isinstance(statement, ast.Pass):
                    continue
                if isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Constant):
                    continue  # docstring or ...
                if isinstance(statement, ast.Raise):
                    continue  # raise NotImplementedError(...)
                return True
            return False
    return None


def has_downgrade(path: str | None) -> bool | None:
    """Best effort (None: cannot tell): can the revision's downgrade() undo it? True when downgrade() does
    something, or when upgrade() does nothing either (a merge point); False for an empty or missing downgrade()."""
    if not path:
        return None
    try:
        with open(path, encoding="utf-8") as handle:
            tree = ast.parse(handle.read())
    except (OSError, SyntaxError, ValueError):
        return None
    if _does_something(tree, "downgrade"):
        return True
    return _does_something(tree, "upgrade") is False


def uses_autocommit(path: str | None) -> bool:
    """Does the revision file run something outside a transaction (``autocommit_block()``, for CREATE INDEX
    CONCURRENTLY)? Such a block commits whatever ran before it."""
    if not path:
        return False
    try:
        with open(path, encoding="utf-8") as handle:
            return "autocommit_block" in handle.read()
    except (OSError, ValueError):
        return False


def _quiet(message: str) -> None:
    pass


class Driver:
    """An Alembic project (its config file and ini section) and env.py run against `url` (or a URL per run)."""

    def __init__(self, config_path: str, section: str = "alembic", url: str | None = None,
                 log: Callable[[str], None] = _quiet) -> None:
        self.config_path = config_path
        self.section = section
        self.url = url
        self.log = log
        self._script: Any = None

    # the configuration and the scripts

    def config(self, url: str | None = None, output_buffer: io.StringIO | None = None) -> Any:
        """alembic.ini (or pyproject.toml, alembic >= 1.16) with `url` (default: the driver's) as sqlalchemy.url."""
        from alembic.config import Config

        path = self.config_path
        if path.endswith(".toml"):
            try:
                cfg = Config(toml_file=path, ini_section=self.section, output_buffer=output_buffer)
            except TypeError:
                raise ConfigError(f"{path}: pyproject.toml configuration needs alembic >= 1.16") from None
        else:
            cfg = Config(path, ini_section=self.section, output_buffer=output_buffer)
        url = self.url if url is None else url
        if url is not None:
            cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
        return cfg

    def load_script(self) -> Any:
        """The script directory; `script` keeps it. Revisions load lazily (get_heads() loads them all)."""
        from alembic.script import ScriptDirectory

        return ScriptDirectory.from_config(self.config())

    @property
    def script(self) -> Any:
        if self._script is None:
            self._script = self.load_script()
        return self._script

    def lookup(self, revision: str) -> Any:
        """The Script for an id (or unique prefix, or "head"), None if the scripts do not have it."""
        try:
            return self.script.get_revision(revision)
        except Exception:
            return None

    def path(self, upper: Sequence[str], lower: Sequence[str]) -> list[str]:
        """Revision ids strictly above `lower` up to `upper` inclusive, in upgrade order."""
        if set(upper) == set(lower):
            return []
        upper_arg: Any = tuple(upper) if len(upper) != 1 else upper[0]
        lower_arg: Any = (tuple(lower) if len(lower) != 1 else lower[0]) if lower else "base"
        revisions = self.script.iterate_revisions(upper_arg, lower_arg, implicit_base=True)
        return [sc.revision for sc in reversed(list(revisions))]

    def ancestors(self, heads: Sequence[str]) -> set[str]:
        if not heads:
            return set()
        return {sc.revision for sc in self.script.iterate_revisions(tuple(heads), "base", implicit_base=True)}

    # running env.py

    def environment(self, url: str | None) -> contextlib.AbstractContextManager[Any]:
        """What surrounds each env.py run (the runner: nothing; check: the URL exported for env.py to read)."""
        return contextlib.nullcontext()

    def run_env(self, fn: EnvFn, *, url: str | None = None, buffer: io.StringIO | None = None,
                per_migration: bool = False, **opts: Any) -> None:
        """Run env.py once with `fn` as the migration function (EnvironmentContext options in `opts`);
        `per_migration`: each revision in its own transaction, whatever env.py configures."""
        from alembic.runtime.environment import EnvironmentContext

        cfg = self.config(url, buffer)
        script = self.script
        context = EnvironmentContext(cfg, script, fn=fn, **opts)
        if per_migration:  # alembic.context.configure(...) calls the instance's method
            configure = context.configure

            def per_revision(*args: Any, **kw: Any) -> None:
                configure(*args, **{**kw, "transaction_per_migration": True})

            context.configure = per_revision  # type: ignore[method-assign]
        with self.environment(url), context:
            script.run_env()

    def run_online(self, fn: EnvFn, *, url: str | None = None, **opts: Any) -> bool:
        """Run env.py online; False when env.py never called context.run_migrations() with a connection."""
        called: list[bool] = []

        def wrapped(rev: Any, context: Any) -> Iterable[Any]:
            called.append(True)
            return fn(rev, context)

        self.run_env(wrapped, url=url, as_sql=False, **opts)
        return bool(called)

    def migrate(self, direction: str, destination: str, progress: list[str], *, url: str | None = None,
                on_step: Callable[[], None] | None = None, check: Callable[[Any], None] | None = None) -> bool:
        """Run `alembic upgrade|downgrade <destination>`; appends each revision id to `progress` before it runs,
        then calls `on_step` (the runner records the progress where a killed pod still leaves it). `check(context)`
        runs first (check refuses a connection to another database). False: env.py ran no migrations online.

        When a revision on the way has an ``autocommit_block()``, every revision runs in its own transaction: the
        block commits what ran before it, so in one transaction for all a later failure would roll back the
        version table but not the block's work (an index left behind at a revision that does not have it)."""
        script = self.script
        log = self.log

        def announce(steps: list[Any]) -> Iterator[Any]:
            total = len(steps)
            log(f"{direction}: {total} revision(s) to run")
            for number, step in enumerate(steps, 1):
                revision = step.revision.revision
                progress.append(revision)
                if on_step is not None:
                    on_step()
                doc = first_line(step.doc or "")
                before = ",".join(getattr(step, "from_revisions", ())) or "base"
                after = ",".join(getattr(step, "to_revisions", ())) or "base"
                log(f"running {direction} {before} -> {after} ({number}/{total}){': ' + doc if doc else ''}")
                started = time.monotonic()
                yield step
                log(f"revision {revision} done in {time.monotonic() - started:.1f}s")

        def fn(heads: Any, context: Any) -> Iterator[Any]:
            if check is not None:
                check(context)
            if direction == "upgrade":
                steps = script._upgrade_revs(destination, heads)
            else:
                steps = script._downgrade_revs(destination, heads)
            return announce(list(steps))

        autocommit = self.autocommit_revisions()
        if autocommit:
            log(f"revision(s) {', '.join(autocommit)} use autocommit_block(): each revision runs in its own "
                "transaction")
        return self.run_online(fn, url=url, starting_rev=None, destination_rev=destination,
                               per_migration=bool(autocommit))

    def autocommit_revisions(self) -> list[str]:
        """The scripts' revisions with an autocommit_block(). Any of them switches the whole project to a
        transaction per revision, as Alembic recommends for projects that use such blocks."""
        return sorted(sc.revision for sc in self.script.walk_revisions()
                      if uses_autocommit(getattr(sc, "path", None)))

    def render_offline(self, revision: Any, url: str | None = None) -> str:
        """`alembic upgrade <down>:<rev> --sql` for one revision (a merge starts from all its parents)."""
        from alembic.runtime.migration import RevisionStep

        script = self.script
        buffer = io.StringIO()
        down = revision.down_revision
        starting: Any = None
        if isinstance(down, (tuple, list)):
            starting = tuple(down) or None
        elif down:
            starting = down

        def fn(heads: Any, context: Any) -> list[Any]:
            return [RevisionStep(script.revision_map, revision, True)]

        self.run_env(fn, url=url, buffer=buffer, as_sql=True, starting_rev=starting,
                     destination_rev=revision.revision)
        return buffer.getvalue()
