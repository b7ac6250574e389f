"""A failed migration undone: exactly what this run committed, by downgrade or restore, or told why not."""

from __future__ import annotations

from .. import constants as c
from .. import reasons as r
from ..api import (
    RunBackup,
    RunRollback,
)
from ..constants import Role
from ..runner.results import MigrateResult
from .decision import Decision
from .turn import Turn, rev


def half_applied(report: MigrateResult | None) -> tuple[str, list[str], int] | None:
    """(revision, the statements of it that committed, how many) from the migration Job's report, when it failed
    half-applied (DDL is not transactional); None otherwise."""
    partial = (report or {}).get("partialRevision")
    if not isinstance(partial, dict) or not partial.get("revision"):
        return None
    statements = [str(x) for x in partial.get("statements") or []]
    return str(partial["revision"]), statements, int(partial.get("statementCount") or len(statements))


def choose_rollback(turn: Turn, db_rev: str | None, committed: list[str], why: str,
                    report: MigrateResult | None = None, report_lost: bool = False) -> Decision:
    """Undo exactly what this run committed (`committed`, from its own Job's report), nothing else.

    Where DDL is not transactional (MySQL/MariaDB) the failed revision may be half-applied: its statements up to
    the failure committed, and the version table does not count it, so no downgrade undoes them. Auto then
    restores the backup; so it does when the Job could not say where it stopped (a killed pod)."""
    start = turn.run.start_revision
    spec = turn.spec()
    half = half_applied(report)
    nontransactional = turn.run.transactional_ddl is False or (report or {}).get("transactionalDDL") is False
    unknown = (nontransactional and half is None and "applied" not in (report or {})
               and (report_lost or bool((report or {}).get("attempted"))))
    damage = ""
    if half is not None:
        revision, statements, count = half
        shown = "; ".join(statements) + ("; ..." if count > len(statements) else "")
        damage = (f"revision {revision} is half-applied: {count} of its statement(s) committed before it failed "
                  f"(DDL is not transactional on this database): {shown}")
    elif unknown:
        damage = ("the migration Job could not report where it stopped, and DDL is not transactional on this "
                  "database: the revision it was running may be half-applied")
    if not committed and not damage:
        msg = f"{why}; the transaction rolled back: the database is still at {rev(start)}"
        turn.condition(c.ROLLED_BACK, "True", r.TRANSACTION_ROLLED_BACK, msg)
        return turn.failed(msg)
    destroyed = [rev for rev in committed if rev in set(turn.run.destructive_revisions or [])]
    strategy = spec.rollback.strategy
    have_backup = bool(turn.run.backup and turn.run.backup.file)
    if strategy == "None":
        msg = f"{why}; spec.rollback.strategy is None: the database was left at {rev(db_rev)}"
        turn.condition(c.ROLLED_BACK, "False", r.ROLLBACK_DISABLED, msg + (f"; {damage}" if damage else ""))
        return turn.failed(msg + (f"; {damage}" if damage else ""))
    if strategy == "Downgrade" and damage:
        where = f"the backup {turn.run.backup.location}" if have_backup and turn.run.backup else "a backup"
        msg = (f"{why}; {damage}. spec.rollback.strategy is Downgrade, and a downgrade cannot undo a half-applied "
               f"revision: nothing was run. Restore {where} by hand (see the runbook), or use strategy Auto or "
               "Restore")
        turn.condition(c.ROLLED_BACK, "False", r.REVISION_HALF_APPLIED, msg)
        return turn.failed(msg, reason=r.ROLLBACK_FAILED)
    mode = "Downgrade" if strategy == "Downgrade" or (strategy == "Auto" and not destroyed and not damage) \
        else "Restore"
    because = None
    if strategy == "Auto":
        reasons = ([f"revision(s) {', '.join(destroyed)} destroyed data"] if destroyed else []) + \
                  ([damage + ", which no downgrade undoes"] if damage else [])
        because = (f"Auto restores the backup: {' and '.join(reasons)}" if reasons else
                   "Auto downgrades: nothing destructive committed and no revision is half-applied")
    if mode == "Restore" and not have_backup:
        done = ", ".join(destroyed or committed)
        msg = (f"{why}; {f'revisions {done} committed and ' if done else ''}a restore is needed, "
               f"but there is no backup (spec.backup.enabled is false): the database is at {rev(db_rev)}"
               + (f"; {damage}" if damage else ""))
        turn.condition(c.ROLLED_BACK, "False", r.NO_BACKUP, msg)
        return turn.failed(msg, reason=r.ROLLBACK_FAILED)
    turn.run.step = "RollingBack"
    turn.run.rollback = RunRollback(mode=mode, from_=rev(db_rev), committed=committed, destroyed=destroyed,
                                    half_applied=half[0] if half else None, because=because)
    return rolling_back(turn)


def rolling_back(turn: Turn) -> Decision:
    rb = turn.run.rollback
    assert rb is not None, "RollingBack without a rollback"
    start = turn.run.start_revision
    role: Role = "downgrade" if rb.mode == "Downgrade" else "restore"
    backup = turn.run.backup or RunBackup()
    if role == "downgrade":
        args = {"from": str(rb.from_), "to": rev(start)}
        what = f"downgrading {rb.from_} -> {rev(start)} (keeps rows written since the backup)"
    else:
        args = {"file": str(backup.file), "sha256": str(backup.sha256)}
        what = f"restoring the backup {backup.location} (taken at {rev(backup.revision)})"
    if rb.because and not rb.downgrade_failure:
        what += f". {rb.because}"

    def announce() -> None:
        turn.condition(c.ROLLED_BACK, "Unknown", r.ROLLING_BACK, what)

    job = turn.drive(role, args, what, before_start=announce, before_retry=lambda: turn.database("RollingBack"))
    if isinstance(job, Decision):
        return job
    db_rev = turn.obs.database.revision
    why = turn.run.failure or "the migration failed"
    if job.state == "succeeded" and db_rev == start:
        reason = r.DOWNGRADED if role == "downgrade" else r.RESTORED
        how = "downgraded" if role == "downgrade" else f"restored the backup {backup.location}"
        msg = f"{why}; {how}: the database is back at {rev(start)}"
        if rb.because and not rb.downgrade_failure:
            msg += f" ({rb.because})"
        turn.condition(c.ROLLED_BACK, "True", reason, msg)
        return turn.failed(msg)
    problem = (turn.failure_message(role) if job.state == "failed"
               else f"{role} finished but the database is at {rev(db_rev)}, not {rev(start)}")
    spec = turn.spec()
    if role == "downgrade" and spec.rollback.strategy == "Auto" and backup.file:
        rb.mode, rb.downgrade_failure = "Restore", problem
        return rolling_back(turn)
    msg = (f"{why}; rollback failed: {problem}. The database is at {rev(db_rev)}; restore it by hand from "
           f"{backup.location or 'your own backups'} (see the runbook)")
    turn.condition(c.ROLLED_BACK, "False", r.DOWNGRADE_FAILED if role == "downgrade" else r.RESTORE_FAILED, msg)
    return turn.failed(msg, reason=r.ROLLBACK_FAILED)
