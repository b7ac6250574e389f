"""`runner rehearse`: the plan's upgrade on a scratch copy of production (restored from the run's backup by the
rehearsal Job's first container), measured revision by revision, then the scratch database dropped.

It is `upgrade` itself (the same checks, session limits, lock watch, failure report) on the scratch database the
Job's URL names with ``--database``: the URL is the scratch server's (the Secret in spec.rehearsal), never
production's, so a rehearsal cannot reach production. While the upgrade runs, a second connection samples the
migration session's locks every `SAMPLE_SECONDS` (PostgreSQL: pg_locks; MySQL/MariaDB: performance_schema's
metadata locks, when the server keeps them): a lock held from its first to its last sample, or waited for, is
attributed to the revision running when it was first seen. Rows come from the driver's rowcount of each statement
(UPDATE/INSERT/DELETE; ALTER TABLE on MySQL/MariaDB reports the rows it copied).

Standard library and sqlalchemy only, Python 3.9+.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import reasons
from .errors import Failure, describe, log
from .lock import DIALECTS, session_sql
from .results import MigrateResult, RehearsedLockResult, RehearsedRevisionResult, RehearseResult

if TYPE_CHECKING:
    from .commands import Runner

SAMPLE_SECONDS = 0.05
LOCKS_KEPT = 3  # per revision: the longest held
REVISIONS_KEPT = 20  # in the result (a termination message): the slowest, in plan order

class Revision:
    def __init__(self, revision: str, started: float) -> None:
        self.revision = revision
        self.started = started
        self.ended: float | None = None
        self.rows: int | None = None
        # (what, mode) -> [first seen held, last seen held, first seen waiting, last seen waiting]
        self.locks: dict[tuple[str, str], list[float | None]] = {}

    def report(self) -> RehearsedRevisionResult:
        out: RehearsedRevisionResult = {"revision": self.revision}
        if self.ended is not None:
            out["seconds"] = round(self.ended - self.started, 3)
        if self.rows is not None:
            out["rows"] = self.rows
        locks: list[RehearsedLockResult] = []
        for (what, mode), (held0, held1, wait0, wait1) in self.locks.items():
            lock: RehearsedLockResult = {"on": what, "mode": mode}
            if held0 is not None and held1 is not None:
                lock["heldSeconds"] = round(held1 - held0, 3)
            if wait0 is not None and wait1 is not None:
                lock["waitedSeconds"] = round(wait1 - wait0, 3)
            locks.append(lock)
        locks.sort(key=lambda x: (-x.get("heldSeconds", 0.0) - x.get("waitedSeconds", 0.0), x.get("on", "")))
        if locks:
            out["locks"] = locks[:LOCKS_KEPT]
        return out


class Measures:
    """Each revision's wall time, rows and locks, from the runner's hooks (`started`, `attach`) and a sampler."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.revisions: list[Revision] = []
        self.sampled: bool | None = None  # True: the server reported locks; False: it could not be asked
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._attached: set[int] = set()

    # the runner's hooks

    def started(self, revision: str) -> None:
        now = time.monotonic()
        with self._lock:
            if self.revisions and self.revisions[-1].ended is None:
                self.revisions[-1].ended = now
            self.revisions.append(Revision(revision, now))

    def attach(self, connection: Any) -> None:
        """The migration's connection: count its statements' rows, and sample its locks from another one."""
        from sqlalchemy import event

        if id(connection) in self._attached:
            return
        self._attached.add(id(connection))
        event.listen(connection, "after_cursor_execute", self._executed)
        sql = session_sql(connection.dialect)
        if sql is None or sql.held_locks is None or sql.session is None or self._thread is not None:
            return
        try:
            pid = int(connection.exec_driver_sql(sql.session).one()[2])
        except Exception as exc:  # the migration goes on unmeasured
            log(f"cannot read the migration session's id: {describe(exc)}; its locks are not measured")
            return
        self._thread = threading.Thread(target=self._sample, args=(sql.held_locks, pid), name="rehearsal-locks",
                                        daemon=True)
        self._thread.start()

    def finished(self) -> None:
        now = time.monotonic()
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with self._lock:
            if self.revisions and self.revisions[-1].ended is None:
                self.revisions[-1].ended = now

    # what the measures say

    def report(self) -> list[RehearsedRevisionResult]:
        """The revisions, each with its measures: all of them, or the slowest REVISIONS_KEPT (in plan order)."""
        kept = self.revisions
        if len(kept) > REVISIONS_KEPT:
            slowest = sorted(kept, key=lambda r: -((r.ended or r.started) - r.started))[:REVISIONS_KEPT]
            kept = [r for r in self.revisions if r in slowest]
        return [r.report() for r in kept]

    # internals

    def _executed(self, conn: Any, cursor: Any, statement: str, parameters: Any, context: Any,
                  executemany: bool) -> None:
        count = getattr(cursor, "rowcount", -1)
        head = statement.lstrip()[:16].upper()
        if not isinstance(count, int) or count < 0 or head.startswith(("SELECT", "SHOW", "SET ")):
            return
        if "alembic_version" in statement:  # Alembic's own bookkeeping
            return
        with self._lock:
            if self.revisions:
                current = self.revisions[-1]
                current.rows = (current.rows or 0) + count

    def _sample(self, held_locks: str, pid: int) -> None:
        from sqlalchemy import text

        try:
            conn = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        except Exception as exc:
            log(f"cannot sample the migration's locks: {describe(exc)}")
            self.sampled = False
            return
        query = text(held_locks)
        try:
            while not self._stop.is_set():
                try:
                    rows = conn.execute(query, {"pid": pid}).fetchall()
                except Exception as exc:  # performance_schema off, or no privilege on it
                    log(f"the server does not say which locks the migration holds: {describe(exc)}")
                    self.sampled = False
                    return
                self.sampled = True
                now = time.monotonic()
                with self._lock:
                    if self.revisions:
                        self._note(rows, now)
                self._stop.wait(SAMPLE_SECONDS)
        finally:
            with contextlib.suppress(Exception):
                conn.close()

    def _note(self, rows: list[Any], now: float) -> None:
        for what, mode, granted in rows:
            key = (str(what), str(mode))
            owner = next((r for r in self.revisions if key in r.locks), self.revisions[-1])
            times = owner.locks.setdefault(key, [None, None, None, None])
            if granted:
                times[0] = times[0] if times[0] is not None else now
                times[1] = now
            else:
                times[2] = times[2] if times[2] is not None else now
                times[3] = now


