"""The checks, in order: integrity, the live database's state, lint of pending revisions, the scratch database
(upgrade, models, round trip, and the schema the live database should have), live drift; then suppressions."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import pickle
import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

from sqlalchemy import MetaData
from sqlalchemy.engine import URL

from .. import sqlrules
from . import lint as linting
from . import previous
from .integrity import RevisionFile, check_files, read_revision_file, revision_files
from .model import CheckError, CheckResult, Finding, Report, Severity, finding
from .project import OFFLINE_URL, EnvFacts, MigrationFailed, Project, describe
from .schema import Snapshot, compare_snapshots, describe_diffs, reflect, snapshot
from .scratch import scratch_database

T = TypeVar("T")
BASE = "base"
HEADS = "heads"


@dataclass
class Options:
    config: str = "alembic.ini"
    section: str = "alembic"
    scratch: str | None = None  # "server" (on scratch_url's server), "sqlite", or None (no scratch checks)
    scratch_url: URL | None = None
    database_url: URL | None = None
    steps: int | None = None
    allow: frozenset[str] = frozenset()
    skip: frozenset[str] = frozenset()
    export_env: tuple[str, ...] = ()
    fail_on: Severity = "error"
    previous: str | None = None  # the previous release: a git ref or its models' import path (check/previous.py)


@dataclass
class Live:
    url: URL
    facts: EnvFacts
    pending: list[str] | None = None  # None: the database is at a revision the scripts do not have
    compare_at: str | None = None  # where the scratch database gives the schema it should have (BASE, rev, HEADS)
    expected: MetaData | None = None


@dataclass
class Scratch:
    url: URL
    exclude: set[str] = field(default_factory=set)
    snapshots: dict[str, Snapshot] = field(default_factory=dict)
    before: dict[str, sqlrules.Catalog] = field(default_factory=dict)  # rev -> the altered columns just before it


def read_only(url: URL) -> URL:
    """The live check's sessions can never write, whatever env.py does: as the database's engine makes them read only
    (a database no engine owns is left as it is)."""
    engine = linting.engine_of(url)
    return engine.read_only_url(url) if engine is not None else url


class Checker:
    def __init__(self, options: Options) -> None:
        self.opts = options
        self.project = Project(options.config, options.section, options.export_env)
        self.report = Report(project=options.config, fail_on=options.fail_on)
        self.files: dict[str, RevisionFile] = {}
        self.path: list[str] = []
        self.rendered: linting.Rendered | None = None  # lint's SQL, scanned once the column types are known
        self.before: dict[str, sqlrules.Catalog] = {}

    def run(self) -> Report:
        started = time.monotonic()
        first = self._isolated(self.opts.database_url, self._first)
        if first is not None:
            live = first[0]
            self._scratch(live)
            if live is not None:
                self._isolated(live.url, lambda: self._live_drift(live))
            self._lint_findings()
        else:
            for name in ("lint", "upgrade", "models", "roundtrip", "live"):
                self.report.skip(name, "the scripts cannot be loaded (see integrity)")
        self._apply_allows()
        self.report.seconds = time.monotonic() - started
        self.report.finish()
        return self.report

    def _first(self) -> tuple[Live | None] | None:
        """Integrity, the live database's state and lint: one run of the app's code against the live database (or
        none). None when the scripts cannot be loaded."""
        if not self._integrity():
            return None
        live = self._live_state()
        self._lint(live)
        if live is not None:  # what later steps need of it; the app's own objects stay in this process
            live.facts = EnvFacts(heads=live.facts.heads, version_table=live.facts.version_table,
                                  version_table_schema=live.facts.version_table_schema)
        return (live,)

    # --- helpers ----------------------------------------------------------------------------------------------

    def _isolated(self, database: URL | None, step: Callable[[], T]) -> T:
        """Run `step` for one database. With --export-url-env, in a fresh process (a fork of this one, which never
        imports the app) where the variables hold that database's URL before anything of the app is imported: an
        app that builds its engine from the variable when its modules are imported gets an engine for the
        database at hand, not for whichever database came first. The step's report comes back to this process."""
        if not self.opts.export_env:
            return step()
        value = self.project.env_url(database) if database is not None else OFFLINE_URL
        context = multiprocessing.get_context("fork")
        reader, writer = context.Pipe(duplex=False)

        def child() -> None:
            os.environ.update(dict.fromkeys(self.opts.export_env, value))
            try:  # everything, errors included, goes back to the parent, which re-raises
                outcome: tuple[str, Any] = ("ok", (step(), self.report, self.files, self.path, self.rendered,
                                                   self.before))
            except BaseException as exc:
                outcome = ("error", exc if _picklable(exc) else CheckError(describe(exc)))
            try:
                writer.send(outcome)
            except Exception as exc:  # a result that cannot cross processes: say so rather than die mute
                writer.send(("error", CheckError(f"the check's result cannot be passed on: {describe(exc)}")))

        process = context.Process(target=child, name="alembic-check-database", daemon=True)
        process.start()
        writer.close()
        try:
            kind, payload = reader.recv()
        except EOFError:
            process.join()
            raise CheckError(f"the check's process for one database ended without a report (exit code "
                             f"{process.exitcode})") from None
        finally:
            reader.close()
        process.join()
        if kind == "error":
            raise payload
        result, self.report, self.files, self.path, self.rendered, self.before = payload
        return cast(T, result)

    def wanted(self, check: str) -> bool:
        return check not in self.opts.skip

    @contextlib.contextmanager
    def timed(self, check: str) -> Iterator[CheckResult]:
        result = self.report.checks.setdefault(check, CheckResult(check))
        started = time.monotonic()
        try:
            yield result
        finally:
            result.seconds += time.monotonic() - started

    def env(self, what: str, call: Callable[[], T]) -> T:
        """Run env.py; its failures (an import error in the models, a refused connection) stop the check."""
        try:
            return call()
        except CheckError:
            raise
        except Exception as exc:
            raise CheckError(f"{what}: {describe(exc)}") from None

    # --- integrity --------------------------------------------------------------------------------------------

    def _integrity(self) -> bool:
        with self.timed("integrity") as result:
            recursive = bool(getattr(self.project.script, "recursive_version_locations", False))
            files = [read_revision_file(p) for p in revision_files(self.project.version_dirs(), recursive)]
            self.files = {rf.revision: rf for rf in files if rf.revision}
            found = check_files(files)
            self.report.add(*found)
            try:
                self.report.heads = self.project.load()
                self.path = self.project.upgrade_path()
            except Exception as exc:
                if not any(f.severity == "error" for f in found):
                    self.report.add(finding("script-error", f"Alembic cannot load the scripts: {describe(exc)}"))
                return False
            result.reason = f"{len(self.path)} revision(s), {len(self.report.heads)} head(s)"
            return True

    # --- live state -------------------------------------------------------------------------------------------

    def _live_state(self) -> Live | None:
        url = self.opts.database_url
        if url is None or not self.wanted("live"):
            self.report.skip("live", "no live database (--database-url or DATABASE_URL)" if url is None else
                             "skipped (--skip live)")
            return None
        url = read_only(url)
        with self.timed("live") as result:
            heads = self.report.heads
            facts = self.env("reading the live database",
                             lambda: self.project.facts(url, models=True, only_at=heads))
            live = Live(url, facts)
            unknown = [h for h in facts.heads if self.project.revision(h) is None]
            if unknown:
                self.report.add(finding(
                    "unknown-revision", f"the live database is at {', '.join(unknown)}, which the scripts do not "
                    "contain: deploy the scripts that contain it, or fix alembic_version with `alembic stamp` after "
                    "checking the schema", revision=unknown[0]))
                result.reason = "the live schema cannot be compared (unknown revision)"
                return live
            live.pending = self.project.path_between(facts.heads)
            self._behind(live)
            return live

    def _behind(self, live: Live) -> None:
        heads = live.facts.heads
        current = ", ".join(heads) or "base (no revision)"
        assert live.pending is not None
        if live.pending:
            self.report.add(finding(
                "behind-head", f"the live database is at {current}; {len(live.pending)} revision(s) to apply to "
                f"reach head: {', '.join(live.pending)}", revision=heads[0] if len(heads) == 1 else None))
            live.compare_at = heads[0] if len(heads) == 1 else (BASE if not heads else None)
        elif live.facts.target_metadata is not None:
            self._drift(live.facts, "the models")
            self.report.checks["live"].reason = f"at head ({current}); live schema compared with the models"
        else:
            live.compare_at = HEADS

    def _drift(self, facts: EnvFacts, expected: str) -> None:
        dialect = self.opts.database_url.get_dialect()() if self.opts.database_url else None
        for obj in describe_diffs(facts.diffs, dialect, expected, "the live database"):
            self.report.add(finding("live-schema-drift", obj["message"], objects=[obj]))

    def _live_drift(self, live: Live | None) -> None:
        if live is None or live.compare_at is None:
            return
        with self.timed("live") as result:
            if live.expected is None:
                result.reason = "schema drift not checked: the database is not at head (or the models are not " \
                                "known) and there is no scratch database to build the schema it should have"
                return
            facts = self.env("comparing the live database",
                             lambda: self.project.facts(live.url, compare=live.expected))
            self._drift(facts, f"the migrations at {live.compare_at}")
            result.reason = f"live schema compared with the schema the migrations build at {live.compare_at}"

    # --- lint -------------------------------------------------------------------------------------------------

    def _lint(self, live: Live | None) -> None:
        if not self.wanted("lint"):
            self.report.skip("lint", "skipped (--skip lint)")
            return
        pending = live.pending if live is not None and live.pending is not None else None
        revisions = self.path if pending is None else pending
        with self.timed("lint") as result:
            dialect = live.url if live is not None else self.opts.scratch_url
            self.rendered = linting.render(self.project, revisions, linting.offline_url(dialect))
            if pending is not None and live is not None:  # types as the live database has them, read only
                self.rendered.live = self.env("reading the live column types",
                                              lambda: linting.read_catalog(live.url, self.rendered.items)
                                              if self.rendered else None)
            result.reason = (f"{len(revisions)} revision(s) pending on the live database" if pending is not None
                             else f"all {len(revisions)} revision(s)")

    def _lint_findings(self) -> None:
        """Scan lint's SQL, each type change classified against the column's type before its revision."""
        if self.rendered is None:
            return
        with self.timed("lint"):
            self.report.add(*linting.scan(self.rendered, self.before))
            if self.opts.previous:
                self.report.add(*self.env("checking against the previous release " + self.opts.previous,
                                          self._previous))

    def _previous(self) -> list[Finding]:
        """Revisions that would break the previous release while it still runs (--previous)."""
        ref = str(self.opts.previous)
        release = previous.from_git(ref, self.project.version_dirs()) or previous.from_models(ref)
        assert self.rendered is not None
        return previous.breaking(release, self.path, self.rendered, self.project.script)

    # --- scratch database -------------------------------------------------------------------------------------

    def _scratch(self, live: Live | None) -> None:
        wanted = [name for name in ("models", "roundtrip") if self.wanted(name)]
        for name in sorted({"models", "roundtrip"} - set(wanted)):
            self.report.skip(name, f"skipped (--skip {name})")
        if self.opts.scratch is None:
            for name in ("upgrade", *wanted):
                self.report.skip(name, "no scratch database (--scratch-url URL or --scratch sqlite)")
            return
        if not wanted and (live is None or live.compare_at is None):
            self.report.skip("upgrade", "nothing needs the scratch database")
            return
        server = self.opts.scratch_url if self.opts.scratch == "server" else None
        with scratch_database(server) as url:
            target, undo = self._roundtrip_plan()

            def on_scratch() -> MetaData | None:
                scratch = Scratch(url)
                if self._upgrade(scratch, target, live):
                    self._models(scratch)
                    self._roundtrip(scratch, target, undo)
                return live.expected if live is not None else None

            expected = self._isolated(url, on_scratch)
            if live is not None:
                live.expected = expected

    def _upgrade(self, scratch: Scratch, target: str | None, live: Live | None) -> bool:
        with self.timed("upgrade") as result:
            facts = self.env("running env.py on the scratch database", lambda: self.project.facts(scratch.url))
            scratch.exclude = {facts.version_table}
            scratch.snapshots[BASE] = snapshot(scratch.url, scratch.exclude)
            live_at = live.compare_at if live is not None else None
            before = self._type_stops(scratch)
            for stop in self._stops(target, live_at, set(before)):
                if stop != BASE:
                    try:
                        self.project.migrate(scratch.url, "upgrade", stop)
                    except MigrationFailed as failed:
                        self._upgrade_failed(failed, stop)
                        return False
                    scratch.snapshots[stop] = snapshot(scratch.url, scratch.exclude)
                if live is not None and stop == live_at:
                    live.expected = reflect(scratch.url, scratch.exclude)
                for rev in before.get(stop, ()):
                    found = linting.read_catalog(scratch.url, [i for i in self.rendered.items if i[0] == rev]) \
                        if self.rendered is not None else None
                    if found is not None:
                        self.before[rev] = found
            result.reason = f"base -> head on an empty {scratch.url.get_backend_name()} database"
            return True

    def _stops(self, target: str | None, live_at: str | None, extra: Collection[str] = ()) -> list[str]:
        """Where the upgrade from base to head stops for a snapshot (or to read column types), in upgrade order."""
        inner = {p for p in (target, live_at, *extra) if p in self.path}
        ordered = [rev for rev in self.path if rev in inner]
        return [BASE, *ordered, HEADS]

    def _type_stops(self, scratch: Scratch) -> dict[str, list[str]]:
        """The revisions lint found changing a column's type (or setting NOT NULL), by the revision just before
        each (BASE for a first revision): the upgrade stops there and reads those columns' types. Only on a scratch
        database of the dialect lint rendered for, and not for revisions whose types come from the live database."""
        rendered = self.rendered
        if rendered is None or rendered.live is not None or linting.engine_of(scratch.url) is not rendered.engine:
            return {}
        stops: dict[str, list[str]] = {}
        for rev, _sql in rendered.items:
            sc = self.project.revision(rev or "")
            if rev is None or sc is None or not rendered.altered(rev) or isinstance(sc.down_revision, (tuple, list)):
                continue
            stops.setdefault(sc.down_revision or BASE, []).append(rev)
        return stops

    def _upgrade_failed(self, failed: MigrationFailed, stop: str) -> None:
        """The upgrade goes from base to head, pausing where a snapshot is needed (`stop`): the target is head."""
        where = f" in revision {failed.revision}" if failed.revision else ""
        self.report.add(finding("upgrade-failed", f"upgrading an empty database to head failed{where}: {failed}",
                                revision=failed.revision))
        for name in ("models", "roundtrip"):
            if self.wanted(name):
                self.report.skip(name, "the upgrade from base to head failed")

    def _models(self, scratch: Scratch) -> None:
        if not self.wanted("models"):
            return
        with self.timed("models") as result:
            facts = self.env("comparing the models", lambda: self.project.facts(scratch.url, models=True))
            if facts.target_metadata is None:
                self.report.add(finding("no-target-metadata", "env.py sets no target_metadata: set "
                                        "`target_metadata = Base.metadata` so that the models can be checked"))
                return
            dialect = scratch.url.get_dialect()()
            for obj in describe_diffs(facts.diffs, dialect, "the models", "the schema the migrations build"):
                self.report.add(finding("models-without-migration", obj["message"], objects=[obj]))
            tables = len(scratch.snapshots[HEADS]["tables"])
            result.reason = f"target_metadata vs the {tables} table(s) at head"

    # --- round trip -------------------------------------------------------------------------------------------

    def _roundtrip_plan(self) -> tuple[str | None, list[str]]:
        """(the revision to go down to, or BASE; None when there is nothing to undo) and the revisions undone;
        reports the revisions without a downgrade, and stops the round trip above the newest of them."""
        if not self.wanted("roundtrip"):
            return None, []
        steps = self.opts.steps
        if steps is not None and len(self.report.heads) > 1:
            steps = None  # "N steps back" is ambiguous with several heads
        start = 0 if steps is None or steps >= len(self.path) else len(self.path) - steps
        undo = self.path[start:]
        missing = [rev for rev in undo if self._no_downgrade(rev)]
        for rev in missing:
            self.report.add(finding("downgrade-missing", f"revision {rev} has an empty downgrade(): it cannot be "
                                    "undone; write the downgrade (or allow it on purpose)", revision=rev))
        if missing:
            start = self.path.index(missing[-1]) + 1
            undo = self.path[start:]
        if not undo:
            return None, []
        return (self.path[start - 1] if start else BASE), undo

    def _no_downgrade(self, rev: str) -> bool:
        rf = self.files.get(rev)
        return rf is not None and rf.irreversible

    def _roundtrip(self, scratch: Scratch, target: str | None, undo: list[str]) -> None:
        if not self.wanted("roundtrip"):
            return
        with self.timed("roundtrip") as result:
            if target is None:
                result.status = "skipped"
                result.reason = "nothing to undo (no revision with a downgrade above the newest irreversible one)"
                return
            result.reason = f"head -> {target} -> head ({len(undo)} revision(s))"
            if self._leg(scratch, "downgrade", target, target):
                self._leg(scratch, "upgrade", HEADS, target)

    def _leg(self, scratch: Scratch, direction: str, destination: str, target: str) -> bool:
        try:
            self.project.migrate(scratch.url, direction, destination)
        except MigrationFailed as failed:
            self._leg_failed(direction, failed, target)
            return False
        after = snapshot(scratch.url, scratch.exclude)
        expected = scratch.snapshots[destination]
        label = f"after the downgrade to {target}" if direction == "downgrade" else "after upgrading again"
        before = f"after the first upgrade to {destination}" if destination != BASE else "on the empty database"
        differences = compare_snapshots(expected, after, before, label)
        if differences:
            what = (f"downgrading from head to {target} does not give back the schema at {target}"
                    if direction == "downgrade" else f"upgrading again from {target} to head gives another schema")
            self.report.add(finding("roundtrip-mismatch", f"{what}: {len(differences)} difference(s)",
                                    details=differences))
        return True

    def _leg_failed(self, direction: str, failed: MigrationFailed, target: str) -> None:
        where = f"revision {failed.revision}" if failed.revision else "a revision"
        if direction == "downgrade":
            self.report.add(finding("downgrade-failed", f"the downgrade of {where} fails (going from head to "
                                    f"{target}): {failed}", revision=failed.revision))
        else:
            self.report.add(finding("roundtrip-mismatch", f"upgrading again after the downgrade to {target} fails "
                                    f"in {where}: {failed} (the downgrade probably leaves something behind)",
                                    revision=failed.revision))

    # --- suppressions -----------------------------------------------------------------------------------------

    def _apply_allows(self) -> None:
        for found in self.report.findings:
            found.allowed_by = self._allowed_by(found)

    def _allowed_by(self, found: Finding) -> str | None:
        if found.rule in self.opts.allow:
            return "--allow"
        rf = self.files.get(found.revision or "")
        if rf is not None and found.rule in rf.allow:
            return f"comment in {rf.path.name}"
        return None



def _picklable(exc: BaseException) -> bool:
    try:
        pickle.dumps(exc)
    except Exception:
        return False
    return True
