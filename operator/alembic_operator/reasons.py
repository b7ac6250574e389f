"""Every reason a user can see, in one place: condition reasons, Event reasons, Job result reasons, gate verdicts.

A reason is a `Reason`: a string (it is written into conditions, Events and Job results as it is) that only this
module makes. Each one is declared once with `_reason()`, with an `Info` saying what kind of state it names
(progressing / stalled / ready, for the kstatus summary conditions), whether it passes by itself (transient), where it
shows, and its runbook anchor. The functions that write a condition, an Event or a Job's result take a `Reason`, so
mypy refuses a literal; `Reason(text)` reads one back (a Job's result, a status written earlier) and raises
ValueError for a word that is not declared. The sets other modules need (plan errors, transient Job failures,
rollback modes) are derived here. `docs/reasons.md` is generated from this module (`python -m
alembic_operator.reasons`) and a test keeps it, the runbooks and API.md in step; another test fails on a string
spelling a reason anywhere else.

Reasons are part of the user-facing contract (alerts and scripts match on them): never rename one.
The runner (`runner/`) runs in the app's image without this package, so it spells its result reasons itself, in one
module (`runner/reasons.py`); a test checks that each one is declared here with the same spelling.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Literal

Kind = Literal["progressing", "stalled", "ready"]

# Where a reason shows: a condition type, "Event", a Job's result ("plan Job", ...), or "pod Event".
_CONDITIONS = ("Ready", "Reconciling", "Stalled")


class Reason(str):
    """A declared reason. `Reason(text)` is the declared one spelled `text` (ValueError if none is): like an Enum's
    lookup, it never makes a new reason; only `_reason()` declares one."""

    __slots__ = ()

    def __new__(cls, text: str) -> Reason:
        try:
            return _DECLARED[text]
        except KeyError:
            raise ValueError(f"{text!r} is not a declared reason (alembic_operator/reasons.py)") from None

    @property
    def info(self) -> Info:
        return ALL[self]


@dataclass(frozen=True)
class Info:
    """What a reason means and how it behaves."""

    name: Reason
    kind: Kind | None  # the kstatus state it names as the summary conditions' reason; None: never their reason
    meaning: str
    where: tuple[str, ...]  # condition types, "Event", "Job result", "pod Event"
    transient: bool  # passes by itself: retried with backoff
    runbook: str | None  # anchor in docs/runbooks.md
    plan_error: bool  # a plan Job's result reason shown as it is (others become PlanFailed)
    rollback_mode: str | None  # a RolledBack=True reason: the rollback metric's mode label


ALL: dict[Reason, Info] = {}
_DECLARED: dict[str, Reason] = {}


def _reason(name: str, kind: Kind | None, meaning: str, *, where: tuple[str, ...] = (), transient: bool = False,
            runbook: str | None = None, plan_error: bool = False, rollback_mode: str | None = None) -> Reason:
    """Declare a reason; returns it (the only place a `Reason` is made)."""
    if name in _DECLARED:
        raise ValueError(f"reason {name} is declared twice")
    reason = _DECLARED[name] = str.__new__(Reason, name)
    ALL[reason] = Info(reason, kind, meaning, (_CONDITIONS if kind else ()) + where, transient, runbook, plan_error,
                       rollback_mode)
    return reason


def info(reason: str) -> Info:
    return ALL[Reason(reason)]


def parse(text: object) -> Reason | None:
    """The declared reason spelled `text` (a Job's result, a status read back), or None."""
    return _DECLARED.get(text) if isinstance(text, str) else None


_DB_URL = "the-secret-is-missing-or-wrong--stalled--secretnotfound-invaliddatabaseurl-databaseauthenticationfailed"

# --- progressing: work is under way (Reconciling=True) --------------------------------------------------------------
PLANNING = _reason("Planning", "progressing", "the plan Job resolves the target and renders the SQL")
BASELINING = _reason("Baselining", "progressing", "the stamp Job records spec.baseline in a pre-Alembic database")
BACKING_UP = _reason("BackingUp", "progressing", "the backup Job dumps the database")
MIGRATING = _reason("Migrating", "progressing", "the migration Job upgrades the database")
ROLLING_BACK = _reason("RollingBack", "progressing", "a downgrade or restore Job undoes what a failed run committed",
                      where=("RolledBack",))
SUSPENDED = _reason("Suspended", "progressing", "spec.suspend is true: no Job starts until it is false")
WAITING_FOR_DATABASE = _reason("WaitingForDatabase", "progressing",
                              "another DatabaseMigration is writing to the same database; this one starts after it")
JOB_QUEUED = _reason("JobQueued", "progressing",
                    "the operator runs as many Jobs as it may at once (--max-running-jobs, the chart's "
                    "maxRunningJobs); this run's next Job starts when one of them ends", transient=True)
DATABASE_UNREACHABLE = _reason("DatabaseUnreachable", "progressing",
                              "the database does not answer; retried with backoff, Stalled after 5 minutes",
                              where=("Job result", "Event"), transient=True,
                              runbook="the-database-is-unreachable--reconciling--databaseunreachable-later-stalled")
LOCK_TIMEOUT = _reason("LockTimeout", "progressing",
                      "a migration or downgrade waited longer than spec.migrations.lockTimeout for a lock (the message "
                      "names the sessions holding it), or too long for another migration's advisory lock; it changed "
                      "nothing and is retried with backoff, Stalled after the retries", where=("Job result", "Event"),
                      transient=True,
                      runbook="a-migration-waits-for-a-lock--reconciling--locktimeout-later-stalled")

# --- ready: at the target (Ready=True) ------------------------------------------------------------------------------
MIGRATED = _reason("Migrated", "ready", "this run migrated the database to the target")
AT_TARGET_REVISION = _reason("AtTargetRevision", "ready", "the database was already at the target: nothing ran")
TARGET_CONTAINED = _reason("TargetContained", "ready",
                          "another DatabaseMigration migrated the database past this one's target, which it contains")

# --- stalled: a human must act (Stalled=True) ------------------------------------------------------------------------
INVALID_SPEC = _reason("InvalidSpec", "stalled", "the spec (or the resource's name) is not valid: the message names "
                      "the field")
JOB_REFUSED = _reason("JobRefused", "stalled", "the API server refused a Job built from the spec: the message names "
                     "the field", where=("Drifted",), runbook="a-job-the-api-server-refuses--stalled--jobrefused")
BACKUP_VOLUME_NOT_WRITABLE = _reason(
    "BackupVolumeNotWritable", "stalled", "the backup Job's user (uid 65532) cannot write to spec.backup.volume (a "
    "hostPath or NFS directory it does not own: those volume types ignore fsGroup); no migration started",
    where=("BackupSucceeded", "Job result"),
    runbook="the-backup-volume-is-not-writable--stalled--backupvolumenotwritable")
# The S3 backup store (backupstores/s3.py): what users get wrong about a bucket, each Stalled with its fix before any
# migration starts (the backup Job runs first); an upload cut off midway is retried.
_S3_RUNBOOK = ("the-s3-backup-store-refuses-the-backup--stalled--backupbucketnotfound-backupstoreaccessdenied-"
               "backupstoreunreachable-backupstorewrongregion-backupstoreclockskew")
_S3_WHERE = ("BackupSucceeded", "Job result")
BACKUP_BUCKET_NOT_FOUND = _reason(
    "BackupBucketNotFound", "stalled", "spec.backup.s3.bucket does not exist on the endpoint (the Jobs never create "
    "it); no migration started", where=_S3_WHERE, runbook=_S3_RUNBOOK)
BACKUP_STORE_ACCESS_DENIED = _reason(
    "BackupStoreAccessDenied", "stalled", "the object store refused the Jobs' credentials (an unknown access key, a "
    "wrong secret key, an expired token, a role it cannot assume, or a policy without the needed s3: actions); no "
    "migration started", where=_S3_WHERE, runbook=_S3_RUNBOOK)
BACKUP_STORE_UNREACHABLE = _reason(
    "BackupStoreUnreachable", "stalled", "the object store's endpoint does not answer (name, connection refused, "
    "timeout) or its TLS certificate is not trusted (spec.backup.s3.caBundle); no migration started",
    where=_S3_WHERE, runbook=_S3_RUNBOOK)
BACKUP_STORE_WRONG_REGION = _reason(
    "BackupStoreWrongRegion", "stalled", "the bucket is in another region than spec.backup.s3.region (the message "
    "names the bucket's); no migration started", where=_S3_WHERE, runbook=_S3_RUNBOOK)
BACKUP_STORE_CLOCK_SKEW = _reason(
    "BackupStoreClockSkew", "stalled", "the object store refused the Jobs' signed requests because the node's clock "
    "is too far from the store's (more than 15 minutes); no migration started", where=_S3_WHERE, runbook=_S3_RUNBOOK)
BACKUP_UPLOAD_INTERRUPTED = _reason(
    "BackupUploadInterrupted", None, "the upload to the object store broke off midway: the partial upload was "
    "aborted and nothing counts as a backup; retried with backoff", where=_S3_WHERE, transient=True)
PERSISTENT_VOLUME_CLAIM_NOT_FOUND = _reason(
    "PersistentVolumeClaimNotFound", "stalled", "a Job's pod waits for a PersistentVolumeClaim that does not exist",
    runbook="a-jobs-pod-cannot-start-for-a-missing-claim--stalled--persistentvolumeclaimnotfound")
_POD = ("a-jobs-pod-cannot-start--stalled--imagepullfailed-invalidimagename-imagerunsasroot-containerconfigerror-"
        "unschedulable")
IMAGE_PULL_FAILED = _reason("ImagePullFailed", "stalled",
                            "a Job's pod cannot pull its image (not found, or unauthorized: imagePullSecrets)",
                            runbook=_POD)
INVALID_IMAGE_NAME = _reason("InvalidImageName", "stalled", "a Job's image name is not a valid reference",
                             runbook=_POD)
IMAGE_RUNS_AS_ROOT = _reason("ImageRunsAsRoot", "stalled", "the image runs as root or as a user name, and the Jobs run "
                             "with runAsNonRoot", runbook=_POD)
CONTAINER_CONFIG_ERROR = _reason("ContainerConfigError", "stalled", "a Job's container refers to a ConfigMap or Secret "
                                 "(key) that does not exist", runbook=_POD)
UNSCHEDULABLE = _reason("Unschedulable", "stalled", "no node fits a Job's pod (nodeSelector, affinity, tolerations, "
                        "resources)", runbook=_POD)
_STOPPED = "a-jobs-pod-was-stopped--stalled--oomkilled-podevicted-deadlineexceeded-poddeleted"
OOM_KILLED = _reason("OOMKilled", "stalled", "a Job's container was killed for running out of memory (its limit is "
                     "named)", runbook=_STOPPED)
POD_EVICTED = _reason("PodEvicted", "stalled", "the node (or the Eviction API, e.g. a drain) evicted a Job's pod",
                      runbook=_STOPPED)
DEADLINE_EXCEEDED = _reason("DeadlineExceeded", "stalled", "a Job ran past its activeDeadlineSeconds and was stopped",
                            runbook=_STOPPED)
POD_DELETED = _reason("PodDeleted", "stalled", "a Job's pod was deleted before it finished", runbook=_STOPPED)
SECRET_NOT_FOUND = _reason("SecretNotFound", "stalled", "the database URL's Secret (or its key) does not exist",
                          runbook=_DB_URL)
INVALID_DATABASE_URL = _reason("InvalidDatabaseURL", "stalled", "the database URL cannot be used", runbook=_DB_URL,
                              where=("Job result",))
DATABASE_AUTHENTICATION_FAILED = _reason("DatabaseAuthenticationFailed", "stalled",
                                        "the database refused the URL's credentials", runbook=_DB_URL,
                                        where=("Job result",))
DATABASE_NOT_FOUND = _reason("DatabaseNotFound", "stalled", "the server has no database of the URL's name",
                            runbook="the-database-does-not-exist--stalled--databasenotfound")
MULTIPLE_HEADS = _reason("MultipleHeads", "stalled", "the scripts (or the database) have more than one head",
                        where=("Job result",), plan_error=True, runbook="multiple-heads--stalled--multipleheads")
UNKNOWN_REVISION = _reason("UnknownRevision", "stalled", "the database is at a revision the image's scripts do not "
                          "contain", where=("Job result", "pod Event"), plan_error=True,
                          runbook="the-database-is-at-a-revision-the-image-does-not-know--stalled--unknownrevision")
UNKNOWN_TARGET_REVISION = _reason("UnknownTargetRevision", "stalled",
                                 "spec.targetRevision is not a revision of the image's scripts", where=("Job result",),
                                 plan_error=True)
DOWNGRADE_NOT_SUPPORTED = _reason("DowngradeNotSupported", "stalled",
                                 "the target is below the database's revision: the operator only upgrades",
                                 where=("Job result",), plan_error=True)
PLAN_FAILED = _reason("PlanFailed", "stalled", "the plan Job failed: the message quotes its error",
                     where=("Job result",))
BASELINE_FAILED = _reason("BaselineFailed", "stalled", "the stamp Job for spec.baseline failed; nothing was changed")
DESTRUCTIVE_CHANGES_NOT_APPROVED = _reason(
    "DestructiveChangesNotApproved", "stalled", "the plan destroys data and waits for approval of its hash",
    where=("ApprovalRequired",), runbook="a-destructive-plan-waits--awaitingapproval--destructivechangesnotapproved")
LOCKING_CHANGES_NOT_APPROVED = _reason(
    "LockingChangesNotApproved", "stalled", "spec.approval.requireForLocking is true and the plan takes strong locks "
    "on existing tables: it waits for approval of its hash", where=("ApprovalRequired",),
    runbook="a-locking-plan-waits--awaitingapproval--lockingchangesnotapproved")
JOB_FAILED = _reason("JobFailed", "stalled", "a backup or migration Job failed; RolledBack says what was undone",
                    runbook="a-migration-failed--failed--jobfailed-rolledbacktrue")
ROLLBACK_FAILED = _reason("RollbackFailed", "stalled", "the rollback after a failed migration did not complete",
                         runbook="rollback-failed--stalled--rollbackfailed-rolledbackfalse")
DATABASE_MOVED = _reason("DatabaseMoved", "stalled", "another writer moved the database during the run: nothing was "
                        "rolled back (as an Event: the run plans again)", where=("RolledBack", "Event"),
                        runbook="someone-else-moved-the-database-during-a-run--event-databasemoved-stalled--"
                                "databasemoved")
DATABASE_KEEPS_MOVING = _reason("DatabaseKeepsMoving", "stalled",
                               "the database moved under the run more often than it re-plans (3 times)")
DATABASE_CHANGED = _reason("DatabaseChanged", "stalled",
                          "a Ready resource's database left the target outside the operator")

# --- step conditions (ApprovalRequired, BackupSucceeded, Migrated, RolledBack, Drifted) -------------------------------
APPROVED = _reason("Approved", None, "destructive changes were approved", where=("ApprovalRequired",))
NO_DESTRUCTIVE_CHANGES = _reason("NoDestructiveChanges", None, "the plan destroys no data (and, with "
                                 "requireForLocking, takes no strong lock)", where=("ApprovalRequired",))
BACKUP_COMPLETED = _reason("BackupCompleted", None, "the backup was written and checksummed",
                          where=("BackupSucceeded",))
BACKUP_DISABLED = _reason("BackupDisabled", None, "spec.backup.enabled is false", where=("BackupSucceeded",))
BACKUP_FAILED = _reason("BackupFailed", None, "the backup Job failed; nothing was changed",
                       where=("BackupSucceeded", "Job result"))
UPGRADE_SUCCEEDED = _reason("UpgradeSucceeded", None, "the migration Job reached the target", where=("Migrated",))
UPGRADE_FAILED = _reason("UpgradeFailed", None, "the migration Job failed", where=("Migrated",))
UP_TO_DATE = _reason("UpToDate", None, "the database was already at the target", where=("Migrated",))
TRANSACTION_ROLLED_BACK = _reason("TransactionRolledBack", None, "the failed migration's transaction rolled back: "
                                 "nothing to undo", where=("RolledBack",), rollback_mode="transaction")
DOWNGRADED = _reason("Downgraded", None, "the downgrade Job undid the committed revisions", where=("RolledBack",),
                    rollback_mode="downgrade")
RESTORED = _reason("Restored", None, "the restore Job put the backup back", where=("RolledBack",),
                  rollback_mode="restore")
ROLLBACK_DISABLED = _reason("RollbackDisabled", None, "spec.rollback.strategy is None: nothing was undone",
                           where=("RolledBack",))
NO_BACKUP = _reason("NoBackup", None, "a restore was needed but there is no backup", where=("RolledBack",))
REVISION_HALF_APPLIED = _reason("RevisionHalfApplied", None, "a revision failed after some of its DDL committed "
                                "(MySQL/MariaDB) and spec.rollback.strategy cannot undo that: nothing was run",
                                where=("RolledBack",))
DOWNGRADE_FAILED = _reason("DowngradeFailed", None, "the downgrade Job failed", where=("RolledBack", "Job result"))
RESTORE_FAILED = _reason("RestoreFailed", None, "the restore Job failed", where=("RolledBack", "Job result"))
SCHEMA_DRIFT = _reason("SchemaDrift", None, "the live database differs from the app's models",
                       where=("Drifted", "Event"))
NO_DRIFT = _reason("NoDrift", None, "the live database matches the app's models and scripts", where=("Drifted",))
DRIFT_CHECK_FAILED = _reason("DriftCheckFailed", None, "the drift Job failed", where=("Drifted", "Event"))

# --- Events only -----------------------------------------------------------------------------------------------------
BASELINED = _reason("Baselined", None, "a pre-Alembic database was stamped at spec.baseline", where=("Event",))
DRIFT_RESOLVED = _reason("DriftResolved", None, "the live database matches the models again", where=("Event",))

# --- notifications (issue 26: notify/): a webhook that does not take them --------------------------------------------
_NOTIFICATIONS_RUNBOOK = "a-notification-does-not-arrive--event-notificationfailed-later-notificationexpired"
NOTIFICATION_FAILED = _reason("NotificationFailed", None, "a webhook did not accept a notification (its Secret "
                              "missing, unreachable, a non-2xx answer): it is retried with backoff for a day",
                              where=("Event",), runbook=_NOTIFICATIONS_RUNBOOK)
NOTIFICATION_EXPIRED = _reason("NotificationExpired", None, "a notification was not delivered within a day: given up",
                               where=("Event",), runbook=_NOTIFICATIONS_RUNBOOK)

# --- the gate: why an app's pod is held or released (pod and DatabaseMigration Events) --------------------------------
READY_AT_TARGET = _reason("ReadyAtTarget", None, "the DatabaseMigration is Ready at its target: pods are released",
                         where=("pod Event",))
REVISION_REACHED = _reason("RevisionReached", None, "the database reached the revision the pod's template needs",
                          where=("pod Event",))
MIGRATION_NOT_FOUND = _reason("MigrationNotFound", None, "the pod waits for a DatabaseMigration that does not exist",
                             where=("pod Event",))
MIGRATION_NOT_READY = _reason("MigrationNotReady", None, "the pod waits until its DatabaseMigration is Ready",
                             where=("pod Event",))
WAITING_FOR_REVISION = _reason("WaitingForRevision", None, "the pod waits until the database reaches its revision",
                              where=("pod Event",))
MIGRATION_UNREADABLE = _reason("MigrationUnreadable", None, "the webhook could not read the DatabaseMigration: the "
                              "pod is held and released by the operator later", where=("pod Event",))
PODS_HELD = _reason("PodsHeld", None, "pods wait for this DatabaseMigration", where=("Event",))
PODS_RELEASED = _reason("PodsReleased", None, "held pods were released", where=("Event",))
HELD = _reason("Held", None, "this pod waits for its DatabaseMigration (the message says for what)",
               where=("pod Event",))
RELEASED = _reason("Released", None, "this pod's scheduling gate was removed", where=("pod Event",))

# --- DatabaseMigrationSet (issue 28): a set's summary conditions and its Events ---------------------------------------
_SET_STOPPED = "a-sets-rollout-stopped--stalled--failurebudgetspent-canaryfailed-targetsawaitingapproval"
ROLLING_OUT = _reason("RollingOut", "progressing", "a DatabaseMigrationSet is migrating its targets, wave by wave")
ROLLOUT_PAUSED = _reason("RolloutPaused", "progressing", "a DatabaseMigrationSet's spec.strategy.paused is true: no "
                         "target starts until it is false")
ALL_TARGETS_READY = _reason("AllTargetsReady", "ready", "every target of a DatabaseMigrationSet is Ready at the "
                            "set's template")
FAILURE_BUDGET_SPENT = _reason("FailureBudgetSpent", "stalled", "spec.strategy.failureBudget targets of a "
                               "DatabaseMigrationSet failed: no more start", runbook=_SET_STOPPED)
CANARY_FAILED = _reason("CanaryFailed", "stalled", "a canary of a DatabaseMigrationSet failed: no other target "
                        "starts", runbook=_SET_STOPPED)
TARGETS_AWAITING_APPROVAL = _reason("TargetsAwaitingApproval", "stalled", "every target a DatabaseMigrationSet may "
                                    "start waits for its plan's approval", runbook=_SET_STOPPED)
WAVE_STARTED = _reason("WaveStarted", None, "a DatabaseMigrationSet started a wave of targets", where=("Event",))
WAVE_COMPLETED = _reason("WaveCompleted", None, "every target of a DatabaseMigrationSet's wave is Ready",
                         where=("Event",))
TARGETS_RETRIED = _reason("TargetsRetried", None, "a DatabaseMigrationSet started its failed targets again "
                          "(annotation retry)", where=("Event",))

# --- reported by Jobs (their result and log; some become condition reasons above) ------------------------------------
_JOB = ("Job result",)
REVISION_MOVED = _reason("RevisionMoved", None, "the migration Job found the database elsewhere than planned and ran "
                        "nothing", where=_JOB)
ALREADY_VERSIONED = _reason("AlreadyVersioned", None, "the stamp Job found an alembic_version already", where=_JOB)
CONFIG_NOT_FOUND = _reason("ConfigNotFound", None, "alembic.ini (spec.migrations.config) is not in the image",
                          where=_JOB)
DATABASE_ERROR = _reason("DatabaseError", None, "the database answered with an error", where=_JOB)
INTERNAL_ERROR = _reason("InternalError", None, "a bug in the operator's Job code: please report it", where=_JOB)
INVALID_ARGUMENTS = _reason("InvalidArguments", None, "the runner was called with arguments it does not accept",
                           where=_JOB)
INVALID_ARGUMENT = _reason("InvalidArgument", None, "a Job tool was called with an argument it does not accept",
                          where=_JOB)
IRREVERSIBLE_REVISION = _reason("IrreversibleRevision", None, "a revision on the downgrade path has no downgrade()",
                               where=_JOB)
MIGRATION_FAILED = _reason("MigrationFailed", None, "a revision raised while upgrading", where=_JOB)
MISSING_DATABASE_URL = _reason("MissingDatabaseURL", None, "the Job's container has no database URL", where=_JOB)
NO_TARGET_METADATA = _reason("NoTargetMetadata", None, "env.py passes no target_metadata: drift cannot compare",
                            where=_JOB)
SCRIPT_ERROR = _reason("ScriptError", None, "the app's env.py or a revision script raised", where=_JOB)
STAMP_FAILED = _reason("StampFailed", None, "stamping the revision failed", where=_JOB)
TARGET_NOT_REACHABLE = _reason("TargetNotReachable", None, "no upgrade path leads from the database's revision to the "
                              "target", where=_JOB)
INTERRUPTED = _reason("Interrupted", None, "the Job was stopped (SIGTERM) or killed while it ran", where=_JOB)
BACKUP_CORRUPT = _reason("BackupCorrupt", None, "the backup file's checksum does not match", where=_JOB)
BACKUP_NOT_FOUND = _reason("BackupNotFound", None, "the backup file is not on the volume", where=_JOB)
PLAN_INVALID = _reason("PlanInvalid", None, "the plan Job's rendered files are inconsistent", where=_JOB)
PLAN_NOT_FOUND = _reason("PlanNotFound", None, "the plan Job rendered nothing to scan", where=_JOB)
PLAN_TOO_LARGE = _reason("PlanTooLarge", None, "the plan does not fit a termination message", where=_JOB)
RESULT_TOO_LARGE = _reason("ResultTooLarge", None, "a Job's result does not fit a termination message", where=_JOB)
TOOL_NOT_FOUND = _reason("ToolNotFound", None, "a database client tool (pg_dump, pg_restore, psql, mariadb-dump, "
                         "mariadb) is missing from the operator image", where=_JOB)

# --- spec.rehearsal (issue 25): the plan rehearsed on a scratch copy of the backup ------------------------------------
REHEARSING = _reason("Rehearsing", "progressing", "the rehearsal Job restores the backup into a scratch database and "
                     "runs the plan there, before production", where=("Rehearsed",))
_REHEARSAL_BOOK = "a-rehearsal-failed--stalled--rehearsalfailed"
REHEARSAL_FAILED = _reason("RehearsalFailed", "stalled", "the plan failed on the scratch copy of the database (the "
                           "message names the revision and the database's error): production was not touched",
                           where=("Rehearsed",), runbook=_REHEARSAL_BOOK)
REHEARSAL_TOO_LARGE = _reason("RehearsalTooLarge", "stalled", "the backup is larger than spec.rehearsal."
                              "maxBackupBytes and overLimit is Refuse: production was not touched",
                              where=("Rehearsed",), runbook="a-rehearsal-is-refused-for-size--stalled--"
                                                            "rehearsaltoolarge")
REHEARSAL_REQUIRED = _reason("RehearsalRequired", "stalled", "spec.approval.requireRehearsal: the plan waits for "
                             "approval after its rehearsal passed (status.rehearsal)", where=("ApprovalRequired",),
                             runbook="a-rehearsed-plan-waits-for-approval--awaitingapproval--rehearsalrequired")
REHEARSAL_PASSED = _reason("RehearsalPassed", None, "the plan ran whole on a scratch copy of the database",
                           where=("Rehearsed", "Event"))
REHEARSAL_SKIPPED = _reason("RehearsalSkipped", None, "the rehearsal was skipped (the message says why: the size "
                            "guard, no scratch server)", where=("Rehearsed", "Event"))
SCRATCH_DATABASE_LEFT = _reason("ScratchDatabaseLeft", None, "a scratch database could not be dropped (the operator "
                                "tries again)", where=("Event",))

# --- expand/contract (issue 24): a plan split at its first contract revision, the contract part after the older
# version's pods are gone (reconcile/contract.py), the pod gate's upper bound (gate.py) --------------------------------
WAITING_FOR_OLD_VERSION = _reason(
    "WaitingForOldVersion", "progressing", "the expand part is applied; the contract part waits until no pod of the "
    "older version runs (status.contract names them)", where=("Contracted",))
CONTRACTING = _reason("Contracting", "progressing", "the contract Job runs the plan's contract part (the older "
                      "version's pods are gone)")
OLD_VERSION_STILL_RUNNING = _reason(
    "OldVersionStillRunning", "stalled", "pods of the older version still run past spec.contract.oldVersionTimeout "
    "(a stuck rollout?): the contract part waits, and starts by itself once they are gone", where=("Contracted",),
    runbook="the-older-version-does-not-go-away--stalled--oldversionstillrunning")
BREAKS_RUNNING_VERSION = _reason(
    "BreaksRunningVersion", "stalled", "a revision not marked phase = \"contract\" drops or renames a table or column "
    "the running version uses: the plan waits for approval of its hash", where=("ApprovalRequired",),
    runbook="a-revision-breaks-the-running-version--awaitingapproval--breaksrunningversion")
EXPANDED = _reason("Expanded", None, "the plan's expand part is applied: the new version's pods may start",
                   where=("Expanded",))
CONTRACTED = _reason("Contracted", None, "the plan's contract part is applied", where=("Contracted",))
SCHEMA_CONTRACTED = _reason("SchemaContracted", None, "the pod's version needs a revision that a contract revision "
                            "applied since removed what it uses: it stays held", where=("pod Event",))

# --- sets other modules need, derived ---------------------------------------------------------------------------------
# A plan Job's result reason the user reads as it is (others become PlanFailed).
PLAN_ERRORS: frozenset[Reason] = frozenset(r.name for r in ALL.values() if r.plan_error)
# A Job that failed for one of these changed nothing and may succeed later: retried with backoff.
TRANSIENT_JOB_REASONS: frozenset[Reason] = frozenset(r.name for r in ALL.values()
                                                  if r.transient and "Job result" in r.where)
# RolledBack=True reason -> the `mode` label of the rollback metric.
ROLLBACK_MODES: dict[Reason, str] = {r.name: r.rollback_mode for r in ALL.values() if r.rollback_mode}


def markdown() -> str:
    """docs/reasons.md: every reason, generated from this module."""
    lines = [
        "# Reasons",
        "",
        "<!-- Generated by `python -m alembic_operator.reasons > docs/reasons.md`: edit "
        "operator/alembic_operator/reasons.py instead. -->",
        "",
        "Every reason the operator writes into a condition, an Event or a Job's result. Reasons are stable: alerts "
        "and scripts may match on them. *Kind* is the kstatus state a reason names when it is the reason of the "
        "Ready/Reconciling/Stalled conditions (progressing: Reconciling=True; stalled: Stalled=True, a human must "
        "act; ready: Ready=True); *transient* reasons pass by themselves and are retried.",
        "",
        "| Reason | Kind | Transient | Shows in | Meaning | Runbook |",
        "|---|---|---|---|---|---|",
    ]
    order = {"stalled": 0, "progressing": 1, "ready": 2, None: 3}
    for r in sorted(ALL.values(), key=lambda x: (order[x.kind], x.name)):
        book = f"[runbook](runbooks.md#{r.runbook})" if r.runbook else ""
        lines.append(f"| `{r.name}` | {r.kind or ''} | {'yes' if r.transient else ''} | {', '.join(r.where)} | "
                     f"{r.meaning} | {book} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(markdown())
