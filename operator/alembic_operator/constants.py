"""Names fixed by the user-facing contract (../shared/API.md). Users' manifests depend on them: never rename."""

from typing import Final, Literal, get_args

GROUP: Final = "migrations.alembic-operator.io"
VERSION: Final = "v1alpha1"
KIND: Final = "DatabaseMigration"
PLURAL: Final = "databasemigrations"
SINGULAR: Final = "databasemigration"
SHORT_NAME: Final = "dbm"
CATEGORY: Final = "migrations"
API_VERSION: Final = f"{GROUP}/{VERSION}"

# Annotations and labels users write.
APPROVE_ANNOTATION: Final = f"{GROUP}/approve"  # value: status.plan.hash
SPEC_CHANGED_BY_ANNOTATION: Final = f"{GROUP}/spec-changed-by"  # written by the webhook only: a username
APPROVED_BY_ANNOTATION: Final = f"{GROUP}/approved-by"  # written by the webhook only: "<username> <plan hash>"
WAIT_FOR_LABEL: Final = f"{GROUP}/wait-for"  # on pod templates: the DatabaseMigration's name
REVISION_ANNOTATION: Final = f"{GROUP}/revision"  # on pod templates: the revision the pod needs
# on pod templates: "DatabaseMigrationSet" when wait-for names a set (every one of its DatabaseMigrations)
WAIT_FOR_KIND_ANNOTATION: Final = f"{GROUP}/wait-for-kind"
SCHEDULING_GATE: Final = f"{GROUP}/schema"  # the gate put on held pods

# Labels the operator puts on what it creates.
OWNER_LABEL: Final = f"{GROUP}/migration"  # the DatabaseMigration's name
ROLE_LABEL: Final = f"{GROUP}/role"  # a Role
GENERATION_LABEL: Final = f"{GROUP}/generation"
INSTANCE_LABEL: Final = f"{GROUP}/instance"  # tells apart Jobs of one role: drift intervals, retries
MANAGED_BY_LABEL: Final = "app.kubernetes.io/managed-by"
MANAGED_BY: Final = "alembic-operator"
# The environment variable a Job's container reads the database URL from (the runner spells it too: runner/commands.py).
URL_ENV: Final = "ALEMBIC_OPERATOR_DATABASE_URL"

FINALIZER: Final = f"{GROUP}/finalizer"

# --- DatabaseMigrationSet (issue 28: one migration, many databases) ---------------------------------------------------
SET_KIND: Final = "DatabaseMigrationSet"
SET_PLURAL: Final = "databasemigrationsets"
SET_SINGULAR: Final = "databasemigrationset"
SET_SHORT_NAME: Final = "dbms"
SET_LABEL: Final = f"{GROUP}/set"  # on the DatabaseMigrations a set owns: the set's name
TARGET_ANNOTATION: Final = f"{GROUP}/target"  # on them too: the target Secret's name
SET_TEMPLATE_ANNOTATION: Final = f"{GROUP}/set-template"  # on them: the hash of the set's template they carry
SET_ATTEMPT_ANNOTATION: Final = f"{GROUP}/set-attempt"  # in their spec.jobTemplate.podAnnotations: a retry's token
RETRY_ANNOTATION: Final = f"{GROUP}/retry"  # on a set, written by users: retry its failed targets (any new value)

# Job roles: the value of ROLE_LABEL and a part of each Job's name (jobs.ROLES declares what each does).
Role = Literal["plan", "backup", "migrate", "contract", "downgrade", "restore", "stamp", "drift", "rehearse"]
# The role label of a restore a person starts (kubectl dbm restore): the restore role's Job, which no run takes as
# its own (observe.py reads only ROLES' Jobs), and which its command finds again by this label.
RESTORE_BY_HAND: Final = "restore-by-hand"

# Phases (status.phase).
Phase = Literal[
    "Pending",
    "Planning",
    "AwaitingApproval",
    "BackingUp",
    "Rehearsing",
    "Migrating",
    "WaitingForOldVersion",
    "Contracting",
    "RollingBack",
    "Succeeded",
    "Failed",
]
PHASES: Final = get_args(Phase)

# Condition types.
READY: Final = "Ready"
RECONCILING: Final = "Reconciling"
STALLED: Final = "Stalled"
BACKUP_SUCCEEDED: Final = "BackupSucceeded"
MIGRATED: Final = "Migrated"
ROLLED_BACK: Final = "RolledBack"
APPROVAL_REQUIRED: Final = "ApprovalRequired"
DRIFTED: Final = "Drifted"
REHEARSED: Final = "Rehearsed"  # spec.rehearsal: True once the plan ran whole on a scratch copy
EXPANDED: Final = "Expanded"  # expand/contract: the plan's expand part is applied
CONTRACTED: Final = "Contracted"  # ... its contract part (False while it waits for the older version's pods)

# The durable run records (audit.py): ConfigMaps of this component, the record under this key.
RUN_RECORD_COMPONENT: Final = "run-record"
RUN_RECORD_KEY: Final = "record.json"

# A Job that failed for a passing reason (a lock timeout, a lost connection, an interrupted upload) is started again
# after this many seconds, twice as long before each later attempt, at most 12 times as long (--job-retry-backoff).
JOB_RETRY_BACKOFF = 5
