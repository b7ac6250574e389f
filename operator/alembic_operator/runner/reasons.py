"""The runner's reasons: every reason its results can carry, spelled once, here.

The runner runs in the app's image without the rest of the package, so it cannot use the operator's registry
(`alembic_operator/reasons.py`); a test checks that each reason below is declared there with the same spelling.
Like the registry's, a `Reason` is a string only this module makes: `Failure` and the result writers take one, so
mypy refuses a literal. Standard library only, Python 3.9+.
"""

from __future__ import annotations


class Reason(str):
    """One of the runner's reasons: the constants below (a test fails on `Reason("...")` anywhere else)."""

    __slots__ = ()


ALL: dict[str, Reason] = {}


def _reason(name: str) -> Reason:
    ALL[name] = Reason(name)
    return ALL[name]


ALREADY_VERSIONED = _reason("AlreadyVersioned")
CONFIG_NOT_FOUND = _reason("ConfigNotFound")
DATABASE_ERROR = _reason("DatabaseError")
DATABASE_UNREACHABLE = _reason("DatabaseUnreachable")
DOWNGRADE_FAILED = _reason("DowngradeFailed")
DOWNGRADE_NOT_SUPPORTED = _reason("DowngradeNotSupported")
INTERNAL_ERROR = _reason("InternalError")
INTERRUPTED = _reason("Interrupted")
INVALID_ARGUMENTS = _reason("InvalidArguments")
INVALID_DATABASE_URL = _reason("InvalidDatabaseURL")
IRREVERSIBLE_REVISION = _reason("IrreversibleRevision")
LOCK_TIMEOUT = _reason("LockTimeout")
MIGRATION_FAILED = _reason("MigrationFailed")
MISSING_DATABASE_URL = _reason("MissingDatabaseURL")
MULTIPLE_HEADS = _reason("MultipleHeads")
NO_TARGET_METADATA = _reason("NoTargetMetadata")
RESULT_TOO_LARGE = _reason("ResultTooLarge")
REVISION_MOVED = _reason("RevisionMoved")
SCRIPT_ERROR = _reason("ScriptError")
STAMP_FAILED = _reason("StampFailed")
TARGET_NOT_REACHABLE = _reason("TargetNotReachable")
UNKNOWN_REVISION = _reason("UnknownRevision")
UNKNOWN_TARGET_REVISION = _reason("UnknownTargetRevision")