def settle(engine: Any) -> RehearseResult:
    """Make the restored copy like production before the plan is timed (the dialect's `settle`, runner/lock.py); what
    was done, and how long it took, for the result (the rehearsal Job's time includes it; the plan's measures do
    not)."""
    from sqlalchemy import text

    sql = session_sql(engine.dialect)
    statements = sql.settle if sql is not None else ()
    if not statements:
        return {}
    started = time.monotonic()
    done: RehearseResult = {"checkpointed": False}
    try:
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            for statement in statements:
                try:
                    conn.execute(text(statement))
                except Exception as exc:  # CHECKPOINT without the privilege: the timings drift, nothing else
                    log(f"settling the restored copy: {statement} failed: {describe(exc)}")
                    continue
                if statement == "CHECKPOINT":
                    done["checkpointed"] = True
    except Exception as exc:  # the plan's own connection will say what is wrong with the server
        log(f"cannot settle the restored copy: {describe(exc)}")
    done["settleSeconds"] = round(time.monotonic() - started, 3)
    log(f"settled the restored copy in {done['settleSeconds']}s (vacuumed"
        f"{', checkpointed' if done['checkpointed'] else ', not checkpointed (no privilege)'})")
    return done


def drop_statements(dialect: Any, name: str) -> list[str]:
    """How the scratch database is dropped, in order until one works (the dialect's `drop_database`)."""
    sql = session_sql(dialect)
    return [statement.format(name=name) for statement in sql.drop_database] if sql is not None else []


def drop_scratch(server_url: Any, name: str) -> bool:
    """Drop the scratch database from the server's own database (the URL as the Secret gave it)."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.pool import NullPool

    engine = create_engine(server_url.set(drivername=_sync_driver(server_url)), poolclass=NullPool,
                           isolation_level="AUTOCOMMIT")
    try:
        for statement in drop_statements(engine.dialect, name):
            try:
                with engine.connect() as conn:
                    conn.execute(text(statement))
                log(f"dropped the scratch database {name}")
                return True
            except Exception as exc:
                log(f"dropping the scratch database {name}: {describe(exc)}")
        return False
    finally:
        engine.dispose()


def _sync_driver(url: Any) -> str:
    """The URL's driver, or its dialect's synchronous one for an async driver (the drop is one statement)."""
    sql = DIALECTS.get(url.get_backend_name())
    if getattr(url.get_dialect(), "is_async", False) and sql is not None and sql.sync_driver:
        return sql.sync_driver
    return str(url.drivername)


def cmd_rehearse(runner: Runner, migrate: Callable[[Runner], MigrateResult]) -> RehearseResult:
    """The upgrade (`migrate`, the runner's own) on the scratch database, measured; the scratch database dropped
    afterwards whatever happened (the operator drops it again if this pod is killed first)."""
    name = runner.args.database
    if not name or not name.startswith("alembic_rehearsal_"):
        raise Failure(reasons.INVALID_ARGUMENTS, "--database must name a scratch database (alembic_rehearsal_...)")
    try:
        settled = settle(runner.engine)
        measures = runner.observer = Measures(runner.engine)
        started = time.monotonic()
        failure: Failure | None = None
        result: MigrateResult = {}
        try:
            result = migrate(runner)
        except Failure as exc:
            failure = exc
        finally:
            measures.finished()
        measured: RehearseResult = {"database": name, "rehearsalSeconds": round(time.monotonic() - started, 3),
                                    "revisions": measures.report(), **settled}
        if measures.sampled is not None:
            measured["locksSampled"] = measures.sampled
        if failure is not None:
            failure.details.update(measured)
            raise failure
        return {**result, **measured}
    finally:
        with contextlib.suppress(Exception):
            runner.engine.dispose()
        if runner.server_url is not None:
            try:
                drop_scratch(runner.server_url, name)
            except Exception as exc:  # the operator drops it once the Job is over
                log(f"could not drop the scratch database {name}: {describe(exc)}")
